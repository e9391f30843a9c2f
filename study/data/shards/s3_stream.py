"""WebDataset over S3: `s3://` shard URLs streamed through `study.storage` (boto3, Range-resumed reads).

webdataset 1.0.2 opens URLs through the scheme table `webdataset.gopen.gopen_schemes`, which has no `s3`
entry; its documented alternative, `pipe:aws s3 cp ... -`, needs the AWS CLI and costs ~1 s per shard to
start (FACTS.md). Registering `storage.open_read` as the `s3` opener gives every shard read botocore's
retries, Range resumption of broken bodies and checksum verification, with no subprocess.
"""

from __future__ import annotations

import importlib
import io
import queue
import threading
from typing import IO, Any

from study import storage


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    if mode != "rb":
        raise ValueError(f"{url}: s3 shards are opened for reading only (mode {mode!r})")
    return ReadAhead(storage.open_read(url))  # type: ignore[return-value]


class ReadAhead(io.RawIOBase):
    """A read-only stream that reads `stream` in `chunk_size` pieces on a thread, at most `depth` chunks ahead.

    The wrapped stream is opened by the caller (so a missing object fails at once, in the caller's thread) and
    closed by the reader thread when it ends, fails or is stopped. An error in the reader (StorageError naming
    the URI, after `storage`'s retries and Range resumptions) is raised by the next `read` past the data
    delivered before it. `close()` stops the thread promptly, also mid-shard.
    """

    def __init__(self, stream: IO[bytes], chunk_size: int = 1 << 20, depth: int = 8) -> None:
        super().__init__()
        self._stream, self._chunk_size = stream, chunk_size
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._chunk, self._offset, self._done = b"", 0, False
        self._thread = threading.Thread(target=self._fill, name="kd-study-s3-read-ahead", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._stream.read(self._chunk_size)
                self._put(data)
                if not data:
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(err)
        finally:
            self._stream.close()

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._offset >= len(self._chunk):
            if self._done:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return 0
            self._chunk, self._offset = item, 0
        n = min(len(buffer), len(self._chunk) - self._offset)
        buffer[:n] = self._chunk[self._offset : self._offset + n]
        self._offset += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._thread.join(timeout=5)
        super().close()


def register_webdataset_s3() -> None:
    """Make `wds.WebDataset(["s3://bucket/x/shard-000000.tar", ...])` stream through `storage.open_read`.

    Idempotent and cheap: call it in the process that iterates the dataset (a forked DataLoader worker
    inherits the registration, a spawned one does not).
    """
    # The attribute `webdataset.gopen` is the function; the module is reached through the import system.
    importlib.import_module("webdataset.gopen").gopen_schemes["s3"] = _gopen_s3
