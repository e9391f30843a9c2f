"""Real sources read through torchvision's own dataset classes (CIFAR, SVHN, STL-10, Food-101, DTD, ...).

Each source opens the dataset with its real torchvision class, so the on-disk layout, the integrity checks and the
download are torchvision's. Our split names map onto the dataset's: `train`, `val` and `test` always exist, and a
dataset's own extra splits keep their names (SVHN `extra`, STL-10 `unlabeled`, Aircraft and Pets `trainval`); Aircraft
classifies the 70 families unless a card asks for `annotation_level: variant` (100 classes). A
dataset without an official validation split gives `val` and `test` as two fixed, stratified halves of its official
test split (kd-study's val/test convention: search on one half, report on the other); EuroSAT, which ships no
splits at all, is cut 60/20/20. Labels are read before any image is decoded, so `count` picks a seeded,
class-balanced subset and only those images are decoded (array datasets are sliced, file datasets decode the chosen
files with PIL, no per-image torch transforms). torchvision keeps the file lists of Food-101, DTD, Aircraft and Pets
private, so `torchvision_lists` reads them from the same split files.

Data lives under the card's `source.root`, else `$KD_STUDY_DATA/<name>`, else `~/.cache/kd-study/<name>`; nothing is
downloaded unless the card says `params: {download: true}`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.data.images import LabelledImages

# the module, not its names: torchvision_lists imports `real`, which imports this module, so when torchvision_lists is
# imported first its readers do not exist yet while this module registers (see `_split_file_opener`)
from study.data.sources import torchvision_lists
from study.data.sources.registry import SourceError, check_split, register_source
from study.data.sources.subsets import (
    DATA_ENV,
    choose_subset,
    decode_image_files,
    default_root,
    held_out_part,
    resize_array,
)

_HALVES = {"val": (0.0, 0.5), "test": (0.5, 1.0)}
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass(frozen=True)
class _Split:
    """One of our split names: torchvision's arguments for it, and the held-out fraction [lo, hi) to keep when the
    dataset has no such split of its own."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    part: tuple[float, float] | None = None


@dataclass(frozen=True)
class _Opened:
    """A torchvision dataset reduced to what selection needs: labels known without decoding, and a decoder of
    chosen indices to (N, size, size, C) uint8."""

    labels: np.ndarray | None
    classes: list[str]
    decode: Callable[[np.ndarray, int], np.ndarray]


# (the opened torchvision dataset, our split name, the keyword arguments it was opened with) -> what selection needs
_Opener = Callable[[Any, str, dict[str, Any]], _Opened]


def _train_test(train: dict[str, Any], test: dict[str, Any], **extra: dict[str, Any]) -> dict[str, _Split]:
    splits = {"train": _Split(train), "val": _Split(test, _HALVES["val"]), "test": _Split(test, _HALVES["test"])}
    return {**splits, **{name: _Split(kwargs) for name, kwargs in extra.items()}}


def _missing_message(name: str, cls_name: str, where: Path, err: Exception) -> str:
    return (
        f"real source '{name}': torchvision {cls_name} found no usable data under {where} ({err}). "
        f"Set `params: {{download: true}}` on the card's source to let torchvision fetch it, or place the files "
        f"under {where} in torchvision's layout (the root is the card's `source.root`, else ${DATA_ENV}/{name}, "
        f"else ~/.cache/kd-study/{name})"
    )


