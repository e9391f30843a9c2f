"""Decoded 32x32 uint8 images/s that a trial's reader delivers, against raw reads of the same shards, same run.

Window: from creating the DataLoader to the last image of `--epochs` epochs, start-up and shuffle-buffer fill inside.
Baseline: stdlib `tarfile` + `np.load` over the same shards, in a DataLoader with the same workers (and in-process).

The trial reads through `ShardStream` in a `stream_loader` DataLoader (at most 2 worker processes here) from
(a) a local folder and (b) moto on loopback behind the fault proxy adding 20 ms per request (no faults). The
baseline reads the same shard URLs through `storage.open_read` (so S3 goes through the same proxy), streams each
tar with `tarfile` and `np.load`s its blocks, the shards split across the same number of DataLoader workers, with no
shuffle buffer and no re-batching: what the reader's shuffling and batching cost over the cheapest read. Both clocks
include worker start-up and every image delivered: the reader's shuffle-buffer fill is not left out of its count.
The ratio is reader / raw with workers; the in-process pair (`workers=0` on both sides) is printed raw, with
`np_load`: `np.load` of every block already in memory (the decode ceiling).

`shard_read_vs_step` compares the slower of the two readers with what the bare KD step (`kd_step.bare_loop`)
consumes on this machine, measured in the same run. `shard_read_anchor` is not a ratio: the readers against a
fixed 20,000 img/s (one GPU's appetite in the resnet8x4 <- resnet32x4 KD step), a labelled anchor only.

Each figure is the median of `--repeats` measurements, reader and raw alternating which goes first (the machine
is shared; single runs swing ~2x).
Run: `python benchmarks/shard_read.py [--images 32768] [--epochs 2] [--workers 2] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import storage
from study.data import shards
from study.data.shards.reader import ShardStream, stream_loader
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import run_moto

ANCHOR = 20_000.0  # img/s of one modern GPU in the resnet8x4 <- resnet32x4 KD step: a fixed figure, not measured
SIZE = 32


def write_surrogate(root: str, images: int, per_sample: int, per_shard: int) -> shards.Manifest:
    """Random 32x32x3 blocks written through the project's own shard writer (contents do not matter here)."""
    rng = np.random.default_rng(0)
    infos, block = [], 0
    for index, first in enumerate(range(0, images, per_sample * per_shard)):
        n = min(per_sample * per_shard, images - first)
        blocks = []
        for start in range(first, first + n, per_sample):
            k = min(per_sample, first + n - start)
            blocks.append((rng.integers(0, 256, (k, SIZE, SIZE, 3), dtype=np.uint8), {"start": start}))
        infos.append(shards.write_shard(root, index, blocks, block))
        block += len(blocks)
    manifest = shards.Manifest(
        name="bench",
        kind="generated",
        card={},
        seed=0,
        count=images,
        image_size=SIZE,
        channels=3,
        images_per_sample=per_sample,
        labelled=False,
        shards=infos,
    )
    shards.write_manifest(root, manifest)
    return manifest


def trial_reader(root: str, manifest: shards.Manifest, epochs: int, workers: int, batch: int) -> float:
    """Images/s of the trial's reader over `epochs` epochs: the clock starts before the DataLoader exists, so
    worker start-up and the shuffle-buffer fill are inside it, and every image delivered counts."""
    want = epochs * manifest.count
    start = time.perf_counter()
    stream = ShardStream(root, manifest, batch_size=batch, seed=0)
    loader = stream_loader(stream, workers=workers)
    seen = 0
    it = iter(loader)
    while seen < want:
        seen += len(next(it))
    elapsed = time.perf_counter() - start
    del it, loader
    return seen / elapsed


class RawShards(IterableDataset):
    """Each shard streamed with stdlib `tarfile`, its `.npy` blocks `np.load`ed and yielded whole, `epochs`
    times; shards split across DataLoader workers as the reader splits them (shard i to worker i mod n)."""

    def __init__(self, urls: list[str], epochs: int) -> None:
        self.urls, self.epochs = urls, epochs

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        wid, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for _ in range(self.epochs):
            for url in self.urls[wid::count]:
                with storage.open_read(url) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
                    for member in tar:
                        if member.name.endswith(".npy"):
                            block = np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
                            yield torch.from_numpy(block)


def raw_reader(root: str, manifest: shards.Manifest, epochs: int, workers: int) -> float:
    """Images/s of `RawShards` in a DataLoader shaped like `stream_loader` (same workers, prefetch, persistence),
    clocked like `trial_reader`: start-up inside, every image counted."""
    urls = manifest.shard_uris(root)
    workers = min(workers, len(urls))
    start = time.perf_counter()
    loader = DataLoader(
        RawShards(urls, epochs),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    seen = sum(len(block) for block in loader)
    return seen / (time.perf_counter() - start)


def np_load_baseline(root: str, manifest: shards.Manifest) -> float:
    """The decode ceiling: `np.load` of every block's bytes, already in memory."""
    blobs = []
    for name in (s.name for s in manifest.shards):
        with tarfile.open(Path(root, name)) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".npy")]
    start = time.perf_counter()
    n = sum(len(np.load(io.BytesIO(b), allow_pickle=False)) for b in blobs)
    return n / (time.perf_counter() - start)


