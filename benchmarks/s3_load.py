"""Many trials reading one surrogate from S3 at once, against the same readers on a local folder.

Window: each reader from the common start barrier to its last batch, stream start-up inside on every setup alike.
Baseline: the same K readers over the shards in a local folder, same run.

K concurrent trial readers (K processes, each a trial's `ShardStream` over the whole surrogate for `--epochs`
epochs, as every trial reads all of its surrogate) read from a real S3 server on loopback (moto) through the
fault proxy (tests/fault_proxy.py) with a per-connection bandwidth cap, added latency per request and an
occasional 503 SlowDown, which botocore retries. Three setups per K, all measured in this run:

* `local`: the shards in a local folder (the baseline);
* `s3`: straight from S3 through the proxy (every epoch of every reader downloads the whole surrogate);
* `cached`: from S3 through the node-local shard cache (`study.data.shards.cache`; a fresh cache per K): the
  first reader to need a shard downloads it, every other read on the node is local.

Lines: `s3_load_kK: ratio=X` with X = per-reader img/s from S3 / per-reader img/s locally, and
`s3_load_cached_kK: ratio=Y` the same through the cache, then raw figures: img/s per reader, S3 GET requests,
botocore retries and SlowDowns injected. On 2 cores K readers share the CPU, so per-reader local rates fall with K
too; the ratio is what S3 costs on top of that.

Run: `python benchmarks/s3_load.py [--readers 1,2,4] [--images 16384] [--epochs 2] [--bandwidth-mbs 20]
[--latency-ms 20] [--slowdown 0.02]`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study import storage
from study.config import CardSpec
from study.data import shards
from study.data.build import build_surrogate
from tests.fault_proxy import FaultProxy, FaultRates
from tests.s3_servers import run_moto

BATCH = 256


def read_surrogate(
    index: int, root: str, epochs: int, env: dict[str, str], cache_dir: str | None, start, results
) -> None:
    """One trial's reader: whole surrogate, `epochs` times, shuffled batches; reports img/s and S3 counters."""
    os.environ.update(env)
    from study.data.shards.cache import ShardCache, ShardCacheSpec, cache_counters
    from study.data.shards.reader import ShardStream

    manifest = shards.read_manifest(root)
    cache = ShardCache(ShardCacheSpec(cache_dir, max_bytes=1 << 40)) if cache_dir else None
    stream = ShardStream(root, manifest, BATCH, seed=index, cache=cache)
    batches = epochs * manifest.count // BATCH
    before = storage.s3_counters()
    start.wait()  # every reader starts together, after its imports
    t0 = time.perf_counter()
    seen = 0
    for _, batch in zip(range(batches), iter(stream), strict=False):
        seen += len(batch)
    elapsed = time.perf_counter() - t0
    after = storage.s3_counters()
    results.put(
        {
            "rate": seen / elapsed,
            "retries": after["retries"] - before["retries"],
            "resumes": after["range_resumes"] - before["range_resumes"],
            **{f"cache_{k}": v for k, v in cache_counters().items()},
        }
    )


def run_readers(k: int, root: str, epochs: int, env: dict[str, str], cache_dir: str | None = None) -> list[dict]:
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(k), ctx.Queue()
    procs = [
        ctx.Process(target=read_surrogate, args=(i, root, epochs, env, cache_dir, start, results)) for i in range(k)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=900) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a reader exited with {p.exitcode}")
    return out


def mean(rows: list[dict], key: str) -> float:
    return sum(r.get(key, 0) for r in rows) / len(rows)


def total(rows: list[dict], key: str) -> int:
    return int(sum(r.get(key, 0) for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", default="1,2,4")
    parser.add_argument("--images", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bandwidth-mbs", type=float, default=20.0, help="per-connection cap, MB/s")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--slowdown", type=float, default=0.02, help="share of requests answered 503 SlowDown")
    args = parser.parse_args()
    counts = [int(k) for k in args.readers.split(",")]
    card = CardSpec(name="bench", kind="generated", generator="uniform_noise", count=args.images, seed=0)

    with tempfile.TemporaryDirectory(prefix="kd-s3-load-") as tmp:
        local = build_surrogate(card, str(Path(tmp, "local"))).root
        manifest = shards.read_manifest(local)
        size_mb = sum(s.bytes for s in manifest.shards) / 1e6
        with run_moto() as server:
            os.environ.update(server.env())
            storage.s3_client.cache_clear()
            root = f"s3://{server.make_bucket()}/bench"
            for info in manifest.shards:
                storage.upload_file(Path(local, info.name), storage.join(root, info.name))
            shards.write_manifest(root, manifest)
            rates = FaultRates(
                slow_down=args.slowdown, latency_s=args.latency_ms / 1000, bandwidth_bps=args.bandwidth_mbs * 1e6
            )
            port = int(server.endpoint_url.rsplit(":", 1)[1])
            with FaultProxy(("127.0.0.1", port), rates, seed=0) as proxy:
                env = {**server.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
                for k in counts:
                    local_rows = run_readers(k, local, args.epochs, env)
                    before = dict(proxy.counts)
                    s3_rows = run_readers(k, root, args.epochs, env)
                    s3_gets, s3_slow = (proxy.counts[n] - before.get(n, 0) for n in ("requests", "slow_down"))
                    before = dict(proxy.counts)
                    cache_dir = str(Path(tmp, f"cache-{k}"))
                    cached_rows = run_readers(k, root, args.epochs, env, cache_dir)
                    c_gets, c_slow = (proxy.counts[n] - before.get(n, 0) for n in ("requests", "slow_down"))
                    base = mean(local_rows, "rate")
                    common = (
                        f"readers={k} epochs={args.epochs} surrogate={manifest.count} img ({size_mb:.0f} MB, "
                        f"{len(manifest.shards)} shards) cap={args.bandwidth_mbs:.0f} MB/s/conn "
                        f"latency={args.latency_ms:.0f} ms slowdown={args.slowdown}"
                    )
                    print(
                        f"s3_load_k{k}: ratio={mean(s3_rows, 'rate') / base:.2f} "
                        f"s3={mean(s3_rows, 'rate'):.0f} img/s/reader local={base:.0f} img/s/reader "
                        f"requests={s3_gets} slowdowns={s3_slow} retries={total(s3_rows, 'retries')} "
                        f"range_resumes={total(s3_rows, 'resumes')} {common}",
                        flush=True,
                    )
                    print(
                        f"s3_load_cached_k{k}: ratio={mean(cached_rows, 'rate') / base:.2f} "
                        f"cached={mean(cached_rows, 'rate'):.0f} img/s/reader local={base:.0f} img/s/reader "
                        f"requests={c_gets} slowdowns={c_slow} retries={total(cached_rows, 'retries')} "
                        f"cache_fills={total(cached_rows, 'cache_fills')} "
                        f"cache_hits={total(cached_rows, 'cache_hits')} "
                        f"{common}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
