"""Image generators: the block-independence contract, output format, noise statistics, strokes, errors, shaders."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from study.data.generators import shaders as shader_module
from study.data.generators.dead_leaves import power_law_radii
from study.data.generators.registry import GeneratorError, create_generator, image_rng, list_generators
from study.data.generators.shaders import bundled_programs, image_values

USER_PROGRAM = """
// red = iParams[0].x, green = 0.2, blue = fragCoord.y / iResolution.y (bright at the top)
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    fragColor = vec4(iParams[0].x, 0.2, fragCoord.y / iResolution.y, 1.0);
}
"""
SHADERTOY_STYLE_PROGRAM = """#version 300 es
precision highp float;
uniform float iTime;
uniform vec3 iResolution;
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.xy;
    fragColor = vec4(0.5 + 0.5 * cos(iTime + uv.xyx * 6.0 + vec3(0.0, 2.0, 4.0)), 1.0);
}
"""


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("glsl")
    (folder / "a_params.glsl").write_text(USER_PROGRAM)
    (folder / "b_shadertoy.glsl").write_text(SHADERTOY_STYLE_PROGRAM)
    return folder


@pytest.fixture(scope="module")
def cheap_params(user_folder: Path) -> dict[str, dict]:
    """Every registered generator with small params, so the contract tests cover all of them quickly."""
    return {
        "gaussian_noise": {},
        "uniform_noise": {},
        "spectral_noise": {},
        "dead_leaves": {"n_shapes": 16},
        "random_strokes": {},
        "shaders": {"programs": ["plasma", "truchet", "voronoi_cells"]},
        "glsl_folder": {"path": str(user_folder)},
        "composed_shaders": {"programs": 3, "images_per_program": 2},
    }


class TestContract:
    def test_every_registered_generator_is_covered(self, cheap_params: dict[str, dict]) -> None:
        """A new generator must join the contract tests below."""
        assert sorted(cheap_params) == list_generators()

    @pytest.mark.parametrize("name", list_generators())
    def test_image_depends_only_on_seed_and_index(self, name: str, cheap_params: dict[str, dict]) -> None:
        generator = create_generator(name, cheap_params[name])
        whole = generator.generate(11, 0, 40, 16)
        assert np.array_equal(generator.generate(11, 13, 9, 16), whole[13:22])
        assert np.array_equal(generator.generate(11, 37, 1, 16)[0], whole[37])

    @pytest.mark.parametrize("name", list_generators())
    def test_same_seed_same_bytes_and_different_seeds_differ(self, name: str, cheap_params: dict) -> None:
        first = create_generator(name, cheap_params[name]).generate(3, 5, 6, 16)
        again = create_generator(name, cheap_params[name]).generate(3, 5, 6, 16)
        other = create_generator(name, cheap_params[name]).generate(4, 5, 6, 16)
        assert first.tobytes() == again.tobytes()
        assert all(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))

    @pytest.mark.parametrize("name", list_generators())
    def test_output_is_uint8_nhwc_rgb_and_not_constant(self, name: str, cheap_params: dict) -> None:
        images = create_generator(name, cheap_params[name]).generate(0, 0, 4, 24)
        assert images.shape == (4, 24, 24, 3)
        assert images.dtype == np.uint8
        assert images.reshape(4, -1).std(axis=1).min() > 5.0
        assert create_generator(name, cheap_params[name]).generate(0, 9, 0, 24).shape == (0, 24, 24, 3)

    @pytest.mark.parametrize("name", list_generators())
    def test_declares_a_version_for_the_manifests(self, name: str, cheap_params: dict) -> None:
        version = create_generator(name, cheap_params[name]).version
        assert isinstance(version, str) and version

    def test_negative_start_is_rejected(self) -> None:
        with pytest.raises(GeneratorError, match="uniform_noise"):
            create_generator("uniform_noise", {}).generate(0, -1, 3, 8)


class TestRegistry:
    def test_unknown_generator_is_named_with_the_known_ones(self) -> None:
        with pytest.raises(GeneratorError, match=r"unknown generator 'perlin'.*dead_leaves"):
            create_generator("perlin", {})

    def test_unknown_param_names_generator_and_param(self) -> None:
        with pytest.raises(GeneratorError, match=r"'dead_leaves'.*n_shape: unknown param"):
            create_generator("dead_leaves", {"n_shape": 3})

    def test_invalid_param_value_names_the_param(self) -> None:
        with pytest.raises(GeneratorError, match=r"'spectral_noise'.*alpha: .*less than or equal to 6"):
            create_generator("spectral_noise", {"alpha": 9.0})

    def test_wrong_number_of_channel_values_names_the_field(self) -> None:
        with pytest.raises(GeneratorError, match="'gaussian_noise': std needs 1 or 3 values"):
            create_generator("gaussian_noise", {"std": [0.1, 0.2]})


class TestNoise:
    def test_gaussian_noise_matches_requested_mean_and_std(self) -> None:
        mean, std = [0.2, 0.5, 0.7], [0.05, 0.1, 0.08]
        images = create_generator("gaussian_noise", {"mean": mean, "std": std}).generate(1, 0, 64, 32) / 255.0
        np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), mean, atol=0.003)
        np.testing.assert_allclose(images.std(axis=(0, 1, 2)), std, atol=0.003)

    def test_gaussian_noise_follows_reference_stats_unless_params_override(self) -> None:
        reference = ([0.3], [0.06])
        images = create_generator("gaussian_noise", {}, reference_stats=reference).generate(1, 0, 32, 32) / 255.0
        np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), [0.3] * 3, atol=0.003)
        np.testing.assert_allclose(images.std(axis=(0, 1, 2)), [0.06] * 3, atol=0.003)
        override = create_generator("gaussian_noise", {"mean": [0.6]}, reference_stats=reference)
        np.testing.assert_allclose(override.generate(1, 0, 32, 32).mean() / 255.0, 0.6, atol=0.003)

    def test_gaussian_noise_pixels_are_uncorrelated(self) -> None:
        images = create_generator("gaussian_noise", {"std": [0.1]}).generate(2, 0, 32, 32).astype(float)
        neighbours = np.corrcoef(images[:, :, :-1].ravel(), images[:, :, 1:].ravel())[0, 1]
        assert abs(neighbours) < 0.02

    def test_uniform_noise_stays_within_bounds_and_fills_them(self) -> None:
        images = create_generator("uniform_noise", {"low": [0.2], "high": [0.4]}).generate(0, 0, 16, 32)
        assert images.min() == round(0.2 * 255) and images.max() == round(0.4 * 255)

    @pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
    def test_spectral_noise_power_falls_as_one_over_f_to_the_alpha(self, alpha: float) -> None:
        images = create_generator("spectral_noise", {"alpha": alpha, "std": [0.1]}).generate(0, 0, 32, 64)
        grey = images.astype(float).mean(axis=3)
        power = (np.abs(np.fft.fft2(grey - grey.mean(axis=(1, 2), keepdims=True))) ** 2).mean(axis=0)
        f = np.hypot(*np.meshgrid(np.fft.fftfreq(64), np.fft.fftfreq(64)))
        band = (f > 0.02) & (f < 0.35)
        slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
        assert slope == pytest.approx(-alpha, abs=0.25)


class TestDeadLeaves:
    def test_radii_follow_the_power_law_cdf(self) -> None:
        radii = power_law_radii(np.random.default_rng(0).random(200_000), 0.02, 0.5, 3.0)
        assert radii.min() >= 0.02 and radii.max() <= 0.5
        for r in (0.03, 0.05, 0.1, 0.3):
            cdf = (0.02**-2 - r**-2) / (0.02**-2 - 0.5**-2)  # ∫ r^-3 from r_min, normalised
            assert np.mean(radii <= r) == pytest.approx(cdf, abs=0.005)

    def test_an_image_holds_at_most_one_colour_per_leaf_plus_background(self) -> None:
        images = create_generator("dead_leaves", {"n_shapes": 5}).generate(0, 0, 8, 32)
        for image in images:
            assert len(np.unique(image.reshape(-1, 3), axis=0)) <= 6

    def test_the_last_leaf_is_on_top(self) -> None:
        """One huge leaf over the whole image hides the background: n_shapes=1 gives one flat colour."""
        params = {"n_shapes": 1, "shapes": ["square"], "radius_min": 3.0, "radius_max": 3.0}
        images = create_generator("dead_leaves", params).generate(0, 0, 4, 16)
        assert all(len(np.unique(image.reshape(-1, 3), axis=0)) == 1 for image in images)

    def test_supersampling_antialiases_edges(self) -> None:
        plain = create_generator("dead_leaves", {"n_shapes": 4}).generate(0, 0, 1, 32)[0]
        smooth = create_generator("dead_leaves", {"n_shapes": 4, "supersample": 4}).generate(0, 0, 1, 32)[0]
        count = lambda image: len(np.unique(image.reshape(-1, 3), axis=0))  # noqa: E731
        assert count(smooth) > count(plain) + 10

    def test_default_adds_leaves_until_no_background_remains(self) -> None:
        """Canonical dead leaves cover the image: not one pixel shows the background colour (64 images at 32 px).

        The background is each image's first draw from its own stream; a cap of 64 leaves shows it on ~45%.
        """
        images = create_generator("dead_leaves", {}).generate(0, 0, 64, 32)
        for i, image in enumerate(images):
            background = np.rint(image_rng(0, i).random(3) * 255).astype(np.uint8)
            assert not (image.reshape(-1, 3) == background).all(axis=1).any(), f"image {i} shows its background"

    def test_coverage_mode_is_block_independent_and_its_first_leaf_is_on_top(self) -> None:
        generator = create_generator("dead_leaves", {})
        whole = generator.generate(5, 0, 12, 16)
        assert np.array_equal(generator.generate(5, 7, 3, 16), whole[7:10])
        huge = {"shapes": ["square"], "radius_min": 3.0, "radius_max": 3.0}
        images = create_generator("dead_leaves", huge).generate(0, 0, 4, 16)
        assert all(len(np.unique(image.reshape(-1, 3), axis=0)) == 1 for image in images)

    def test_coverage_cap_leaves_the_background_showing(self) -> None:
        tiny = {"max_shapes": 3, "radius_min": 0.01, "radius_max": 0.02}
        image = create_generator("dead_leaves", tiny).generate(0, 0, 1, 32)[0]
        assert np.unique(image.reshape(-1, 3), axis=0, return_counts=True)[1].max() > 900

    def test_unknown_shape_is_named(self) -> None:
        with pytest.raises(GeneratorError, match=r"'dead_leaves'.*shapes\.0"):
            create_generator("dead_leaves", {"shapes": ["hexagon"]})

    def test_inverted_radius_range_is_rejected(self) -> None:
        with pytest.raises(GeneratorError, match="radius_max"):
            create_generator("dead_leaves", {"radius_min": 0.3, "radius_max": 0.1})


ONE_STRAIGHT_WHITE_STROKE = {
    "strokes_min": 1,
    "strokes_max": 1,
    "arc_share": 0.0,
    "curvature": 0.0,
    "background_max": 0.0,
    "ink_min": 1.0,
}


def _minor_axis_sd(images: np.ndarray) -> np.ndarray:
    """Per grey image: the intensity-weighted spread of its pixels across their principal axis (pixels)."""
    side = images.shape[1]
    ys, xs = np.mgrid[:side, :side]
    spreads = []
    for image in images.astype(np.float64):
        weight = image / image.sum()
        points = np.stack([xs.ravel(), ys.ravel()])
        centred = points - (points * weight.ravel()).sum(axis=1, keepdims=True)
        covariance = (centred * weight.ravel()) @ centred.T
        spreads.append(np.sqrt(np.linalg.eigvalsh(covariance)[0]))
    return np.array(spreads)


class TestRandomStrokes:
    def test_images_are_grey_light_strokes_on_a_dark_background(self) -> None:
        images = create_generator("random_strokes", {}).generate(0, 0, 32, 16)
        assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
        grey = images[..., 0].reshape(32, -1)
        background = np.array([np.bincount(row).argmax() for row in grey])
        assert background.max() <= round(0.15 * 255)  # background_max
        assert (grey.max(axis=1) >= background + 0.4 * 255).all()

    def test_a_straight_stroke_covers_the_area_of_its_capsule(self) -> None:
        """Distance-field coverage sums to width x length + a disc of the width (the round caps), to ~0.1 px.

        The same seed draws the same end points at any width: length = area / w - pi w / 4 agrees for w, 2 w.
        """
        lengths = []
        for width in (0.1, 0.2):
            params = {**ONE_STRAIGHT_WHITE_STROKE, "width_min": width, "width_max": width, "margin": 0.3}
            area = create_generator("random_strokes", params).generate(0, 0, 16, 64)[..., 0].sum(axis=(1, 2)) / 255.0
            lengths.append(area / (width * 64) - np.pi * width * 64 / 4)
        assert lengths[0].max() > 10.0  # not all dots
        assert np.abs(lengths[0] - lengths[1]).max() < 0.25

    def test_zero_curvature_draws_straight_strokes_and_curvature_bends_them(self) -> None:
        """A straight stroke w px wide spreads w / sqrt(12) across its axis (a bar); bent ones spread further."""
        thin = {**ONE_STRAIGHT_WHITE_STROKE, "width_min": 0.05, "width_max": 0.05, "margin": 0.15}
        bar = 0.05 * 64 / np.sqrt(12)
        straight = _minor_axis_sd(create_generator("random_strokes", thin).generate(0, 0, 32, 64)[..., 0])
        bent = _minor_axis_sd(
            create_generator("random_strokes", {**thin, "curvature": 1.0}).generate(0, 0, 32, 64)[..., 0]
        )
        arcs = _minor_axis_sd(
            create_generator("random_strokes", {**thin, "arc_share": 1.0}).generate(0, 0, 32, 64)[..., 0]
        )
        assert straight.max() < 1.1 * bar
        assert np.median(bent) > 2.0 * bar and arcs.min() > 1.5 * bar

    def test_inverted_ranges_are_rejected_naming_the_param(self) -> None:
        with pytest.raises(GeneratorError, match=r"'random_strokes'.*width_max"):
            create_generator("random_strokes", {"width_min": 0.3, "width_max": 0.1})
        with pytest.raises(GeneratorError, match=r"'random_strokes'.*strokes_max"):
            create_generator("random_strokes", {"strokes_min": 4, "strokes_max": 2})


def _program_features(images: np.ndarray) -> np.ndarray:
    """Mean colour, contrast, gradient energy, spectral slope, saturation, darkness of a program's images."""
    x = images.astype(float) / 255.0
    grey = x.mean(axis=3)
    gradient = (np.diff(grey, axis=1) ** 2).mean() + (np.diff(grey, axis=2) ** 2).mean()
    power = (np.abs(np.fft.fft2(grey - grey.mean(axis=(1, 2), keepdims=True))) ** 2).mean(axis=0)
    size = grey.shape[1]
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size)))
    band = f > 0
    slope = np.polyfit(np.log(f[band]), np.log(power[band] + 1e-9), 1)[0]
    return np.array(
        [
            *x.mean(axis=(0, 1, 2)),
            grey.std(axis=(1, 2)).mean(),
            np.sqrt(gradient),
            slope / 4.0,
            (x.max(axis=3) - x.min(axis=3)).mean(),
            (grey < 0.1).mean(),
        ]
    )