def median(measure: Callable[[], float], repeats: int) -> float:
    return float(np.median([measure() for _ in range(max(1, repeats))]))


def reader_vs_raw(root: str, manifest: shards.Manifest, args: argparse.Namespace, workers: int) -> dict[str, float]:
    """Median images/s of the reader and of the raw baseline over `--repeats` rounds, the side that goes first
    alternating per round (`workers=0`: both in the calling process, no DataLoader IPC)."""
    sides: dict[str, Callable[[], float]] = {
        "reader": lambda: trial_reader(root, manifest, args.epochs, workers, args.batch),
        "raw": lambda: raw_reader(root, manifest, args.epochs, workers),
    }
    runs: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(max(1, args.repeats)):
        for name in sides if round_ % 2 == 0 else reversed(sides):
            runs[name].append(sides[name]())
    return {name: float(np.median(rates)) for name, rates in runs.items()}


def figure_line(name: str, pair: dict[str, float], alone: dict[str, float], extra: str) -> str:
    return (
        f"{name}: ratio={pair['reader'] / pair['raw']:.2f} reader={pair['reader']:.0f} img/s "
        f"raw={pair['raw']:.0f} img/s in_process_reader={alone['reader']:.0f} img/s "
        f"in_process_raw={alone['raw']:.0f} img/s {extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32768)
    parser.add_argument("--per-sample", type=int, default=256, help="images per block (a card's default)")
    parser.add_argument("--per-shard", type=int, default=16, help="blocks per shard (a card's default)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workers = min(args.workers, 2)

    with tempfile.TemporaryDirectory(prefix="kd-shard-read-") as tmp:
        local = str(Path(tmp, "bench"))
        manifest = write_surrogate(local, args.images, args.per_sample, args.per_shard)
        np_rate = median(lambda: np_load_baseline(local, manifest), args.repeats)
        common = (
            f"workers={workers} (both) images={args.epochs}x{args.images} block={args.per_sample} "
            f"shards={len(manifest.shards)} median_of={args.repeats}"
        )
        local_pair = reader_vs_raw(local, manifest, args, workers)
        local_alone = reader_vs_raw(local, manifest, args, 0)
        print(figure_line("shard_read_local", local_pair, local_alone, f"np_load={np_rate:.0f} img/s {common}"))

        with run_moto() as server:
            bucket = server.make_bucket()
            port = int(server.endpoint_url.rsplit(":", 1)[1])
            with FaultProxy(("127.0.0.1", port), FaultRates(latency_s=args.latency_ms / 1000)) as proxy:
                os.environ.update({**server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url})
                storage.s3_client.cache_clear()
                root = f"s3://{bucket}/bench"
                for info in manifest.shards:
                    storage.upload_file(Path(local, info.name), storage.join(root, info.name))
                shards.write_manifest(root, manifest)
                before = proxy.counts["requests"]
                s3_pair = reader_vs_raw(root, manifest, args, workers)
                requests = (proxy.counts["requests"] - before) / max(1, args.repeats) / 2
                s3_alone = reader_vs_raw(root, manifest, args, 0)
                print(
                    figure_line(
                        "shard_read_s3",
                        s3_pair,
                        s3_alone,
                        f"latency={args.latency_ms:.0f} ms requests/run={requests:.0f} {common}",
                    )
                )
        from kd_step import bare_loop

        from study.device import pick_device

        torch.set_num_threads(2)
        step = bare_loop("resnet32x4", "resnet8x4", batch=64, steps=8, warmup=2, size=32, device=pick_device())
        local_rate, s3_rate = local_pair["reader"], s3_pair["reader"]
        print(
            f"shard_read_vs_step: ratio={min(local_rate, s3_rate) / step:.1f} local={local_rate:.0f} img/s "
            f"s3={s3_rate:.0f} img/s kd_step_bare={step:.1f} img/s (the slower reader against what the bare KD "
            "step, resnet8x4 <- resnet32x4 at 32 px, batch 64, 2 threads, consumes here, measured in this run)"
        )
        print(
            f"shard_read_anchor: local_of_anchor={local_rate / ANCHOR:.2f} s3_of_anchor={s3_rate / ANCHOR:.2f} "
            f"anchor={ANCHOR:.0f} img/s (a fixed figure, one GPU's appetite; not a baseline, not measured here)"
        )


if __name__ == "__main__":
    main()
