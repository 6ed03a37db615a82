"""The persistent cache directory: instance blocks, series listings and lifetime counters.

blocks/ and meta/ are diskcache caches (SQLite plus files), files/ is plain files; all are safe to
share between threads, processes and concurrent mounts of one cache directory.

- files/: whole instances up to WHOLE_FILE bytes (most CT and MR), one plain file
  each, and the heads a header scan read of them, checked against a digest in an
  extended attribute (instancecache.py).
- blocks/: blocks of larger instance files, capped in size together
  with files/ and evicted least recently used. Keys name content, not location
  (`<series uuid>/<file>@<block>`), so a block read from AWS also serves a GCS mount. Each value is the block followed
  by an XXH3-128 digest of key and block: a torn, truncated, rotten or swapped
  value fails the check, is deleted and counts as a miss, so it is refetched
  and never served.
- meta/: the LIST of each series (a crdc UUID names immutable content, so it
  never expires) and counters summed over all mounts. Never evicted.

Every call is blocking; the read path runs them in worker threads. A cache that
cannot be written (disk full, permissions, a broken database) is skipped: reads
still succeed by streaming, and a warning is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
from pathlib import Path

import diskcache
import xxhash

from . import treecache
from .instancecache import HEAD_SUFFIX, InstanceCache

log = logging.getLogger(__name__)

DIGEST = 16
# Chosen by measurement (bench/RESULTS.md): small enough that one WSI tile drags
# in little else, big enough that a sequential reader costs few SQLite rows.
BLOCK_SIZE = 256 << 10
WHOLE_FILE = 8 << 20  # files up to this size (most CT and MR) are one block
DEFAULT_SIZE = 10 << 30
COUNTERS = ("hits", "misses", "bytes_fetched", "get_requests", "list_requests", "corrupt_blocks")
_DB_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)
FORK_WAIT = 10.0  # longest a fork waits for SQLite calls in flight (each gives up after its 5 s timeout)


class _ForkGate:
    """No SQLite call is in flight while the process forks.

    SQLite keeps process-wide mutexes (its allocator, its file-lock table). A fork while another thread
    holds one leaves the child's copy locked forever: a DataLoader worker forked while the parent's
    idc:// engine was writing a block hung in its first sqlite3 connect. Every call into a cache goes
    through enter(); os.fork() first closes the gate and waits for the calls inside to finish.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._inside = 0
        self._forking = False
        self._depth = threading.local()  # calls nest (close() calls touch()); only the outermost waits

    @contextlib.contextmanager
    def enter(self):
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._inside += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cond:
                    self._inside -= 1
                    self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._forking = True
            if not self._cond.wait_for(lambda: self._inside == 0, FORK_WAIT):
                log.warning("forking with %d cache calls in flight: the child may hang in SQLite", self._inside)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()


_gate = _ForkGate()


def _after_fork_in_child() -> None:
    global _gate
    _gate = _ForkGate()  # the calls that were waiting stayed in the parent


os.register_at_fork(
    before=lambda: _gate.before_fork(),
    after_in_parent=lambda: _gate.after_fork_in_parent(),
    after_in_child=_after_fork_in_child,
)