def _render_and_report() -> str:
    try:
        create_generator("shaders", {"programs": ["plasma"]}).generate(0, 0, 1, 8)
    except GeneratorError as error:
        return str(error)
    return "rendered"


@pytest.fixture(scope="module")
def library_renders() -> dict[str, np.ndarray]:
    """16 images per bundled program, every program given the same per-image random values."""
    return {
        name: create_generator("shaders", {"programs": [name]}).generate(21, 0, 16, 32) for name in bundled_programs()
    }


class TestShaders:
    def test_library_has_at_least_24_programs(self) -> None:
        assert len(bundled_programs()) >= 24

    def test_image_i_uses_program_i_modulo_the_program_count(self) -> None:
        names = list(bundled_programs())
        everything = create_generator("shaders", {}).generate(5, 0, len(names) + 3, 16)
        for i in (2, len(names) + 2):
            alone = create_generator("shaders", {"programs": [names[2]]}).generate(5, i, 1, 16)
            assert np.array_equal(everything[i], alone[0])

    def test_programs_are_neither_blank_nor_saturated(self, library_renders: dict[str, np.ndarray]) -> None:
        for name, images in library_renders.items():
            assert images.reshape(len(images), -1).std(axis=1).mean() > 15, name
            clipped = np.mean((images == 0) | (images == 255))
            assert clipped < 0.6, name

    def test_no_two_programs_have_near_identical_statistics(self, library_renders: dict) -> None:
        """Same random values for all programs, so a copied (or barely edited) program scores ~0."""
        features = {name: _program_features(images) for name, images in library_renders.items()}
        distances = {
            (a, b): float(np.linalg.norm(features[a] - features[b])) for a, b in itertools.combinations(features, 2)
        }
        closest = min(distances, key=distances.__getitem__)
        assert distances[closest] > 0.03, f"programs {closest} look alike: {distances[closest]:.4f}"

    def test_supersampling_averages_subpixels(self) -> None:
        plain = create_generator("shaders", {"programs": ["truchet"]}).generate(3, 0, 4, 16)
        smooth = create_generator("shaders", {"programs": ["truchet"], "supersample": 2}).generate(3, 0, 4, 16)
        assert smooth.shape == plain.shape
        assert 0 < np.abs(smooth.astype(int) - plain).mean() < 40

    def test_missing_moderngl_error_says_what_to_install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "moderngl", None)  # what `import moderngl` meets when not installed
        monkeypatch.setattr(shader_module, "_RENDERER", None)
        with pytest.raises(GeneratorError, match=r"apt-get install -y libegl1 .*libgles2.*pip install moderngl"):
            create_generator("shaders", {"programs": ["plasma"]}).generate(0, 0, 1, 8)

    def test_rendering_in_a_child_forked_after_rendering_is_an_error_not_a_hang(self) -> None:
        create_generator("shaders", {"programs": ["plasma"]}).generate(0, 0, 1, 8)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            message = pool.apply(_render_and_report, ())
        assert "'spawn' or 'forkserver'" in message

    def test_unknown_program_is_named(self) -> None:
        with pytest.raises(GeneratorError, match=r"'shaders'.*unknown.*'nebula'"):
            create_generator("shaders", {"programs": ["plasma", "nebula"]})


