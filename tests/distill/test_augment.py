"""Specification of the batched per-image augmentation recipe (study.distill.augment)."""

from dataclasses import replace

import torch

from study.distill.augment import OP_INDEX, OPS, AugmentConfig, BatchAugment, mixup

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)
OFF = AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=0, flip=False, pad_fraction=0.0, mixup=False)
RESIZED = AugmentConfig(crop="random_resized")  # kd-study's earlier crop, kept as an option


def _images(n: int = 64, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normalise(images: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s


def setup_module() -> None:
    torch.set_num_threads(1)


class TestPerImageParameters:
    def test_ops_crops_and_magnitudes_differ_across_the_batch(self) -> None:
        params = BatchAugment(RESIZED, MEAN, STD).draw(256, 32, 32, _gen())
        assert params.ops.shape == (256, 2)
        assert len(torch.unique(params.ops[:, 0])) == len(OPS)
        assert len(torch.unique(params.crop, dim=0)) > 100
        rotate = params.ops == OP_INDEX["Rotate"]
        angles = params.magnitudes[rotate]
        assert (angles > 0).any() and (angles < 0).any()
        assert torch.allclose(angles.abs(), torch.tensor(14.0))

    def test_different_images_get_different_geometry_in_one_batch(self) -> None:
        one = _images(1)
        batch = one.repeat(16, 1, 1, 1)
        cfg = replace(RESIZED, randaugment_ops=0, flip=False, pad_fraction=0.0, mixup=False)
        out = BatchAugment(cfg, MEAN, STD)(batch, _gen())
        distinct = {tuple(o.flatten()[:50].tolist()) for o in out}
        assert len(distinct) == 16

    def test_crops_stay_inside_the_image_with_torchvisions_scale_and_ratio(self) -> None:
        params = BatchAugment(RESIZED, MEAN, STD).draw(2000, 32, 32, _gen())
        top, left, h, w = params.crop.T
        assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
        area = (h * w).float() / 1024
        assert area.min() >= 0.3 and area.max() <= 1.0


class TestAuthorsCrop:
    def test_default_crop_leaves_a_square_image_unchanged_but_for_the_pad_crop_shift(self) -> None:
        """The authors' Resize(size) + RandomCrop(size) on a square image at that size is the whole image."""
        images = _images(32, size=16)
        augment = BatchAugment(AugmentConfig(randaugment_ops=0, flip=False, mixup=False), MEAN, STD)
        params = augment.draw(32, 16, 16, _gen())
        assert torch.equal(params.crop, torch.tensor([0, 0, 16, 16]).repeat(32, 1))
        out = augment.apply(images, params)
        pad = augment.padding(16, 16)
        padded = torch.nn.functional.pad(_normalise(images), (pad, pad, pad, pad))  # mean fill: 0 once normalised
        for i, (dy, dx) in enumerate(params.shift.tolist()):
            assert torch.allclose(out[i], padded[i, :, dy : dy + 16, dx : dx + 16], atol=1e-6)


class TestOutput:
    def test_full_recipe_returns_float_batch_of_input_shape(self) -> None:
        cfg = AugmentConfig(randaugment_ops=4, elastic_p=0.5, invert_p=0.1)
        out = BatchAugment(cfg, MEAN, STD)(_images(), _gen())
        assert out.shape == (64, 3, 32, 32) and out.dtype == torch.float32
        assert torch.isfinite(out).all()

    def test_with_all_ops_off_output_is_exactly_the_normalised_input(self) -> None:
        images = _images()
        out = BatchAugment(OFF, MEAN, STD)(images, _gen())
        torch.testing.assert_close(out, _normalise(images))

    def test_pad_crop_fill_is_the_mean_so_zero_after_normalisation(self) -> None:
        cfg = AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=0, flip=False, mixup=False)
        aug = BatchAugment(cfg, MEAN, STD)
        images = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
        params = aug.draw(64, 32, 32, _gen())
        out = aug.apply(images, params)
        filled = out.abs().sum(dim=1) == 0
        dy = (params.shift[:, 0] - 4).abs()
        dx = (params.shift[:, 1] - 4).abs()
        expected = 32 * 32 - (32 - dy) * (32 - dx)
        assert torch.equal(filled.sum(dim=(1, 2)), expected)
        assert expected.sum() > 0

    def test_flip_mirrors_about_half_of_the_images(self) -> None:
        cfg = AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=0, pad_fraction=0.0, mixup=False)
        aug = BatchAugment(cfg, MEAN, STD)
        images = _images(400)
        params = aug.draw(400, 32, 32, _gen())
        out = aug.apply(images, params)
        ref = _normalise(images)
        flipped = torch.tensor([torch.allclose(o, r.flip(-1)) for o, r in zip(out, ref, strict=True)])
        same = torch.tensor([torch.allclose(o, r) for o, r in zip(out, ref, strict=True)])
        assert torch.equal(flipped, params.flip) and torch.equal(same, ~params.flip)
        assert 150 < int(params.flip.sum()) < 250

    def test_same_seed_gives_identical_output_and_other_seed_differs(self) -> None:
        cfg = AugmentConfig(randaugment_ops=4, elastic_p=0.5, invert_p=0.1)
        aug = BatchAugment(cfg, MEAN, STD)
        images = _images()
        assert torch.equal(aug(images, _gen(7)), aug(images, _gen(7)))
        assert not torch.equal(aug(images, _gen(7)), aug(images, _gen(8)))

    def test_grey_single_channel_images_work(self) -> None:
        cfg = AugmentConfig(randaugment_ops=4, elastic_p=0.5, invert_p=0.1)
        out = BatchAugment(cfg, (0.5,), (0.25,))(_images(c=1), _gen())
        assert out.shape == (64, 1, 32, 32) and torch.isfinite(out).all()

    def test_colour_op_is_identity_on_grey_and_brightness_scales(self) -> None:
        aug = BatchAugment(
            AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=1, flip=False, pad_fraction=0.0, mixup=False),
            (0.0,),
            (1.0,),
        )
        images = _images(32, c=1)
        params = aug.draw(32, 32, 32, _gen())
        params.ops[:16, 0] = OP_INDEX["Color"]
        params.ops[16:, 0] = OP_INDEX["Brightness"]
        params.magnitudes[:, 0] = -0.42
        out = aug.apply(images, params)
        torch.testing.assert_close(out[:16], images[:16].float() / 255)
        torch.testing.assert_close(out[16:], images[16:].float() / 255 * 0.58)

    def test_channel_mismatch_names_the_counts(self) -> None:
        try:
            BatchAugment(OFF, MEAN, STD)(_images(c=1), _gen())
        except ValueError as err:
            assert "1 channels" in str(err) and "3" in str(err)
        else:
            raise AssertionError("expected ValueError")


