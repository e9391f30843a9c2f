"""Stream a surrogate's shards into a trial, and adapt any surrogate to the teacher's input.

Every trial reads **all** shards of its surrogate: shards are split across the DataLoader workers of
one trial, never across nodes or trials, so two trials of one arm see the same data. Blocks are unbatched into a
shuffle buffer and re-batched with numpy (no per-image Python work), and the stream repeats for as many epochs as
the image budget needs, each epoch with its own seeded shard order.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from study import storage
from study.data import shards
from study.data.shards import Manifest, ShardError
from study.data.shards.cache import ShardCache

log = logging.getLogger(__name__)


def every_shard(urls: Any) -> Any:
    """Node splitter that keeps all shards: a trial must see its whole surrogate whatever RANK says."""
    return urls


def iter_blocks(
    urls: list[str], expected: dict[str, int] | None = None, local: Callable[[str], str] | None = None
) -> Iterator[tuple[np.ndarray, dict]]:
    """Decoded (images, meta) blocks of the given shards in order; a bad shard raises ShardError naming it.

    One pipeline per shard, so an error is pinned on the shard that raised it: a single pipeline over all URLs
    only says which shard its last *good* sample came from, and would blame the previous shard for a missing one.
    `local(url)` may give a node-local copy to read instead (the shard cache); errors still name `url`.
    """
    if any(storage.is_s3(u) for u in urls):
        from study.data.shards.s3_stream import register_webdataset_s3

        register_webdataset_s3()
    for url in urls:
        seen = 0
        try:
            source = local(url) if local is not None else url
            pipeline = wds.WebDataset(
                [source], shardshuffle=False, nodesplitter=every_shard, workersplitter=None, empty_check=False
            )
            for sample in pipeline:
                images, meta = shards.decode_block(sample)
                seen += len(images)
                yield images, meta
        except ShardError:
            raise
        except Exception as err:
            raise ShardError(f"{url}: cannot read shard: {type(err).__name__}: {err}") from err
        if expected is not None and seen != expected.get(url, 0):
            raise ShardError(f"{url}: read {seen} images, manifest says {expected.get(url, 0)} (truncated or corrupt)")


class ShardStream(IterableDataset):
    """Endless shuffled batches of uint8 images (B, H, W, C) from one surrogate, `limit` first images only."""

    def __init__(
        self,
        root: str,
        manifest: Manifest,
        batch_size: int,
        seed: int,
        limit: int | None = None,
        shuffle_buffer: int = 4096,
        cache: ShardCache | None = None,
    ) -> None:
        self.root, self.manifest, self.batch_size, self.seed = root, manifest, batch_size, seed
        self.cache = cache
        self.infos = dict(zip(manifest.shard_uris(root), manifest.shards, strict=True))
        self.limit = min(limit or manifest.count, manifest.count)
        self.shuffle_buffer = max(shuffle_buffer, batch_size)
        # only the shards that hold the first `limit` images
        urls, total = [], 0
        for info, url in zip(manifest.shards, manifest.shard_uris(root), strict=True):
            if total >= self.limit:
                break
            urls.append(url)
            total += info.count
        self.urls = urls
        self.expected = {u: s.count for u, s in zip(urls, manifest.shards, strict=False)}
        self.epoch = 0
        self._worker_s3_bytes: Any = None  # see `share_s3_tally`

    def share_s3_tally(self, workers: int) -> None:
        """Give each of `workers` DataLoader worker processes a slot of shared memory for its S3 bytes.

        A worker process streams shards (and fills the shard cache) with its own copy of `storage`'s counters,
        which the trial's process never sees; each worker writes its running total into its own slot (one writer
        per slot, no lock a killed worker could leave held). A RawArray reaches the workers under fork (inherited)
        and spawn (pickled when the DataLoader starts them) alike.
        """
        self._worker_s3_bytes = multiprocessing.RawArray("q", workers) if workers > 0 else None

    def worker_s3_bytes(self) -> int:
        """Bytes the DataLoader worker processes have streamed from S3 so far (0 without workers: then the
        reads happen in the caller's process, where `storage.s3_counters()` counts them)."""
        return sum(self._worker_s3_bytes) if self._worker_s3_bytes is not None else 0

    def _my_urls(self, epoch: int) -> list[str]:
        """This worker's shards for `epoch`. The shard order is drawn from (seed, epoch) alone, the same in
        every worker, so the workers' slices partition the shards; a per-worker order would overlap them."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.urls))
        urls = [self.urls[i] for i in order]
        info = get_worker_info()
        if info is None:
            return urls
        return urls[info.id :: info.num_workers]

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        tally = self._worker_s3_bytes if info is not None else None
        start = storage.s3_counters()["bytes_read"]
        for batch in self._batches(worker):
            if tally is not None:
                tally[worker] = storage.s3_counters()["bytes_read"] - start
            yield batch

    def _batches(self, worker: int) -> Iterator[torch.Tensor]:
        epoch = self.epoch
        # one filler across epochs: an epoch's last partial batch is completed by the next epoch's images, so a
        # surrogate smaller than one batch wraps around (its batches repeat images) instead of never filling one
        batches = _BatchFiller(self.batch_size)
        while True:
            rng = np.random.default_rng([self.seed, epoch, worker])
            urls = self._my_urls(epoch)
            if not urls:
                return
            yield from self._epoch(urls, rng, batches)
            epoch += 1

    def _epoch(self, urls: list[str], rng: np.random.Generator, batches: _BatchFiller) -> Iterator[torch.Tensor]:
        """One pass over `urls` as shuffled batches, through a fixed random-replacement buffer.

        The buffer fills with the first `shuffle_buffer` images; then each arriving block of m images evicts m
        distinct random buffered images (in random order) into the batches and takes their slots, and at the end
        the rest leaves in a random permutation (the shuffle buffer of TensorFlow's `Dataset.shuffle` and
        webdataset's `shuffle`, done a block at a time). Every image is copied twice, into the buffer and into its
        batch: re-concatenating and permuting a whole pool per block cost ~30 copies per image. The last partial
        batch of an epoch is filled from the next epoch, which reshuffles everything.
        """
        capacity = self.shuffle_buffer
        buffer: np.ndarray | None = None
        filled = 0
        local = self._cached if self.cache is not None else None
        for images, meta in iter_blocks(urls, {u: self.expected[u] for u in urls}, local):
            start = int(meta["start"])
            if start >= self.limit:
                continue
            images = images[: self.limit - start]
            if buffer is None:
                buffer = np.empty((capacity, *images.shape[1:]), dtype=images.dtype)
            room = min(len(images), capacity - filled)
            buffer[filled : filled + room] = images[:room]
            filled += room
            rest = images[room:]
            if len(rest):
                slots = rng.choice(capacity, size=len(rest), replace=False)
                yield from batches.take(buffer, slots)
                buffer[slots] = rest
        if buffer is not None and filled:
            yield from batches.take(buffer, rng.permutation(filled))

    def _cached(self, url: str) -> str:
        assert self.cache is not None
        info = self.infos[url]
        return self.cache.local_path(url, info.sha256, info.bytes)


class _BatchFiller:
    """Gathers images into fresh (batch_size, ...) arrays, yielding each as a tensor when it is full."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.batch: np.ndarray | None = None
        self.pos = 0

    def take(self, source: np.ndarray, index: np.ndarray) -> Iterator[torch.Tensor]:
        """Copy `source[index]` into batches, one copy per image (the batch never aliases `source`)."""
        done = 0
        while done < len(index):
            if self.batch is None:
                self.batch = np.empty((self.batch_size, *source.shape[1:]), dtype=source.dtype)
                self.pos = 0
            n = min(len(index) - done, self.batch_size - self.pos)
            np.take(source, index[done : done + n], axis=0, out=self.batch[self.pos : self.pos + n])
            self.pos += n
            done += n
            if self.pos == self.batch_size:
                yield torch.from_numpy(self.batch)
                self.batch = None


def stream_loader(stream: ShardStream, workers: int, pin_memory: bool = False) -> DataLoader:
    """The trial's DataLoader over `stream`; its workers' S3 reads are tallied in `stream.worker_s3_bytes()`."""
    if workers > len(stream.urls):
        workers = len(stream.urls)
    stream.share_s3_tally(workers)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def read_all(
    root: str, manifest: Manifest, limit: int | None = None, field: str = "labels"
) -> tuple[np.ndarray, np.ndarray | None]:
    """The first `limit` images in stored order, and the per-image `field` of the block json (`labels`,
    `teacher_predictions`, ...) where every block read holds it; for teacher-side measurements and previews."""
    limit = min(limit or manifest.count, manifest.count)
    images, values = [], []
    urls = manifest.shard_uris(root)
    expected = {u: s.count for u, s in zip(urls, manifest.shards, strict=True)}
    n = 0
    for block, meta in iter_blocks(urls, expected):
        images.append(block)
        values.extend(meta.get(field, []))
        n += len(block)
        if n >= limit:
            break
    out = np.concatenate(images)[:limit]
    return out, (np.asarray(values[:limit], dtype=np.int64) if len(values) >= len(out) else None)


def to_teacher_input(batch: torch.Tensor, channels: int, image_size: int) -> torch.Tensor:
    """uint8 (B, H, W, C) -> uint8 (B, channels, image_size, image_size) for the teacher.

    Grey teachers get ITU-R BT.601 luma of RGB surrogates; RGB teachers get grey images repeated.
    """
    x = batch.permute(0, 3, 1, 2)
    c = x.shape[1]
    if c != channels:
        if channels == 1 and c == 3:
            w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        elif channels == 3 and c == 1:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ShardError(f"cannot adapt {c}-channel images to a {channels}-channel teacher")
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.nn.functional.interpolate(
            x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


def read_range(root: str, manifest: Manifest, start: int, stop: int) -> np.ndarray:
    """Images [start, stop) in stored order, reading only the shards that hold them (a trial's held-out slice)."""
    urls, first = [], 0
    for info, url in zip(manifest.shards, manifest.shard_uris(root), strict=True):
        if first < stop and first + info.count > start:
            urls.append((url, info.count))
        first += info.count
    parts = []
    for block, meta in iter_blocks([u for u, _ in urls], dict(urls)):
        lo = int(meta["start"])
        parts.append(block[max(start - lo, 0) : max(stop - lo, 0)])
    out = np.concatenate([p for p in parts if len(p)]) if parts else np.empty((0,))
    if len(out) != stop - start:
        raise ShardError(f"{root}: images {start}-{stop} wanted, {len(out)} found (manifest count {manifest.count})")
    return out
