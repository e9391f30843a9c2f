"""Shaders at the paper's diversity: 1,000 composed programs, the program cache, Twigl and Shadertoy conversion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from study.data.generators import shaders as shader_module
from study.data.generators.registry import GeneratorError, create_generator
from study.data.generators.shader_composer import composed_program, composed_programs
from study.data.generators.shader_styles import detect_style, to_entry_point
from study.data.generators.shaders import image_values, renderer

N_PROGRAMS = 1000
SAMPLE = np.linspace(0, N_PROGRAMS - 1, 48).round().astype(int)  # 48 programs spread over the 1,000

# Twigl programs in each mode; each writes (x / width, y / height, time / 60) of its tile's pixel, so a render
# shows whether gl_FragCoord / FC is the tile's own pixel, resolution / r the tile size and time / t iTime.
TWIGL = {
    "classic": """precision highp float;
uniform vec2 resolution;
uniform vec2 mouse;
uniform float time;
uniform sampler2D backbuffer;
void main(){vec2 p=gl_FragCoord.xy/resolution;gl_FragColor=vec4(p,time/60.,1);}""",
    "classic_300": """#version 300 es
precision highp float;
uniform vec2 resolution;
uniform float time;
out vec4 outColor;
void main(){vec2 p=gl_FragCoord.xy/resolution;outColor=vec4(p,time/60.,1);}""",
    "geek": """precision highp float;uniform vec2 r;uniform vec2 m;uniform float t;uniform sampler2D b;
void main(){vec2 p=gl_FragCoord.xy/r;gl_FragColor=vec4(p,t/60.,1);}""",
    "geeker": "void main(){vec2 p=gl_FragCoord.xy/r;gl_FragColor=vec4(p,t/60.,1);}",
    "geeker_300": "void main(){vec2 p=gl_FragCoord.xy/r;o=vec4(p,t/60.,1);}",
    "geekest": "vec2 p=FC.xy/r;gl_FragColor=vec4(p,t/60.,1);",
    "geekest_300": "vec2 p=FC.xy/r;o=vec4(p+0.*snoise3D(vec3(p,t))+0.*hsv(p.x,1.,1.).x,t/60.,1);",
}
SHADERTOY = """#version 300 es
precision highp float;
uniform vec3 iResolution;
uniform float iTime;
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.xy;
    fragColor = vec4(p, iTime / 60.0, 1.0);
}
"""
# a busier program per style (what a user's collection holds), which must render an image with structure
TWIGL_BUSY = {
    "geekest": "vec2 p=(FC.xy*2.-r)/min(r.x,r.y);for(int i=0;i<6;++i){p=abs(p)/dot(p,p)-vec2(.9+cos(t*.2)*.3);}"
    "o=vec4(hsv(p.x*.3,.8,1.)*(.5+.5*snoise2D(p*3.)),1);",
    "classic": """precision highp float;uniform vec2 resolution;uniform vec2 mouse;uniform float time;
void main(){vec2 r=resolution,p=(gl_FragCoord.xy*2.-r)/min(r.x,r.y)-mouse;
for(int i=0;i<8;++i){p.xy=abs(p)/abs(dot(p,p))-vec2(.9+cos(time*.2)*.4);}gl_FragColor=vec4(p.xxy,1);}""",
}


def _pairwise_rms(images: np.ndarray) -> np.ndarray:
    flat = images.reshape(len(images), -1).astype(np.float32)
    squared = (flat**2).sum(1)
    d = (squared[:, None] + squared[None] - 2 * flat @ flat.T) / flat.shape[1]
    d = np.sqrt(np.maximum(d, 0))
    np.fill_diagonal(d, np.inf)
    return d


class TestComposedPrograms:
    def test_a_thousand_distinct_program_sources_deterministic_in_k(self) -> None:
        programs = composed_programs(N_PROGRAMS)
        assert len(programs) == N_PROGRAMS
        assert len({hashlib.sha256(s.encode()).hexdigest() for s in programs.values()}) == N_PROGRAMS
        assert composed_program(417) == programs["composed_00417"]
        # random structure, not only constants: the block chains (first comment line) differ widely
        structures = {source.splitlines()[0].split(": ", 1)[1] for source in programs.values()}
        assert len(structures) > 0.8 * N_PROGRAMS

    def test_every_program_compiles_and_links(self) -> None:
        """All 1,000 through Mesa's GLSL compiler and linker (~12 ms each); the JIT happens at first draw."""
        gl = renderer()
        for name, source in composed_programs(N_PROGRAMS).items():
            gl.compile(name, source).release()

    def test_a_sample_renders_distinct_structured_images(self) -> None:
        """48 programs over the 1,000 given the same per-image values: no two images alike, none blank."""
        values = np.stack([image_values(11, i) for i in range(2)]).astype(np.float32)
        gl = renderer()
        images = np.stack([gl.render(str(k), composed_program(int(k)), values, 32) for k in SAMPLE])
        assert images.reshape(len(images), -1).std(axis=1).min() > 5
        assert _pairwise_rms(images.reshape(len(SAMPLE), -1)).min() > 10

    def test_image_i_uses_program_i_div_images_per_program(self, tmp_path: Path) -> None:
        (tmp_path / "only.glsl").write_text(composed_program(5))
        alone = create_generator("glsl_folder", {"path": str(tmp_path)})
        composed = create_generator("composed_shaders", {"images_per_program": 16})
        block = composed.generate(4, 16 * 5 - 2, 20, 16)  # images 78..97: programs 4, then 5 (80..95), then 6
        assert np.array_equal(block[2:18], alone.generate(4, 80, 16, 16))
        assert not np.array_equal(block[0], alone.generate(4, 78, 1, 16)[0])
        wrapped = create_generator("composed_shaders", {"programs": 3, "images_per_program": 2})
        assert wrapped.program_of(np.arange(8)).tolist() == [0, 0, 1, 1, 2, 2, 0, 0]


