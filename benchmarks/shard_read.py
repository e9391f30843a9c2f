"""Decoded 32x32 uint8 images/s that a trial's reader delivers, against one GPU's appetite.

The trial reads through `ShardStream` in a `stream_loader` DataLoader (at most 2 worker processes here) from
(a) a local folder and (b) moto on loopback behind the fault proxy adding 20 ms per request (no faults). The
ratio is images/s / 20,000: what one modern GPU consumes in the resnet8x4 <- resnet32x4 KD step at 32 px.
Baselines measured in the same run, single process: `np.load` of the blocks already in memory (the decode
ceiling) and stdlib `tarfile` + `np.load` over the local shards (the cheapest way to read them).

`shard_read_vs_step` compares the slower of the two readers with what the bare KD step (`kd_step.bare_loop`)
consumes on this machine, measured in the same run.

Each figure is the median of `--repeats` measurements (the machine is shared; single runs swing ~2x).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import storage
from study.data import shards
from study.data.shards.reader import ShardStream, stream_loader
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import run_moto

GPU_APPETITE = 20_000.0  # img/s of one modern GPU in the resnet8x4 <- resnet32x4 KD step
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


def trial_reader(root: str, manifest: shards.Manifest, epochs: int, workers: int, batch: int) -> tuple[float, int]:
    """Steady-state images/s of the trial's reader over `epochs` epochs (worker start-up excluded: the clock
    starts at the first batch) and the images counted."""
    stream = ShardStream(root, manifest, batch_size=batch, seed=0)
    loader = stream_loader(stream, workers=workers)
    want = epochs * manifest.count
    it = iter(loader)
    seen = len(next(it))
    start = time.perf_counter()
    counted = 0
    while seen < want:
        n = len(next(it))
        seen += n
        counted += n
    elapsed = time.perf_counter() - start
    del it, loader
    return counted / elapsed, counted


def np_load_baseline(root: str, manifest: shards.Manifest) -> float:
    """The decode ceiling: `np.load` of every block's bytes, already in memory."""
    blobs = []
    for name in (s.name for s in manifest.shards):
        with tarfile.open(Path(root, name)) as tar:
            blobs += [tar.extractfile(m).read() for m in tar if m.name.endswith(".npy")]
    start = time.perf_counter()
    n = sum(len(np.load(io.BytesIO(b), allow_pickle=False)) for b in blobs)
    return n / (time.perf_counter() - start)


def tarfile_baseline(root: str, manifest: shards.Manifest) -> float:
    """stdlib tarfile streaming + np.load over the local shards, one process."""
    start = time.perf_counter()
    n = 0
    for name in (s.name for s in manifest.shards):
        with tarfile.open(Path(root, name), mode="r|") as tar:
            for m in tar:
                if m.name.endswith(".npy"):
                    n += len(np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False))
    return n / (time.perf_counter() - start)


def median(measure: Callable[[], float], repeats: int) -> float:
    return float(np.median([measure() for _ in range(max(1, repeats))]))


def median_reader(root: str, manifest: shards.Manifest, args: argparse.Namespace, workers: int) -> tuple[float, int]:
    """Median images/s of `trial_reader` (`workers=0`: in the calling process, no DataLoader IPC)."""
    runs = [trial_reader(root, manifest, args.epochs, workers, args.batch) for _ in range(max(1, args.repeats))]
    return float(np.median([r for r, _ in runs])), runs[0][1]


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
        tar_rate = median(lambda: tarfile_baseline(local, manifest), args.repeats)
        rate, n = median_reader(local, manifest, args, workers)
        local_rate = rate
        in_process, _ = median_reader(local, manifest, args, 0)
        print(
            f"shard_read_local: ratio={rate / GPU_APPETITE:.2f} imgs={n} reader={rate:.0f} img/s "
            f"np_load={np_rate:.0f} img/s tarfile={tar_rate:.0f} img/s in_process={in_process:.0f} img/s "
            f"workers={workers} block={args.per_sample} shards={len(manifest.shards)}"
        )

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
                rate, n = median_reader(root, manifest, args, workers)
                requests = (proxy.counts["requests"] - before) / max(1, args.repeats)
                in_process, _ = median_reader(root, manifest, args, 0)
                print(
                    f"shard_read_s3: ratio={rate / GPU_APPETITE:.2f} imgs={n} reader={rate:.0f} img/s "
                    f"np_load={np_rate:.0f} img/s tarfile={tar_rate:.0f} img/s "
                    f"in_process={in_process:.0f} img/s latency={args.latency_ms:.0f} ms requests/run={requests:.0f}"
                )
                s3_rate = rate
        import torch
        from kd_step import bare_loop

        from study.device import pick_device

        torch.set_num_threads(2)
        step = bare_loop("resnet32x4", "resnet8x4", batch=64, steps=8, warmup=2, size=32, device=pick_device())
        print(
            f"shard_read_vs_step: ratio={min(local_rate, s3_rate) / step:.1f} local={local_rate:.0f} img/s "
            f"s3={s3_rate:.0f} img/s kd_step_bare={step:.1f} img/s (the slower reader against what the bare KD "
            "step, resnet8x4 <- resnet32x4 at 32 px, batch 64, 2 threads, consumes here, measured in this run)"
        )


if __name__ == "__main__":
    main()