class TestGlslFolder:
    def test_renders_user_programs_with_per_image_values(self, user_folder: Path) -> None:
        """Image i: red = its iParams[0].x, green = 0.2, blue rises towards the top row (GL's y is up)."""
        images = create_generator("glsl_folder", {"path": str(user_folder)}).generate(7, 0, 6, 16)
        for i in (0, 2, 4):  # program a_params
            red = image_values(7, i)[4]
            assert np.all(np.abs(images[i, :, :, 0].astype(int) - round(red * 255)) <= 1)
            assert np.all(np.abs(images[i, :, :, 1].astype(int) - 51) <= 1)
            blue = images[i, :, 0, 2].astype(int)
            assert blue[0] > 230 and blue[-1] < 20 and np.all(np.diff(blue) < 0)

    def test_shadertoy_uniform_declarations_and_version_lines_are_accepted(self, user_folder: Path) -> None:
        images = create_generator("glsl_folder", {"path": str(user_folder)}).generate(7, 1, 1, 16)
        assert images[0].std() > 20

    def test_missing_folder_is_named(self, tmp_path: Path) -> None:
        missing = tmp_path / "no-such-shaders"
        with pytest.raises(
            GeneratorError, match=f"'glsl_folder': path: .*{re.escape(repr(str(missing)))} does not exist"
        ):
            create_generator("glsl_folder", {"path": str(missing)})

    def test_folder_without_programs_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(GeneratorError, match=r"holds no programs \(\.glsl, \.frag, \.fragment\)"):
            create_generator("glsl_folder", {"path": str(tmp_path)})

    def test_compile_error_names_the_program(self, tmp_path: Path) -> None:
        (tmp_path / "broken.glsl").write_text("void mainImage(out vec4 c, in vec2 p) { c = vec4(undefined); }")
        generator = create_generator("glsl_folder", {"path": str(tmp_path)})
        with pytest.raises(GeneratorError, match="shader program 'broken' does not compile"):
            generator.generate(0, 0, 1, 8)