def test_program_cache_is_bounded_and_releases_evicted_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shader_module, "_CACHED_PROGRAMS", 3)
    gl = renderer()
    generator = create_generator("composed_shaders", {"programs": 5, "images_per_program": 1})
    first = generator.generate(2, 0, 5, 8)
    assert len(gl.programs) <= 3
    assert all(program.glo > 0 for program, _ in gl.programs.values())
    assert np.array_equal(generator.generate(2, 0, 5, 8), first)  # recompiled after eviction, same images


def _assert_coordinate_images(images: np.ndarray, seed: int, indices: range) -> None:
    """Images of the programs above: (x / width, y / height, time / 60) of each tile's own pixel."""
    ramp = (np.arange(images.shape[1]) + 0.5) / images.shape[1] * 255
    for image, i in zip(images.astype(int), indices, strict=True):
        assert np.all(np.abs(image[0, :, 0] - ramp) <= 1)  # red: x / width across the tile
        assert np.all(np.abs(image[::-1, 0, 1] - ramp) <= 1)  # green: y / height, bottom row first
        assert np.all(np.abs(image[:, :, 2] - image_values(seed, i)[0] / 60 * 255) <= 1)  # blue: time / 60


class TestStyles:
    @pytest.mark.parametrize("mode", sorted(TWIGL))
    def test_twigl_program_converts_and_renders_per_tile(self, mode: str, tmp_path: Path) -> None:
        assert detect_style(TWIGL[mode]) == "twigl_" + mode.removesuffix("_300")
        (tmp_path / f"{mode}.glsl").write_text(TWIGL[mode])
        images = create_generator("glsl_folder", {"path": str(tmp_path)}).generate(9, 0, 3, 16)
        _assert_coordinate_images(images, 9, range(3))

    def test_shadertoy_program_converts_and_renders_per_tile(self, tmp_path: Path) -> None:
        assert detect_style(SHADERTOY) == "shadertoy" and to_entry_point(SHADERTOY) == SHADERTOY
        (tmp_path / "toy.frag").write_text(SHADERTOY)
        images = create_generator("glsl_folder", {"path": str(tmp_path)}).generate(9, 0, 3, 16)
        _assert_coordinate_images(images, 9, range(3))

    def test_busy_programs_render_structure(self, tmp_path: Path) -> None:
        for mode, source in TWIGL_BUSY.items():
            (tmp_path / f"{mode}.glsl").write_text(source)
        images = create_generator("glsl_folder", {"path": str(tmp_path)}).generate(1, 0, 4, 32)
        assert images.reshape(4, -1).std(axis=1).min() > 10

    def test_shaders21k_layout_takes_the_mode_file(self, tmp_path: Path) -> None:
        """Shaders-21k: twigl/fragments/<name>.fragment with its mode in twigl/modes/<name>.fragment."""
        fragments, modes = tmp_path / "fragments", tmp_path / "modes"
        fragments.mkdir()
        modes.mkdir()
        (fragments / "a1.fragment").write_text(TWIGL["geekest_300"])
        (modes / "a1.fragment").write_text("geekest\nTrue\nFalse\nFalse\n")
        (fragments / "b2.fragment").write_text(SHADERTOY)
        generator = create_generator("glsl_folder", {"path": str(fragments)})
        assert list(generator.sources) == ["a1", "b2"]
        _assert_coordinate_images(generator.generate(9, 0, 4, 16), 9, range(4))
        (modes / "a1.fragment").write_text("geeker\nTrue\nFalse\nFalse\n")  # the mode file, not the text, decides
        with pytest.raises(GeneratorError, match=r"a1\.fragment: a Twigl geeker program must define void main"):
            create_generator("glsl_folder", {"path": str(fragments)})

    def test_errors_name_the_file_and_the_style(self, tmp_path: Path) -> None:
        (tmp_path / "whole.glsl").write_text("void main(){gl_FragColor=vec4(1);}")
        with pytest.raises(GeneratorError, match=r"whole\.glsl: a Twigl geekest program is the body of main"):
            create_generator("glsl_folder", {"path": str(tmp_path), "style": "twigl_geekest"})
        with pytest.raises(GeneratorError, match=r"whole\.glsl: a Shadertoy-style program must define mainImage"):
            create_generator("glsl_folder", {"path": str(tmp_path), "style": "shadertoy"})


def test_a_program_that_reads_no_per_image_value_renders(tmp_path: Path) -> None:
    """Its per-image uniforms are compiled out (a static Twigl pattern, say): not an error."""
    (tmp_path / "static.glsl").write_text("void main(){gl_FragColor=vec4(0.25,0.5,0.75,1);}")
    images = create_generator("glsl_folder", {"path": str(tmp_path)}).generate(0, 0, 2, 8).astype(int)
    assert np.all(np.abs(images - np.array([64, 128, 191])) <= 1)