def _gated(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _gate.enter():
            return method(*args, **kwargs)

    return wrapper


def block_size(file_size: int) -> int:
    return max(file_size, 1) if file_size <= WHOLE_FILE else BLOCK_SIZE


def block_key(series_uuid: str, name: str, size: int, index: int) -> str:
    """Content address of block `index` of a file cut in blocks of `size` bytes."""
    return f"{series_uuid}/{name}@{index}x{size}"


def _digest(key: str, data: bytes) -> bytes:
    # XXH3-128: catches damage, not tampering, at tens of GB/s (BLAKE2b cost more than the disk read).
    h = xxhash.xxh3_128()
    h.update(key.encode())
    h.update(data)
    return h.digest()


class _Degradable:
    """Log the first failure of a kind once per process, whichever store hit it; then stay quiet."""

    _warned: set[str] = set()
    _lock = threading.Lock()

    def warn_once(self, what: str, err: Exception) -> None:
        with self._lock:
            if what in self._warned:
                return
            self._warned.add(what)
        log.warning("cache %s failed (%s); reads go on uncached", what, err)


class _Lazy(_Degradable):
    """A store whose diskcache handles may be opened on first use: opening one writes its settings (a dozen
    SQLite writes, about 3 ms), which a forked reader of cached instance files (a DataLoader worker, each
    epoch) need not pay before its first read."""

    def __init__(self, lazy: bool):
        self._handles: tuple | None = None
        self._opening = threading.Lock()
        if not lazy:
            self._open()

    def _open(self) -> tuple:
        if self._handles is None:
            with self._opening:
                if self._handles is None:
                    self._handles = self._make()
        return self._handles

    def _make(self) -> tuple:
        raise NotImplementedError

    @property
    def _cache(self) -> diskcache.Cache:
        return self._open()[0]

    @property
    def opened(self) -> bool:
        return self._handles is not None

    def _close_handles(self) -> None:
        for handle in self._handles or ():  # none if never opened
            handle.close()


class BlockCache(_Lazy):
    @_gated
    def __init__(self, directory: Path, size_limit: int = DEFAULT_SIZE, lazy: bool = False):
        self.directory = Path(directory)
        self.size_limit = size_limit
        self.corrupt = 0
        self._touched: list[str] = []
        super().__init__(lazy)

    def _make(self) -> tuple:
        cache = diskcache.Cache(
            str(self.directory),
            timeout=5,
            size_limit=self.size_limit,
            eviction_policy="least-recently-used",
            cull_limit=16,
        )
        # diskcache's LRU get() holds a write transaction while it reads the value file, which
        # serializes all readers on SQLite's lock. Reads go through a second handle that skips
        # that update, and the access times LRU eviction orders by are set in batches (touch()).
        reader = diskcache.Cache(str(self.directory), timeout=5)
        reader.eviction_policy = "least-recently-stored"
        return cache, reader

    @property
    def _reader(self) -> diskcache.Cache:
        return self._open()[1]

    @_gated
    def get(self, key: str, length: int) -> memoryview | None:
        """The block stored under key if it is intact and `length` bytes long, else None."""
        try:
            value = self._reader.get(key)
        except _DB_ERRORS as e:
            self.warn_once("read", e)
            return None
        if value is None:
            return None
        ok = isinstance(value, bytes) and len(value) == length + DIGEST
        # A view, not a slice: copying half a megabyte costs more than reading it from disk.
        data = memoryview(value)[:-DIGEST] if ok else b""
        if not ok or _digest(key, data) != value[-DIGEST:]:
            self.corrupt += 1
            log.warning("cache block %s is corrupt; dropped and refetched", key)
            try:
                self._cache.delete(key)
            except _DB_ERRORS as e:
                self.warn_once("delete", e)
            return None
        self._touched.append(key)
        return data

    @_gated
    def touch(self) -> None:
        """Mark the blocks read since the last call as recently used, in one transaction."""
        keys, self._touched = self._touched, []
        if not keys:
            return
        try:
            with self._cache.transact():
                for key in dict.fromkeys(keys):
                    # Updates access_time; returns an open file, or the bytes of a value kept inline.
                    handle = self._cache.get(key, read=True)
                    if hasattr(handle, "close"):
                        handle.close()
        except _DB_ERRORS as e:
            self.warn_once("write", e)

    @_gated
    def put(self, key: str, data: bytes | memoryview) -> None:
        try:
            self._cache.set(key, b"".join((data, _digest(key, data))))
        except _DB_ERRORS as e:
            self.warn_once("write", e)

    def put_blocks(self, series_uuid: str, name: str, bs: int, first: int, data: bytes) -> None:
        """Store data, which starts at block `first` of a file cut in blocks of bs bytes."""
        data = memoryview(data)
        for k in range(0, len(data), bs):
            self.put(block_key(series_uuid, name, bs, first + k // bs), data[k : k + bs])

    @_gated
    def has(self, key: str) -> bool:
        try:
            return key in self._cache
        except _DB_ERRORS:
            return False

    @_gated
    def volume(self) -> int:
        return self._cache.volume()

    @_gated
    def lru_page(self, offset: int, n: int) -> list[tuple[float, int, str]]:
        """(access time, size, key) of blocks, least recently used first, from `offset`."""
        try:
            rows = self._cache._sql(
                "SELECT access_time, size, key FROM Cache ORDER BY access_time LIMIT ? OFFSET ?", (n, offset)
            ).fetchall()
        except _DB_ERRORS as e:
            self.warn_once("read", e)
            return []
        return [(float(t), int(size), str(key)) for t, size, key in rows]

    @_gated
    def delete_keys(self, keys: list[str]) -> None:
        try:
            for key in keys:
                self._cache.delete(key)
        except _DB_ERRORS as e:
            self.warn_once("delete", e)

    def footprint(self) -> int:
        """Bytes on disk: volume() leaves out SQLite's write-ahead log, which can hold megabytes."""
        try:
            wal = os.stat(self.directory / "cache.db-wal").st_size
        except OSError:
            wal = 0
        return self.volume() + wal

    @_gated
    def __len__(self) -> int:
        return len(self._cache)

    @_gated
    def clear(self) -> int:
        return self._cache.clear()

    @_gated
    def close(self) -> None:
        self.touch()
        self._close_handles()


class MetaCache(_Lazy):
    """Series listings and lifetime counters."""

    @_gated
    def __init__(self, directory: Path, lazy: bool = False):
        self.directory = Path(directory)
        super().__init__(lazy)

    def _make(self) -> tuple:
        # Small SQLite caches and no mmap: each thread has its own connection, and with diskcache's defaults
        # (a 32 MB page cache, 64 MB mapped) reading many listings grew a mount by 200 MB.
        cache = diskcache.Cache(
            str(self.directory),
            timeout=5,
            eviction_policy="none",
            size_limit=1 << 62,
            sqlite_cache_size=256,
            sqlite_mmap_size=0,
        )
        return (cache,)

    @_gated
    def listing(self, series_uuid: str) -> list[tuple] | None:
        try:
            return self._cache.get("list:" + series_uuid)
        except _DB_ERRORS as e:
            self.warn_once("read", e)
            return None

    @_gated
    def set_listing(self, series_uuid: str, entries: list[tuple]) -> bool:
        """Keep a series' LIST; False if it could not be written."""
        try:
            return bool(self._cache.set("list:" + series_uuid, entries))
        except _DB_ERRORS as e:
            self.warn_once("write", e)
            return False

    @_gated
    def claim(self, name: str, seconds: float) -> bool:
        """Take `name` for `seconds` unless another process holds it: prefetchers sharing this cache
        directory (DataLoader workers, two mounts) then do not fetch the same file at once."""
        try:
            return self._cache.add("claim:" + name, os.getpid(), expire=seconds)
        except _DB_ERRORS as e:
            self.warn_once("write", e)
            return True

    @_gated
    def add_counters(self, deltas: dict[str, int]) -> None:
        deltas = {name: delta for name, delta in deltas.items() if delta}
        if not deltas:
            return
        try:
            with self._cache.transact():  # one write transaction, not one per counter
                for name, delta in deltas.items():
                    self._cache.incr("count:" + name, delta)
        except _DB_ERRORS as e:
            self.warn_once("write", e)

    @_gated
    def counters(self) -> dict[str, int]:
        return {name: int(self._cache.get("count:" + name, 0)) for name in COUNTERS}

    def _listing_keys(self):
        return (k for k in self._cache.iterkeys() if str(k).startswith("list:"))

    @_gated
    def has_listings(self) -> bool:
        try:
            return next(self._listing_keys(), None) is not None
        except _DB_ERRORS:
            return False

    @_gated
    def listings(self) -> int:
        return sum(1 for _ in self._listing_keys())

    @_gated
    def volume(self) -> int:
        return self._cache.volume()

    @_gated
    def clear(self) -> int:
        return self._cache.clear()

    @_gated
    def close(self) -> None:
        self._close_handles()


class CacheDir:
    """The cache directory of a mount (or of `idcfs cache` / `idcfs prefetch`)."""

    def __init__(self, root: Path, size_limit: int | None = None, blocks: bool = True, lazy: bool = False):
        """lazy: open the SQLite stores on first use (a damaged one is then found late, not here)."""
        self.root = Path(root)
        self.blocks: BlockCache | None = None
        self.files: InstanceCache | None = None
        if blocks:  # without a size, keep the cap the last mount set
            path = self.root / "blocks"
            limit = size_limit if size_limit is not None else _stored_size_limit(path)
            self.blocks = BlockCache(path, limit, lazy=lazy)
            # One cap and one least-recently-used order for both (InstanceCache.evict).
            self.files = InstanceCache(self.root / "files", self.blocks.size_limit, self.blocks, self.blocks.warn_once)
        self.meta = MetaCache(self.root / "meta", lazy=lazy)

    def _as_file(self, size: int) -> bool:
        return size <= WHOLE_FILE and self.files is not None and self.files.usable

    def put(self, series_uuid: str, name: str, size: int, bs: int, first: int, data) -> None:
        """Store data, which starts at block `first` of a file of `size` bytes cut in blocks of bs bytes:
        a whole small instance as a file of its own, anything else as blocks."""
        if first == 0 and len(data) == size and self._as_file(size):
            self.files.put(series_uuid, name, data)
            self.files.discard(series_uuid, name + HEAD_SUFFIX)  # the whole serves the head now
        else:
            self.blocks.put_blocks(series_uuid, name, bs, first, data)

    def put_head(self, series_uuid: str, name: str, size: int, data) -> None:
        """Store the first bytes of a small instance (what a header scan reads): a file beside the instances,
        or a block where instance files are off."""
        if self._as_file(size):
            self.files.put(series_uuid, name + HEAD_SUFFIX, data, sync=False)
        else:
            self.blocks.put(block_key(series_uuid, name, len(data), 0), data)

    def may_hold_head(self, series_uuid: str, name: str, size: int) -> bool:
        """False if neither the head nor the whole of a small instance is cached, known without a database
        query (two stats at most)."""
        if not self._as_file(size):
            return True
        return self.files.has(series_uuid, name + HEAD_SUFFIX) or self.files.has(series_uuid, name)

    def head(self, series_uuid: str, name: str, size: int, length: int) -> bytes | memoryview | None:
        """The first `length` bytes of a small instance, checked: from its head, or from the whole file."""
        if self._as_file(size):
            data = self.files.get(series_uuid, name + HEAD_SUFFIX, length)
        else:
            data = self.blocks.get(block_key(series_uuid, name, length, 0), length)
        if data is None and (whole := self.whole(series_uuid, name, size)) is not None:
            data = bytes(whole[:length])  # a copy: a view would keep the whole file in memory for the head
        return data

    def has(self, series_uuid: str, name: str, size: int) -> bool:
        """The whole file is cached."""
        if self._as_file(size):
            return self.files.has(series_uuid, name)
        bs = block_size(size)
        return all(self.blocks.has(block_key(series_uuid, name, bs, i)) for i in range(-(-size // bs)))

    def claim_whole(self, series_uuid: str, name: str, size: int) -> bool:
        """This process is to fetch a small instance: no other process sharing the directory is fetching it."""
        return not self._as_file(size) or self.files.claim(series_uuid, name)

    def fetching_elsewhere(self, series_uuid: str, name: str, size: int) -> bool:
        return self._as_file(size) and self.files.claimed(series_uuid, name)

    def release_whole(self, series_uuid: str, name: str, size: int) -> None:
        if self._as_file(size):
            self.files.release(series_uuid, name)

    def has_whole(self, series_uuid: str, name: str, size: int) -> bool:
        """A small instance is among the instance files (memory, or a stat; no database query)."""
        return self._as_file(size) and self.files.has(series_uuid, name)

    def may_hold(self, series_uuid: str, name: str, size: int) -> bool:
        """False if the file is certainly not cached, known without a database query (a stat at most)."""
        return not self._as_file(size) or self.files.has(series_uuid, name)

    def whole(self, series_uuid: str, name: str, size: int) -> bytes | None:
        """A small instance's bytes, checked; None if not there or damaged. From its instance file, or from
        the blocks where instance files are off (a file system without user xattrs): put() kept it there."""
        if self._as_file(size):
            return self.files.get(series_uuid, name, size)
        if size <= WHOLE_FILE and self.blocks is not None:
            return self.blocks.get(block_key(series_uuid, name, block_size(size), 0), size)
        return None

    def open_whole(self, series_uuid: str, name: str, size: int, quick: bool = False) -> int | None:
        """A read-only descriptor of a small instance's file, once checked; None if not there or damaged.
        quick: only a file this process checked or wrote before, if unchanged (no pass over its bytes)."""
        if not self._as_file(size):
            return None
        opener = self.files.open_known if quick else self.files.open_checked
        return opener(series_uuid, name, size)

    @property
    def corrupt(self) -> int:
        return (self.blocks.corrupt if self.blocks is not None else 0) + (
            self.files.corrupt if self.files is not None else 0
        )

    def touch(self) -> None:
        """Upkeep every few seconds: access times of what was read, eviction beyond the cap."""
        if self.blocks is not None:
            self.blocks.touch()
        if self.files is not None:
            self.files.keep()

    def stats(self) -> dict:
        c = self.meta.counters()
        lookups = c["hits"] + c["misses"]
        b, f = self.blocks, self.files
        return {
            "directory": str(self.root),
            "size_bytes": (b.volume() + f.volume()) if b is not None else 0,
            "size_limit_bytes": b.size_limit if b is not None else 0,
            "instance_files": len(f) if f is not None else 0,
            "head_files": f.heads() if f is not None else 0,
            "blocks": len(b) if b is not None else 0,
            "block_size_bytes": BLOCK_SIZE,
            "series_listed": self.meta.listings(),
            **dict(zip(("trees", "trees_bytes"), treecache.usage(self.root / "trees"), strict=True)),
            "trees_limit_bytes": treecache.TREES_CAP,
            "hit_rate": round(c["hits"] / lookups, 4) if lookups else None,
            **c,
        }

    def clear(self) -> None:
        if self.blocks is not None:
            self.blocks.clear()
            self.files.clear()
        self.meta.clear()
        self.clear_trees()

    def clear_trees(self) -> int:
        """Delete the sorted trees kept for later mounts (see treecache); how many."""
        return treecache.clear(self.root / "trees")

    def close(self) -> None:
        if self.blocks is not None:
            self.files.keep(final=True)
            self.blocks.close()
        self.meta.close()


@_gated
def _stored_size_limit(directory: Path) -> int:
    db = directory / "cache.db"
    if db.exists():
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                row = con.execute("SELECT value FROM Settings WHERE key = 'size_limit'").fetchone()
                if row:
                    return int(row[0])
        except sqlite3.Error:
            pass
    return DEFAULT_SIZE


def parse_size(text: str) -> int:
    """'10G', '500MiB', '1.5T', '4096' -> bytes (binary units)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not m or (not m.group(2) and m.group(3) and m.group(3).lower() == "ib"):
        raise ValueError(f"bad size {text!r}: give a number with an optional unit, e.g. 10G or 500M")
    scale = 1 << (10 * " kmgt".index((m.group(2) or " ").lower()))
    return int(float(m.group(1)) * scale)
