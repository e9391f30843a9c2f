"""Specification of the model zoo (study/models): registry contract, shapes, parameter counts, init."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from study.models import create_model, list_models, register_model

torch.set_num_threads(1)

CIFAR_ZOO = [
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "mobilenetv2",
    "mobilenetv2_w1",
    "shufflenetv2",
]
TORCHVISION = ["tv_resnet18", "tv_resnet34", "tv_resnet50"]
ALL_MODELS = CIFAR_ZOO + TORCHVISION
# The costlier per-model checks run on the zoo and one torchvision net: tv_resnet34/50 share its code path.
SMALL_AND_ONE_TV = [*CIFAR_ZOO, "tv_resnet18"]

# Parameter counts in millions as published for the CIFAR-100 KD benchmark (CRD, Tian et al. ICLR 2020, and
# the papers that reuse its zoo, e.g. DKD, Zhao et al. CVPR 2022), and He et al. (CVPR 2016, Table 6) for
# ResNet-20 on CIFAR-10. They are rounded to 0.01M, so a count matches when it is within 2% or within the
# rounding of the figure (0.08M for resnet8 stands for 83,892 parameters, 4.9% above 80,000).
PUBLISHED_MILLIONS = [
    ("resnet8x4", 100, 1.23),
    ("resnet32x4", 100, 7.43),
    ("wrn_40_2", 100, 2.26),
    ("wrn_16_2", 100, 0.70),
    ("resnet20", 100, 0.28),
    ("resnet8", 100, 0.08),
    ("resnet56", 100, 0.86),
    ("resnet20", 10, 0.27),
]

# Exact counts at 100 classes; identical to the state dicts of mdistiller's models (mdistiller/models/cifar,
# same keys and shapes, checked when this zoo was written), so any change to a layer shape fails here.
GOLDEN_COUNTS_100 = {
    "resnet8": 83_892,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
    "mobilenetv2": 812_836,
    "shufflenetv2": 1_355_528,
}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def shared_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """One build per configuration for the tests that only inspect a model, never run or change it."""
    return create_model(name, num_classes=num_classes, in_channels=in_channels)


class TestRegistry:
    def test_the_torch_free_name_list_is_the_registry(self) -> None:
        from study.models.names import ZOO_MODELS

        assert sorted(ZOO_MODELS) == list_models()  # `kd-study validate` checks archs against the list

    def test_lists_the_whole_zoo_sorted(self) -> None:
        """list_models names every CIFAR KD model and torchvision ResNet, in sorted order."""
        names = list_models()
        assert names == sorted(names)
        assert set(ALL_MODELS) <= set(names)

    def test_unknown_name_error_names_it_and_lists_known_models(self) -> None:
        """An unknown name raises ValueError naming the typo and every registered model."""
        with pytest.raises(ValueError, match="resnet9x4") as error:
            create_model("resnet9x4", num_classes=10)
        for name in list_models():
            assert name in str(error.value)

    @pytest.mark.parametrize(("num_classes", "in_channels"), [(0, 3), (10, 0), (-1, 3), (True, 3)])
    def test_rejects_non_positive_sizes(self, num_classes: int, in_channels: int) -> None:
        """num_classes and in_channels must be positive integers; the message names the field."""
        field = "num_classes" if num_classes != 10 else "in_channels"
        with pytest.raises(ValueError, match=field):
            create_model("resnet8", num_classes=num_classes, in_channels=in_channels)

    def test_registering_a_taken_name_fails(self) -> None:
        """A second factory under an existing name is refused instead of replacing the first."""
        with pytest.raises(ValueError, match="already registered"):
            register_model("resnet8")(lambda num_classes, in_channels: nn.Identity())

    def test_registered_factory_is_built_by_name(self) -> None:
        """A factory registered with the decorator is what create_model returns for its name."""
        name = "test_models_linear_probe"

        @register_model(name)
        def build(num_classes: int, in_channels: int) -> nn.Module:
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))

        assert name in list_models()
        assert create_model(name, num_classes=4, in_channels=2)(torch.zeros(1, 2, 28, 28)).shape == (1, 4)


class TestForward:
    @pytest.mark.parametrize("name", ALL_MODELS)
    def test_logits_for_rgb_32_and_grey_28(self, name: str) -> None:
        """Every model maps 32 px RGB and 28 px grey images to (N, num_classes) finite logits."""
        rgb = create_model(name, num_classes=10)
        grey = create_model(name, num_classes=7, in_channels=1)
        with torch.no_grad():
            rgb_logits = rgb(torch.randn(2, 3, 32, 32))
            grey_logits = grey(torch.randn(2, 1, 28, 28))
        assert rgb_logits.shape == (2, 10)
        assert grey_logits.shape == (2, 7)
        assert torch.isfinite(rgb_logits).all() and torch.isfinite(grey_logits).all()

    @pytest.mark.parametrize("name", SMALL_AND_ONE_TV)
    def test_logits_for_64_px(self, name: str) -> None:
        """The largest supported size, 64 px, also gives (N, num_classes) logits."""
        model = create_model(name, num_classes=5).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)

    @pytest.mark.parametrize("name", SMALL_AND_ONE_TV)
    def test_channels_last_input_gives_the_same_logits(self, name: str) -> None:
        """A channels_last batch through a channels_last model gives the logits of the contiguous path."""
        torch.manual_seed(0)
        model = create_model(name, num_classes=10).eval()
        images = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            expected = model(images)
            model = model.to(memory_format=torch.channels_last)
            actual = model(images.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    @pytest.mark.parametrize("name", SMALL_AND_ONE_TV)
    def test_backward_gives_finite_gradients_everywhere(self, name: str) -> None:
        """One cross-entropy backward in train mode reaches every parameter with a finite gradient."""
        model = create_model(name, num_classes=10, in_channels=1).train()
        loss = nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 3]))
        loss.backward()
        for param_name, param in model.named_parameters():
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name


class TestArchitecture:
    @pytest.mark.parametrize(("name", "num_classes", "millions"), PUBLISHED_MILLIONS)
    def test_parameter_count_matches_published_figure(self, name: str, num_classes: int, millions: float) -> None:
        """Parameter counts agree with the figures the KD literature publishes for these models."""
        count = count_parameters(shared_model(name, num_classes))
        tolerance = max(0.02 * millions * 1e6, 0.005e6)
        assert abs(count - millions * 1e6) <= tolerance, f"{name}: {count} parameters, published {millions}M"

    @pytest.mark.parametrize(("name", "count"), sorted(GOLDEN_COUNTS_100.items()))
    def test_parameter_count_matches_reference_exactly(self, name: str, count: int) -> None:
        """Exact counts at 100 classes equal those of the RepDistiller/mdistiller implementations."""
        assert count_parameters(shared_model(name, 100)) == count

    @pytest.mark.parametrize("name", ALL_MODELS)
    def test_input_channels_reach_the_first_conv(self, name: str) -> None:
        """in_channels sets the input width of the stem conv, the only layer that sees the images."""
        model = shared_model(name, 10, in_channels=1)
        first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first_conv.in_channels == 1

    @pytest.mark.parametrize("name", TORCHVISION)
    def test_torchvision_resnets_have_a_small_image_stem(self, name: str) -> None:
        """tv_resnet* replace the 7x7/2 stem conv by a 3x3/1 conv and drop the max-pool."""
        model = shared_model(name, 10)
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
        assert model.fc.out_features == 10

    def test_resnet_init_is_kaiming_fan_out_and_unit_batchnorm(self) -> None:
        """Convs are drawn from N(0, 2/(k*k*C_out)), BN starts at weight 1, bias 0, as in the references."""
        torch.manual_seed(0)
        model = create_model("resnet32x4", num_classes=100)
        conv = model.layer3[0].conv2
        expected_std = (2.0 / (3 * 3 * conv.out_channels)) ** 0.5
        assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.02)
        bn = model.layer3[0].bn2
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


class TestDeterminism:
    @pytest.mark.parametrize("name", SMALL_AND_ONE_TV)
    def test_same_seed_gives_identical_initial_weights(self, name: str) -> None:
        """Seeding torch before create_model fixes every initial weight; another seed changes them."""
        states = []
        for seed in (7, 7, 8):
            torch.manual_seed(seed)
            states.append(create_model(name, num_classes=10).state_dict())
        first, same, other = states
        assert all(torch.equal(first[key], same[key]) for key in first)
        assert not all(torch.equal(first[key], other[key]) for key in first)
