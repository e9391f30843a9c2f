"""The image files and labels of a torchvision file dataset's split, read from the dataset's own split files.

torchvision's Food101, DTD, FGVCAircraft and OxfordIIITPet hold their file list and labels in private attributes;
the only public way to a label is `__getitem__`, which decodes the image too. Selection needs every label before it
decodes anything (a class-balanced `count` then decodes only the chosen files), so these readers parse the same
split files those classes parse, the way they parse them (same folders, same line format, same class order), and
give the labels torchvision's `dataset[i][1]` would. The torchvision class still opens the dataset first: it checks
(and downloads) the data; `study.data.sources.torchvision_datasets`
then checks that the classes and count read here agree with it.

Each reader takes the dataset's root and the keyword arguments the torchvision class was opened with, with the
class's defaults. A split file that is missing or malformed raises `SourceError` naming the file (and the line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from study.data.sources.registry import SourceError


@dataclass(frozen=True)
class SplitFiles:
    """One split of a file dataset: image paths, their labels (indices into `classes`), and the split file read."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]
    split_file: Path


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot read this split file ({err})") from err


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) for each line, as torchvision iterates the file (blank lines included)."""
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        yield number, line.strip()


def food101_files(root: str | Path, split: str = "train") -> SplitFiles:
    """Food-101: `food-101/meta/{split}.json` maps each class to its images' paths (no extension) under `images/`;
    classes are the sorted keys, files follow the JSON's order."""
    base = Path(root) / "food-101"
    meta = base / "meta" / f"{split}.json"
    try:
        listing = json.loads(_read_text(meta))
    except json.JSONDecodeError as err:
        raise SourceError(f"{meta}: not JSON ({err})") from err
    if not isinstance(listing, dict) or not all(
        isinstance(rels, list) and all(isinstance(rel, str) for rel in rels) for rels in listing.values()
    ):
        raise SourceError(f"{meta}: expected a JSON object mapping each class to a list of image paths")
    classes = sorted(listing)
    index = {name: label for label, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name, rels in listing.items():
        labels += [index[name]] * len(rels)
        paths += [(base / "images").joinpath(*f"{rel}.jpg".split("/")) for rel in rels]
    return SplitFiles(paths, labels, classes, meta)


def dtd_files(root: str | Path, split: str = "train", partition: int = 1) -> SplitFiles:
    """DTD: `dtd/dtd/labels/{split}{partition}.txt` lists `class/image.jpg` under `images/`; classes are the sorted
    set of the listed ones (the folder name is torchvision's class name, lower-cased: `dtd`)."""
    data = Path(root) / "dtd" / "dtd"
    listing = data / "labels" / f"{split}{partition}.txt"
    paths: list[Path] = []
    names: list[str] = []
    for number, line in _lines(listing):
        parts = line.split("/")
        if len(parts) != 2 or not all(parts):
            raise SourceError(f"{listing}:{number}: expected 'class/image.jpg', got {line!r}")
        paths.append(data / "images" / parts[0] / parts[1])
        names.append(parts[0])
    classes = sorted(set(names))
    index = {name: label for label, name in enumerate(classes)}
    return SplitFiles(paths, [index[name] for name in names], classes, listing)


_AIRCRAFT_CLASS_FILES = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


def fgvc_aircraft_files(root: str | Path, split: str = "trainval", annotation_level: str = "variant") -> SplitFiles:
    """FGVC-Aircraft: `fgvc-aircraft-2013b/data/images_{level}_{split}.txt` holds `image-id class name` lines for
    `images/{image-id}.jpg`; classes, in order, are the lines of the level's list (`variants.txt`, `families.txt`,
    `manufacturers.txt`)."""
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    if annotation_level not in _AIRCRAFT_CLASS_FILES:
        raise SourceError(f"FGVC-Aircraft annotation_level {annotation_level!r}; known: {list(_AIRCRAFT_CLASS_FILES)}")
    classes = [line for _, line in _lines(data / _AIRCRAFT_CLASS_FILES[annotation_level])]
    index = {name: label for label, name in enumerate(classes)}
    listing = data / f"images_{annotation_level}_{split}.txt"
    paths: list[Path] = []
    labels: list[int] = []
    for number, line in _lines(listing):
        parts = line.split(" ", 1)
        if len(parts) != 2 or parts[1] not in index:
            listed_in = _AIRCRAFT_CLASS_FILES[annotation_level]
            raise SourceError(
                f"{listing}:{number}: expected 'image-id class' with a class in {listed_in}, got {line!r}"
            )
        paths.append(data / "images" / f"{parts[0]}.jpg")
        labels.append(index[parts[1]])
    return SplitFiles(paths, labels, classes, listing)


def oxford_pets_files(root: str | Path, split: str = "trainval") -> SplitFiles:
    """Oxford-IIIT Pet: `oxford-iiit-pet/annotations/{split}.txt` holds `image-id class-id species breed-id` lines
    for `images/{image-id}.jpg`, class ids 1-based; a class's name is its image ids' breed (the id up to its last
    `_`), title-cased word by word (`basset_hound` is `Basset Hound`), in class-id order."""
    base = Path(root) / "oxford-iiit-pet"
    listing = base / "annotations" / f"{split}.txt"
    paths: list[Path] = []
    labels: list[int] = []
    breed_of: dict[int, str] = {}
    for number, line in _lines(listing):
        fields = line.split()
        if len(fields) != 4 or not fields[1].isdigit() or int(fields[1]) < 1:
            raise SourceError(f"{listing}:{number}: expected 'image-id class-id species breed-id', got {line!r}")
        label, breed = int(fields[1]) - 1, fields[0].rsplit("_", 1)[0]
        # torchvision orders the set of (breed, label) pairs by label alone: two breeds under one label would leave
        # the class names in a set's arbitrary order, so that is refused rather than guessed
        if breed_of.setdefault(label, breed) != breed:
            raise SourceError(f"{listing}:{number}: class id {label + 1} is {breed!r} here, {breed_of[label]!r} before")
        paths.append(base / "images" / f"{fields[0]}.jpg")
        labels.append(label)
    classes = [" ".join(word.title() for word in breed_of[label].split("_")) for label in sorted(breed_of)]
    return SplitFiles(paths, labels, classes, listing)
