"""A node-local cache of S3 shards, shared by the trials of a node.

Every trial reads its whole surrogate every epoch (`study.data.shards.reader`), so without a cache a cluster pays
trials x epochs x surrogate size of S3 egress, and every epoch waits on the network. With it, the first trial on a
node to need a shard downloads it once; every later read on that node (other epochs, other trials, other seeds) is
a local file read.

- **Shared and atomic**: one file per shard named by its sha256 (so two surrogates never collide and a rebuilt
  shard is a new entry). The first reader takes an exclusive `flock` on the entry's lock file, downloads to a
  temporary file in the cache folder, checks the sha256 and size against the manifest, and renames it into place;
  readers that arrive meanwhile wait on the lock and then read the finished file. A killed filler leaves only a
  temporary file, removed by the next eviction.
- **Verified**: the download is hashed as it is written; a process hashes an existing entry again the first time
  it uses it (a damaged local disk is caught once per process, not trusted forever) and refetches on a mismatch.
- **Bounded**: after each fill, least recently used entries (by mtime, touched on every use) are deleted until the
  folder holds at most `max_bytes`. Entries used in the last `grace_s` seconds are never evicted, since another
  trial may be about to open them; the bound is therefore soft by at most the working set of the last `grace_s`.

Where: `StorageSpec.cache` / `cache_max_gb` in the spec, overridden per node by `KD_STUDY_SHARD_CACHE` (folder)
and `KD_STUDY_SHARD_CACHE_GB`; the default folder is `<system temp>/kd-study-shard-cache`. Local shards are read
in place (a cache would only copy them).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from study import storage
from study.data.shards import SHA256_HEX, ShardError

log = logging.getLogger(__name__)

ENV_FOLDER, ENV_GB = "KD_STUDY_SHARD_CACHE", "KD_STUDY_SHARD_CACHE_GB"
SUFFIX, LOCK_SUFFIX, TMP_PREFIX = ".tar", ".lock", ".fill-"


@dataclass(frozen=True)
class ShardCacheSpec:
    """Where a node's cache lives and how large it may grow; plain data, so it pickles to Ray workers."""

    folder: str
    max_bytes: int
    grace_s: float = 60.0

    @classmethod
    def from_settings(cls, folder: str | None, max_gb: float) -> ShardCacheSpec | None:
        """The cache for these spec settings after the node's environment overrides; None when turned off."""
        folder = os.environ.get(ENV_FOLDER) or folder or str(Path(tempfile.gettempdir()) / "kd-study-shard-cache")
        raw_gb = os.environ.get(ENV_GB)
        try:
            gb = float(raw_gb) if raw_gb else max_gb
        except ValueError:
            raise storage.StorageError(f"environment variable {ENV_GB}={raw_gb!r}: expected a number") from None
        if gb <= 0:
            return None
        return cls(folder=folder, max_bytes=int(gb * (1 << 30)))

    def open(self) -> ShardCache:
        """The cache on the node this runs on: the spec is made on the driver, but a node's own
        KD_STUDY_SHARD_CACHE (its fast local disk) wins where the trial runs."""
        node_folder = os.environ.get(ENV_FOLDER)
        return ShardCache(replace(self, folder=node_folder) if node_folder else self)


# process-wide tallies, for benchmarks and tests: fills (downloads), hits (local reads), evictions, verify_failures
_tally: Counter[str] = Counter()
_tally_lock = threading.Lock()


def cache_counters() -> dict[str, int]:
    with _tally_lock:
        return dict(_tally)


def _count(name: str) -> None:
    with _tally_lock:
        _tally[name] += 1


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ShardCache:
    """One node's cache folder, as seen by one process (see the module docstring)."""

    def __init__(self, spec: ShardCacheSpec) -> None:
        self.spec = spec
        self.folder = Path(spec.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._checked: set[str] = set()  # entries this process has hashed

    def __getstate__(self) -> dict:
        return {"spec": self.spec}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    def entry(self, sha256: str) -> Path:
        """The cache file of a shard; `sha256` comes from a manifest on storage, so it is checked to be 64 hex
        digits before it becomes part of a path (a crafted `../` would create and evict files outside the cache)."""
        if not re.fullmatch(SHA256_HEX, sha256):
            raise ShardError(
                f"shard sha256 {sha256!r}: expected 64 lowercase hex digits (a crafted or corrupt manifest)"
            )
        return self.folder / f"{sha256}{SUFFIX}"

    def local_path(self, uri: str, sha256: str, size: int) -> str:
        """A verified local copy of the shard at `uri` (its manifest's sha256 and size), fetched once per node."""
        if not storage.is_s3(uri):
            return uri
        path = self.entry(sha256)  # validates sha256 before the lock file below is named after it
        if self._usable(path, sha256, size):
            _count("hits")
            return str(path)
        with _locked(self.folder / f"{sha256}{LOCK_SUFFIX}"):
            if self._usable(path, sha256, size):  # another reader filled it while this one waited
                _count("hits")
                return str(path)
            self._fill(uri, path, sha256, size)
        self.evict()
        return str(path)

    def _usable(self, path: Path, sha256: str, size: int) -> bool:
        try:
            if path.stat().st_size != size:
                return False
        except FileNotFoundError:
            return False
        if sha256 not in self._checked:
            if _sha256_file(path) != sha256:
                _count("verify_failures")
                log.warning("%s: cached shard does not match its sha256; fetching it again", path)
                path.unlink(missing_ok=True)
                return False
            self._checked.add(sha256)
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return True

    def _fill(self, uri: str, path: Path, sha256: str, size: int) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=TMP_PREFIX)
        os.fchmod(fd, storage.shared_file_mode())  # mkstemp's 0600: the node's users share it
        digest, written = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in storage.iter_chunks(uri):
                    digest.update(chunk)
                    fh.write(chunk)
                    written += len(chunk)
            if written != size or digest.hexdigest() != sha256:
                raise ShardError(
                    f"{uri}: downloaded {written} bytes with sha256 {digest.hexdigest()[:12]}..., the manifest says "
                    f"{size} bytes, {sha256[:12]}... (corrupt or replaced shard)"
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._checked.add(sha256)
        _count("fills")

    def evict(self) -> int:
        """Delete least recently used entries until the folder fits `max_bytes`; returns how many were deleted."""
        now = time.time()
        entries = []
        for p in self.folder.iterdir():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            if p.name.startswith(TMP_PREFIX) and now - st.st_mtime > 3600:
                p.unlink(missing_ok=True)  # left by a killed filler
            elif p.suffix == SUFFIX:
                entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        deleted = 0
        for mtime, size, p in sorted(entries):
            if total <= self.spec.max_bytes:
                break
            if now - mtime < self.spec.grace_s:
                continue
            p.unlink(missing_ok=True)
            total -= size
            deleted += 1
            _count("evictions")
        return deleted

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob(f"*{SUFFIX}"))
