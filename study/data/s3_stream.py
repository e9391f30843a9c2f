"""WebDataset over S3: `s3://` shard URLs streamed through `study.storage` (boto3, Range-resumed reads).

webdataset 1.0.2 opens URLs through the scheme table `webdataset.gopen.gopen_schemes`, which has no `s3`
entry; its documented alternative, `pipe:aws s3 cp ... -`, needs the AWS CLI and costs ~1 s per shard to
start (FACTS.md). Registering `storage.open_read` as the `s3` opener gives every shard read botocore's
retries, Range resumption of broken bodies and checksum verification, with no subprocess.
"""

from __future__ import annotations

import importlib
from typing import IO, Any

from study import storage


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    if mode != "rb":
        raise ValueError(f"{url}: s3 shards are opened for reading only (mode {mode!r})")
    return storage.open_read(url)


def register_webdataset_s3() -> None:
    """Make `wds.WebDataset(["s3://bucket/x/shard-000000.tar", ...])` stream through `storage.open_read`.

    Idempotent and cheap: call it in the process that iterates the dataset (a forked DataLoader worker
    inherits the registration, a spawned one does not).
    """
    # The attribute `webdataset.gopen` is the function; the module is reached through the import system.
    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = _gopen_s3