def _register(
    name: str,
    cls_name: str,
    splits: dict[str, _Split],
    opener: _Opener,
    options: dict[str, str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Register source `name` over `torchvision.datasets.<cls_name>`; `options` maps card params to its kwargs,
    `defaults` gives card params their values when a card (or a teacher, which passes none) leaves them out."""
    allowed = dict(options or {})
    preset = dict(defaults or {})

    def load(
        split: str,
        image_size: int,
        root: str | None = None,
        count: int | None = None,
        seed: int = 0,
        download: bool = False,
        **params: Any,
    ) -> LabelledImages:
        import torchvision.datasets

        check_split(name, split, tuple(splits))
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise SourceError(f"real source '{name}': unknown params {unknown}; known: {['download', *allowed]}")
        where = default_root(name, root)
        spec = splits[split]
        kwargs = {**spec.kwargs, **{allowed[k]: v for k, v in {**preset, **params}.items()}}
        cls = getattr(torchvision.datasets, cls_name)
        try:
            dataset = cls(str(where), download=bool(download), **kwargs)
        except ValueError as err:  # torchvision's argument checks (e.g. an unknown annotation_level)
            raise SourceError(f"real source '{name}': torchvision {cls_name} rejected {kwargs}: {err}") from err
        except (RuntimeError, OSError) as err:
            if download:
                raise SourceError(
                    f"real source '{name}': torchvision {cls_name} download into {where} failed: {err}"
                ) from err
            raise SourceError(_missing_message(name, cls_name, where, err)) from err
        opened = opener(dataset, split, kwargs)
        n = len(dataset)
        if spec.part is None:
            index = np.arange(n)
        else:
            assert opened.labels is not None, f"{name}: a held-out part needs labels"
            index = held_out_part(opened.labels, *spec.part)
        labels = None if opened.labels is None else opened.labels[index]
        chosen = index[choose_subset(labels, len(index), count, seed)]
        return LabelledImages(
            opened.decode(chosen, image_size),
            None if opened.labels is None else opened.labels[chosen].astype(np.int64),
            opened.classes,
        )

    load.__name__ = f"load_{name}"
    load.__doc__ = f"torchvision `{cls_name}` as a real source; splits {list(splits)}."
    register_source(name)(load)


# ------------------------------------------------------------------------------------------- openers
def _array_opener(
    images: Callable[[Any], np.ndarray], labels: Callable[[Any], np.ndarray | None], classes: Callable[[Any], list[str]]
) -> _Opener:
    """Datasets that torchvision holds as one uint8 array: the chosen rows are sliced, then resized in chunks."""

    def open_(dataset: Any, split: str, kwargs: dict[str, Any]) -> _Opened:
        array = images(dataset)
        return _Opened(
            labels(dataset) if split != "unlabeled" else None,
            classes(dataset),
            lambda idx, size: _as_nhwc(array, idx, size),
        )

    return open_


def _as_nhwc(array: np.ndarray, idx: np.ndarray, size: int) -> np.ndarray:
    chosen = array[idx]
    if chosen.ndim == 3:  # (N, H, W) grey
        chosen = chosen[..., None]
    return resize_array(chosen, size)


def _file_opener(files: Callable[[Any, dict[str, Any]], tuple[list[Any], list[int]]]) -> _Opener:
    """Datasets that torchvision holds as a list of image files: only the chosen files are decoded."""

    def open_(dataset: Any, split: str, kwargs: dict[str, Any]) -> _Opened:
        paths, labels = files(dataset, kwargs)
        return _Opened(
            np.asarray(labels, dtype=np.int64),
            list(dataset.classes),
            lambda idx, size: decode_image_files([paths[i] for i in idx], size),
        )

    return open_


def _chw_to_hwc(data: np.ndarray) -> np.ndarray:
    return data.transpose(0, 2, 3, 1)  # a view: slicing later copies only the chosen rows


_cifar = _array_opener(lambda d: d.data, lambda d: np.asarray(d.targets), lambda d: list(d.classes))
_mnist = _array_opener(lambda d: d.data.numpy(), lambda d: d.targets.numpy(), lambda d: list(d.classes))
_svhn = _array_opener(
    lambda d: _chw_to_hwc(d.data), lambda d: np.asarray(d.labels), lambda d: [str(i) for i in range(10)]
)
_stl10 = _array_opener(
    lambda d: _chw_to_hwc(d.data), lambda d: np.asarray(d.labels), lambda d: list(getattr(d, "classes", STL10_CLASSES))
)
_folder = _file_opener(lambda d, kwargs: ([p for p, _ in d.samples], [c for _, c in d.samples]))


def _split_file_opener(reader: Callable[[], Callable[..., torchvision_lists.SplitFiles]]) -> _Opener:
    """Datasets whose file list torchvision keeps private: the reader (looked up when a dataset is opened, as the
    import cycle above needs) parses the split file the dataset was opened on, with the same root and kwargs; a parse
    that disagrees with the dataset's public classes or length is refused."""

    def files(dataset: Any, kwargs: dict[str, Any]) -> tuple[list[Any], list[int]]:
        listed = reader()(dataset.root, **kwargs)
        if listed.classes != list(dataset.classes) or len(listed.paths) != len(dataset):
            raise SourceError(
                f"{listed.split_file}: read as {len(listed.paths)} images of {len(listed.classes)} classes, but "
                f"torchvision {type(dataset).__name__} has {len(dataset)} of {len(dataset.classes)} (or orders its "
                "classes differently); study/data/torchvision_lists.py no longer matches this torchvision"
            )
        return listed.paths, listed.labels

    return _file_opener(files)


_TRAIN, _TEST = {"train": True}, {"train": False}

_register("cifar10", "CIFAR10", _train_test(_TRAIN, _TEST), _cifar)
_register("cifar100", "CIFAR100", _train_test(_TRAIN, _TEST), _cifar)
_register("mnist", "MNIST", _train_test(_TRAIN, _TEST), _mnist)
_register("fashion_mnist", "FashionMNIST", _train_test(_TRAIN, _TEST), _mnist)
_register("svhn", "SVHN", _train_test({"split": "train"}, {"split": "test"}, extra={"split": "extra"}), _svhn)
_register(
    "stl10", "STL10", _train_test({"split": "train"}, {"split": "test"}, unlabeled={"split": "unlabeled"}), _stl10
)
_register(
    "food101",
    "Food101",
    _train_test({"split": "train"}, {"split": "test"}),
    _split_file_opener(lambda: torchvision_lists.food101_files),
)
_register(
    "dtd",
    "DTD",
    {s: _Split({"split": s}) for s in ("train", "val", "test")},
    _split_file_opener(lambda: torchvision_lists.dtd_files),
    options={"partition": "partition"},
)
_register(
    "fgvc_aircraft",
    "FGVCAircraft",
    {s: _Split({"split": s}) for s in ("train", "val", "test", "trainval")},
    _split_file_opener(lambda: torchvision_lists.fgvc_aircraft_files),
    options={"annotation_level": "annotation_level"},
    # the paper's Aircraft teachers classify the 70 families; `annotation_level: variant` gives the 100 variants
    defaults={"annotation_level": "family"},
)
_register(
    "oxford_pets",
    "OxfordIIITPet",
    _train_test({"split": "trainval"}, {"split": "test"}, trainval={"split": "trainval"}),
    _split_file_opener(lambda: torchvision_lists.oxford_pets_files),
)
_register(
    "eurosat",
    "EuroSAT",
    {"train": _Split({}, (0.0, 0.6)), "val": _Split({}, (0.6, 0.8)), "test": _Split({}, (0.8, 1.0))},
    _folder,
)