class TestMixup:
    def test_lambda_is_per_sample_in_unit_interval_and_mix_is_exact(self) -> None:
        x = torch.randn(128, 3, 8, 8)
        mixed, lam, perm = mixup(x, _gen())
        assert lam.shape == (128,) and ((lam >= 0) & (lam <= 1)).all()
        assert len(torch.unique(lam)) == 128
        assert sorted(perm.tolist()) == list(range(128))
        expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
        torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-6)

    def test_batch_augment_mixes_its_own_augmented_images(self) -> None:
        cfg = AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=0, flip=False, pad_fraction=0.0)
        aug = BatchAugment(cfg, MEAN, STD)
        images = _images()
        params = aug.draw(64, 32, 32, _gen())
        x = _normalise(images)
        lam = params.lam.view(-1, 1, 1, 1)
        torch.testing.assert_close(aug.apply(images, params), lam * x + (1 - lam) * x[params.perm])


class TestGeometryMatchesTorchvision:
    """Ops whose sampling points land on pixel centres must agree with torchvision's own kernels."""

    def _single_op(self, op: str, magnitude: float) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = AugmentConfig(crop_scale=(1.0, 1.0), randaugment_ops=1, flip=False, pad_fraction=0.0, mixup=False)
        aug = BatchAugment(cfg, MEAN, (1.0, 1.0, 1.0))
        images = _images(4)
        params = aug.draw(4, 32, 32, _gen())
        params.ops[:, 0] = OP_INDEX[op]
        params.magnitudes[:, 0] = magnitude
        return images, aug.apply(images, params) + torch.tensor(MEAN).view(1, 3, 1, 1)

    def test_rotate_by_90_degrees_equals_torchvision_rotate(self) -> None:
        from torchvision.transforms.v2.functional import rotate

        images, out = self._single_op("Rotate", 90.0)
        torch.testing.assert_close(out, rotate(images.float() / 255, 90.0), atol=1e-4, rtol=0)

    def test_translate_x_equals_torchvision_affine_with_mean_fill(self) -> None:
        from torchvision.transforms.v2.functional import affine

        images, out = self._single_op("TranslateX", 6.0)
        expected = affine(
            images.float() / 255, angle=0.0, translate=[6, 0], scale=1.0, shear=[0.0, 0.0], fill=list(MEAN)
        )
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


