"""Where each piece of a build ran (`Manifest.built_on`), when it ran as Ray tasks on a cluster.

A study on a cluster builds its surrogates as Ray tasks (`study.orchestrate.presweep`); a build that goes wrong on
one node, or runs slowly there, is traced back through these records: per piece (the whole build, its teacher
scan, its shards, an offline attack), the nodes that did it and when. Only public Ray APIs are used
(`ray.get_runtime_context().get_node_id()`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from study.data.shards import WorkRecord


def this_node() -> tuple[str | None, str]:
    """(Ray node id, host name) of this process; the node id is None outside a Ray runtime."""
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return node, socket.gethostname()


def record_since(started: float) -> WorkRecord:
    """The record of work that ran in this process from `started` (time.time()) until now."""
    node, host = this_node()
    return WorkRecord(nodes=[node] if node else [], hosts=[host], started=started, ended=time.time())


def merged(records: list[WorkRecord]) -> WorkRecord:
    """One record of pieces done by several tasks: every node and host that took part, first start to last end."""
    return WorkRecord(
        nodes=sorted({n for r in records for n in r.nodes}),
        hosts=sorted({h for r in records for h in r.hosts}),
        started=min(r.started for r in records),
        ended=max(r.ended for r in records),
    )


@contextlib.contextmanager
def recording(pieces: dict[str, WorkRecord] | None, piece: str) -> Iterator[None]:
    """Record `piece` into `pieces` when it completes; with `pieces` None (builds outside a cluster) nothing."""
    started = time.time()
    yield
    if pieces is not None:
        pieces[piece] = record_since(started)
