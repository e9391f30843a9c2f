"""What a surrogate build returns and how its images are laid out in shards.

Shared by `study.data.build` and `study.data.mixture`: a mixture builds its components with the builder and lays
out its own shards the same way, so both depend on this module rather than on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.data import shards

ReferenceStats = tuple[list[float], list[float]]


BlockPlan = tuple[int, list[int], list[int] | None]
"""One block of a shard: (position of its first image in stored order, candidate indices, teacher predictions)."""


@dataclass(frozen=True)
class BuildResult:
    root: str
    manifest: shards.Manifest
    shards_written: int
    shards_kept: int
    reused: bool
    selection_reused: bool = False


def stats_record(reference_stats: ReferenceStats | None) -> list[list[float]] | None:
    return (
        None
        if reference_stats is None
        else [[float(v) for v in reference_stats[0]], [float(v) for v in reference_stats[1]]]
    )


def plan_shards(count: int, per_sample: int, per_shard: int) -> list[list[tuple[int, int]]]:
    """Shard -> list of (start, n) image ranges, one per block."""
    blocks = [(s, min(per_sample, count - s)) for s in range(0, count, per_sample)]
    return [blocks[i : i + per_shard] for i in range(0, len(blocks), per_shard)]