class TestColourOpsMatchTorchvision:
    """Each colour op equals torchvision v2's kernel on the same image at RandAugment's magnitude 14."""

    @staticmethod
    def _reference(name: str, image: torch.Tensor, magnitude: float) -> torch.Tensor:
        import torchvision.transforms.v2.functional as TF

        as_float = image.float() / 255
        kernels = {
            "Brightness": lambda: TF.adjust_brightness(as_float, 1 + magnitude),
            "Color": lambda: TF.adjust_saturation(as_float, 1 + magnitude),
            "Contrast": lambda: TF.adjust_contrast(as_float, 1 + magnitude),
            "Sharpness": lambda: TF.adjust_sharpness(as_float, 1 + magnitude),
            "Solarize": lambda: TF.solarize(as_float, magnitude),
            "AutoContrast": lambda: TF.autocontrast(as_float),
            "Posterize": lambda: TF.posterize(image, int(magnitude)).float() / 255,
            "Equalize": lambda: TF.equalize(image).float() / 255,
        }
        return kernels[name]()

    def test_every_colour_op_matches_the_torchvision_kernel(self) -> None:
        from study.distill.augment import COLOUR_OPS, _colour_op, _op_magnitudes

        images = _images(8)
        table = _op_magnitudes(14, 32, 32)
        for name in COLOUR_OPS:
            for sign in (1.0, -1.0) if name in ("Brightness", "Color", "Contrast", "Sharpness") else (1.0,):
                magnitude = sign * float(table[OP_INDEX[name]])
                ours = _colour_op(name, images.float() / 255, torch.full((8,), magnitude))
                expected = torch.stack([self._reference(name, image, magnitude) for image in images])
                torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0, msg=f"{name} at {magnitude}")


class TestSyntheticRecipeOps:
    def test_invert_with_everything_else_off_inverts_exactly(self) -> None:
        cfg = replace(OFF, invert_p=1.0)
        images = _images()
        torch.testing.assert_close(BatchAugment(cfg, MEAN, STD)(images, _gen()), _normalise(255 - images))

    def test_elastic_displaces_only_the_images_that_drew_it(self) -> None:
        cfg = replace(OFF, elastic_p=0.5)
        aug = BatchAugment(cfg, MEAN, STD)
        images = _images()
        params = aug.draw(64, 32, 32, _gen())
        out = aug.apply(images, params)
        moved = (out - _normalise(images)).abs().amax(dim=(1, 2, 3)) > 1e-4
        assert torch.equal(moved, params.elastic)
        assert 16 < int(params.elastic.sum()) < 48
