"""Surrogate shards: the on-storage layout, the manifest, writing one shard, verifying.

Layout: `<root>/<surrogate>/shard-000000.tar ...` plus `manifest.json`. A tar sample is a *block* of
images (uint8 `.npy`, N x H x W x C) with a `.json` of per-image metadata: per-image tar entries are 20-60x slower
to read for small images, since reading is bound by Python tar-header parsing. Tars are written with `mtime=0`,
so the same seed gives byte-identical shards (and identical sha256) on every machine.

Each shard is written independently (webdataset's `TarWriter`, which `ShardWriter` wraps), so shards can be built
in parallel and a killed build keeps every shard it finished: a per-shard record under `_parts/` is written
before the shard takes its final name, and a rerun keeps shards whose record and bytes agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from study import __version__, storage
from study.config import CROSSED_NAME

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ShardError(ValueError):
    """A shard or manifest is missing, corrupt or inconsistent; the message names it."""


# A manifest is read from storage, which anyone with write access to the study's bucket prefix controls: its
# names become storage keys and cache file names, so they are checked before they touch a path (no `/`, no `..`).
SAFE_NAME = CROSSED_NAME  # a card's name, or `<card>@<teacher id>` for a card built per teacher
SHA256_HEX = r"^[0-9a-f]{64}$"
SafeName = Annotated[str, Field(pattern=SAFE_NAME)]
Sha256Hex = Annotated[str, Field(pattern=SHA256_HEX)]


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: SafeName
    count: int
    sha256: Sha256Hex
    bytes: int


class SelectionRecord(BaseModel):
    """How a teacher-filtered surrogate was selected (`BalanceSpec`): what the pool held and what was kept.

    `raw_histogram` counts the teacher's predictions over the scanned candidates, `achieved` over the kept ones;
    `acceptance_rate` is candidates scanned per kept image; `complete` is False when the candidate ceiling came
    before every quota was full (then `achieved` < `quotas` for some class, and `label` says "not balanced").
    """

    model_config = ConfigDict(extra="forbid")
    mode: str
    quotas: list[int]
    candidates_budget: int
    candidates_scanned: int
    kept: int
    raw_histogram: list[int]
    achieved: list[int]
    acceptance_rate: float | None
    complete: bool

    def short_classes(self) -> list[int]:
        """Classes whose quota the scan did not meet (all of them met when `complete`)."""
        return [c for c, (a, q) in enumerate(zip(self.achieved, self.quotas, strict=True)) if a < q]

    def label(self) -> str:
        """What the selection achieved, as the report and the arm's MLflow run name it: the mode when every quota
        is met, else 'not balanced (k of K classes filled)' (for long-tail quotas 'long tail not met (...)')."""
        if self.complete:
            return "balanced" if self.mode == "balanced" else self.mode.replace("_", " ")
        filled = f"{len(self.quotas) - len(self.short_classes())} of {len(self.quotas)} classes filled"
        return f"not balanced ({filled})" if self.mode == "balanced" else f"long tail not met ({filled})"


class ComponentRecord(BaseModel):
    """One component of a mixture surrogate: its weight (normalised), images taken from it, its own size and
    the sha256 of its manifest (which pins its shards' sha256s), so the mixture names exactly what it blended."""

    model_config = ConfigDict(extra="forbid")
    name: SafeName
    weight: float
    count: int
    built: int
    manifest_sha256: Sha256Hex


class WorkRecord(BaseModel):
    """Where and when one piece of a build ran: the Ray nodes that did it (none outside Ray), their hosts, and its
    start and end (unix seconds). Provenance only: never part of what a surrogate is, so never a reason to rebuild."""

    model_config = ConfigDict(extra="forbid")
    nodes: list[str] = []
    hosts: list[str] = []
    started: float
    ended: float


class Manifest(BaseModel):
    """What a surrogate holds and how it was made; enough to verify it and to reproduce it."""

    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT_VERSION
    name: SafeName
    kind: str
    card: dict[str, Any]
    generator_version: str | None = None
    seed: int
    count: int
    image_size: int
    channels: int
    images_per_sample: int
    labelled: bool
    classes: list[str] = []
    class_histogram: list[int] | None = None
    teacher: str | None = None
    reference_stats: list[list[float]] | None = None
    selection: SelectionRecord | None = None
    shards: list[ShardInfo]
    components: list[ComponentRecord] | None = None
    realised: dict[str, float] | None = None
    # per piece ("build", "selection", "shards", "perturbation", "attack"), where it ran when it ran as Ray tasks
    built_on: dict[str, WorkRecord] | None = None
    kd_study_version: str = __version__

    def shard_uris(self, root: str) -> list[str]:
        return [storage.join(root, s.name) for s in self.shards]


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _part_uri(root: str, index: int) -> str:
    return storage.join(root, "_parts", f"{shard_name(index)}.json")


def encode_block(images: np.ndarray, meta: dict[str, Any]) -> dict[str, bytes]:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
    return {"npy": buf.getvalue(), "json": json.dumps(meta, separators=(",", ":")).encode()}


def decode_block(sample: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    images = np.load(io.BytesIO(sample["npy"]), allow_pickle=False)
    return images, json.loads(sample["json"])


def write_shard(
    root: str,
    index: int,
    blocks: Sequence[tuple[np.ndarray, dict[str, Any]]],
    first_block: int,
) -> ShardInfo:
    """Write one shard of blocks under `root`; return its record. Safe to kill at any point."""
    import webdataset as wds  # here, not at the top: webdataset imports torch, and reading a manifest needs neither

    name = shard_name(index)
    with tempfile.TemporaryDirectory(prefix="kd-shard-") as tmp:
        local = Path(tmp) / name
        with open(local, "wb") as fh:
            writer = wds.TarWriter(fh, mtime=0, encoder=False)
            for k, (images, meta) in enumerate(blocks):
                writer.write({"__key__": f"{first_block + k:08d}", **encode_block(images, meta)})
            writer.close()
        data = local.read_bytes()
        info = ShardInfo(
            name=name,
            count=int(sum(len(b[0]) for b in blocks)),
            sha256=hashlib.sha256(data).hexdigest(),
            bytes=len(data),
        )
        storage.write_text(_part_uri(root, index), info.model_dump_json())
        storage.upload_file(local, storage.join(root, name))
    return info


def finished_shard(root: str, index: int, check_bytes: bool = True) -> ShardInfo | None:
    """The record of a shard a previous (maybe killed) build completed, or None if it must be rewritten."""
    part = _part_uri(root, index)
    uri = storage.join(root, shard_name(index))
    if not (storage.exists(part) and storage.exists(uri)):
        return None
    try:
        info = ShardInfo.model_validate_json(storage.read_text(part))
    except ValidationError:
        return None
    if check_bytes and sha256_of(uri) != info.sha256:
        return None
    return info


def sha256_of(uri: str) -> str:
    digest = hashlib.sha256()
    for chunk in storage.iter_chunks(uri):
        digest.update(chunk)
    return digest.hexdigest()


def write_manifest(root: str, manifest: Manifest) -> None:
    # a build that recorded nowhere (a local one) writes the manifest it wrote before `built_on` existed
    exclude = {"built_on"} if manifest.built_on is None else None
    storage.write_text(storage.join(root, MANIFEST), manifest.model_dump_json(indent=2, exclude=exclude))


def read_manifest(root: str) -> Manifest:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise ShardError(f"{uri}: no manifest (build the surrogate first: kd-study data build)")
    try:
        return Manifest.model_validate_json(storage.read_text(uri))
    except ValidationError as err:
        raise ShardError(f"{uri}: invalid manifest: {err}") from None


def forget_build(root: str, manifest: Manifest) -> None:
    """Make a stale surrogate rebuild from scratch: its manifest and per-shard records go (the shard files are
    overwritten by the rebuild), so no shard of the old build counts as finished."""
    storage.remove(storage.join(root, MANIFEST))
    for index in range(len(manifest.shards)):
        storage.remove(_part_uri(root, index))


def check_present(root: str, manifest: Manifest) -> None:
    """Cheap pre-flight check that every shard the manifest lists exists with its recorded size (a stat or one
    HeadObject per shard: S3 shards get the same size check as local ones, so a truncated object is caught
    before a rebuild calls the surrogate reusable)."""
    for info in manifest.shards:
        uri = storage.join(root, info.name)
        if not storage.exists(uri):
            raise ShardError(f"{uri}: shard listed in the manifest is missing")
        if (actual := storage.size(uri)) != info.bytes:
            raise ShardError(f"{uri}: shard has {actual} bytes, manifest says {info.bytes} (truncated?)")


def verify(root: str, manifest: Manifest | None = None) -> Manifest:
    """Full check: every shard's sha256 and image count against the manifest. Raises naming the first bad shard."""
    manifest = manifest or read_manifest(root)
    check_present(root, manifest)
    for info in manifest.shards:
        uri = storage.join(root, info.name)
        if sha256_of(uri) != info.sha256:
            raise ShardError(f"{uri}: sha256 does not match the manifest (corrupt or altered shard)")
    if sum(s.count for s in manifest.shards) != manifest.count:
        raise ShardError(f"{storage.join(root, MANIFEST)}: shard counts do not add up to 'count'")
    return manifest