@pytest.mark.parametrize(
    ("card_name", "generator_name"),
    [
        ("shaders", "shaders"),
        ("uniform_noise", "uniform_noise"),
        ("spectral_noise", "spectral_noise"),
        ("composed_shaders", "composed_shaders"),
        ("shaders_balanced", "composed_shaders"),
        ("random_strokes_balanced", "random_strokes"),
        ("shaders_paper", "composed_shaders"),
        ("shaders_paper_long_tail", "composed_shaders"),
        ("dead_leaves_paper", "dead_leaves"),
        ("gaussian_noise_paper", "gaussian_noise"),
    ],
)
def test_bundled_cards_render_their_generator(card_name: str, generator_name: str) -> None:
    """The README builds `shaders`; the report ranks against the noise baselines: their cards ship."""
    from study.config import load_card
    from study.resources import resolve_card_path

    card = load_card(resolve_card_path(card_name))
    assert card.kind == "generated" and card.generator == generator_name and (card.count or card.balance)
    generator = create_generator(card.generator, card.params)
    if card_name == "shaders":
        assert list(generator.sources) == list(bundled_programs())  # every bundled program
    if generator_name == "composed_shaders":
        assert len(generator.sources) >= 1000  # the paper's diversity (Shaders-1k: 1,089 programs)
    if card_name in ("shaders_balanced", "random_strokes_balanced"):
        assert card.balance is not None and card.balance.per_class
    if card_name.endswith("_paper"):  # the paper's 50K teacher-filtered images for a teacher of any class count
        assert card.balance is not None and sum(card.balance.quotas(10)) == sum(card.balance.quotas(100)) == 50_000
    if card_name == "shaders_paper_long_tail":  # the twin of shaders_paper but for the class balance
        twin = load_card(resolve_card_path("shaders_paper"))
        assert card.balance is not None and card.balance.mode == "long_tail"
        assert card.model_dump(exclude={"name", "description", "balance"}) == twin.model_dump(
            exclude={"name", "description", "balance"}
        )
    images = generator.generate(card.seed, 0, 4, card.image_size)
    assert images.shape == (4, card.image_size, card.image_size, 3) and images.std() > 0
