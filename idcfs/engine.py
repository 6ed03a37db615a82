"""The tree, its listings and the read path wired together over one store and cache directory.

Both front ends use it, through its methods only: the FUSE adapter (fs.py) by
inode, the fsspec `idc://` protocol (fsspec.py) by path. options.build_engine
makes one. Everything here is async and runs in one trio run; background
fetches, cache writes and counter flushes go in the nursery given to attach().
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from .background import Background, failpoint
from .cache import CacheDir
from .errors import NoSuchPath, NotADirectory
from .listing import InstanceFile, Listings
from .namespace import Namespace
from .readpath import MEMORY, OpenFile, Reader
from .store import ObjectStore

log = logging.getLogger(__name__)

Node = int | InstanceFile  # a directory id, or an instance file


class Engine:
    def __init__(
        self,
        ns: Namespace,
        store: ObjectStore,
        cache: CacheDir | None,
        io_threads: int = 32,
        memory: int = MEMORY,
    ):
        self.ns = ns
        self.store = store
        self.cache = cache
        # GETs, LISTs and the local disk each have their own threads: a stalled origin holds only its own.
        meta = cache.meta if cache else None
        self.listings = Listings(ns, store, meta, trio.CapacityLimiter(16), first_ino=ns.num_dirs + 2)
        # A cache directory without blocks (--cache-size 0) keeps listings only.
        disk = cache if cache is not None and cache.blocks is not None else None
        self.reader = Reader(store, disk, trio.CapacityLimiter(io_threads), memory, meta)
        self._db = trio.CapacityLimiter(1)  # one duckdb connection
        self._flushed: dict[str, int] = {}
        self.background: Background | None = None  # set by attach()

    def attach(self, nursery: trio.Nursery) -> None:
        self.background = Background(nursery)
        self.reader.attach(self.background)
        self.background.start_soon(self._flush_counters_every, 10.0)

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
        self.flush_counters()
        if self.cache is not None:
            self.cache.close()

    def adopting(self, parent: Engine) -> Engine:
        """This engine, knowing the listings of the engine it was forked from (see Listings.adopt)."""
        self.listings.adopt(parent.listings)
        return self

    def will_list(self, series: int) -> bool:
        """Some series of a tree of at most this many series was never listed (see Listings.will_list)."""
        return self.listings.will_list(series)

    @property
    def instance_files(self) -> Path | None:
        """The cache directory holding whole instances as plain files (FUSE passthrough hands them to the
        kernel), or None without one (--cache-size 0)."""
        c = self.cache
        return c.root if c is not None and c.files is not None else None

    async def stored(self) -> None:
        """Wait until what was fetched is written to the cache directory (or given up)."""
        while self.reader.unstored:
            await trio.sleep(0.05)

    # -- the tree by name

    async def file(self, ino: int) -> InstanceFile | None:
        """The instance file with this inode number (see Listings.file)."""
        return await self.listings.file(ino)

    def looked_up(self, f: InstanceFile) -> None:
        """The kernel holds one more reference to f's inode (see Listings)."""
        self.listings.looked_up(f)

    def forget(self, ino: int, n: int) -> None:
        self.listings.forget(ino, n)

    async def child(self, dir_id: int, name: str) -> Node | None:
        """The entry `name` of directory dir_id; a leaf directory's files are LISTed on first use."""
        if self.ns.is_leaf(dir_id):
            return (await self.listings.files_of(dir_id)).get(name)
        return self.ns.lookup(dir_id, name)

    async def children(self, dir_id: int, start: int = 0, count: int | None = None) -> list[tuple[str, Node]]:
        """The entries of a directory from the start-th on (at most count of them), in name order."""
        if self.ns.is_leaf(dir_id):
            await self.listings.files_of(dir_id)
            files = self.listings.in_order(dir_id)  # kept: files_of never drops the directory it lists
            return [(f.name, f) for f in files[start : None if count is None else start + count]]
        return self.ns.subdirs(dir_id, start, count)

    async def resolve(self, parts: list[str]) -> Node:
        """The node at a path given as its components; FileNotFoundError or NotADirectoryError."""
        node: Node = 0
        for depth, name in enumerate(parts):
            if isinstance(node, InstanceFile):
                raise NotADirectory("/".join(parts[:depth]))
            found = await self.child(node, name)
            if found is None:
                raise NoSuchPath("/".join(parts[: depth + 1]))
            node = found
        return node

    def resolve_known(self, parts: list[str], node: Node = 0) -> Node | None:
        """resolve() from memory alone (from `node` on), None where that would need a LIST (or the path is
        not there). It only reads, so any thread may call it: idc:// resolves cached files in the caller's
        thread."""
        for name in parts:
            if isinstance(node, InstanceFile):
                return None
            if self.ns.is_leaf(node):
                files = self.listings.listed(node)
                node = None if files is None else files.get(name)
            else:
                node = self.ns.lookup(node, name)
            if node is None:
                return None
        return node

    # -- files

    def open(self, f: InstanceFile, local: bool = False) -> OpenFile:
        """local: the caller reads a file held whole in the cache directory itself (see Reader.open)."""
        return self.reader.open(f, self.listings.in_order(f.dir_id), local)

    async def read(self, of: OpenFile, offset: int, size: int):
        return await self.reader.read(of, offset, size)

    def release(self, of: OpenFile) -> None:
        self.reader.close(of)

    def note_open(self, f: InstanceFile) -> None:
        """An open served elsewhere (from the cache, in another thread): series prefetch and warming see it."""
        self.release(self.open(f, local=True))

    def cached_whole(self, f: InstanceFile) -> bool:
        """f is a small instance held whole in the cache directory (as far as this process knows)."""
        c = self.reader.cache
        return c is not None and c.has_whole(f.series.crdc_series_uuid, f.name, f.size)

    def read_cached(self, f: InstanceFile) -> bytes | None:
        """f's bytes from the cache directory, checked; None if not there or damaged. Blocking, and safe to
        call from any thread: idc:// serves cached files this way, with no hop to the engine's thread."""
        c = self.reader.cache
        data = None if c is None else c.whole(f.series.crdc_series_uuid, f.name, f.size)
        if data is not None:
            self.reader.hits += 1  # from another thread: a rare lost update only undercounts
        return data

    def open_cached(self, f: InstanceFile, quick: bool = False) -> int | None:
        """A read-only descriptor of f's checked file in the cache directory, or None: for FUSE passthrough,
        which hands the file to the kernel to read. Blocking; with quick, only an open and an fstat of a file
        this process wrote or checked before and that is unchanged."""
        c = self.reader.cache
        fd = None if c is None else c.open_whole(f.series.crdc_series_uuid, f.name, f.size, quick)
        if fd is not None:
            self.reader.hits += 1
        return fd

    async def metadata(self, node: Node) -> dict[str, str]:
        """What the index says about a file or directory: a file's or a series directory's index columns, with
        bucket and URL; for every directory, what its subtree holds (series, licenses, source DOIs)."""
        if isinstance(node, InstanceFile):
            s, url = node.series, self.store.url(node.series.aws_bucket, node.key)
        else:
            summary = self.ns.summary(node)
            if node == 0:
                summary |= {"idc_version": self.ns.idc_version, "index": str(self.ns.index_path)}
            series = self.ns.series_in(node)
            if len(series) != 1:
                return summary
            s, url = series[0], self.store.url(series[0].aws_bucket, series[0].crdc_series_uuid + "/")
        meta = await trio.to_thread.run_sync(self.ns.series_metadata, s.crdc_series_uuid, limiter=self._db)
        meta["aws_bucket"] = s.aws_bucket
        meta["url"] = url
        return meta if isinstance(node, InstanceFile) else meta | summary

    # -- counters

    def lifetime_counters(self) -> dict[str, int]:
        r = self.reader
        return {
            "hits": r.hits,
            "misses": r.misses,
            "bytes_fetched": r.bytes_fetched,
            "get_requests": r.get_requests,
            "list_requests": self.listings.list_requests,
            "corrupt_blocks": r.cache.corrupt if r.cache else 0,
        }

    def stats(self) -> dict[str, int]:
        r = self.reader
        return {
            **self.lifetime_counters(),
            "in_flight": r.in_flight,
            "memory_hits": r.memory_hits,
            "bytes_read": r.bytes_read,
            "prefetched_files": r.prefetched_files,
            "fetched_elsewhere": r.fetched_elsewhere,
            "unstored_bytes": r.unstored,
            "failovers": self.store.failovers,
            "origin_errors": self.store.errors,
            "origin_corrupt_bodies": self.store.corrupt_bodies,
            "files_known": self.listings.files_held,
            "background_errors": self.background.errors if self.background else 0,
        }

    def flush_counters(self) -> None:
        """Add what was counted since the last flush to the cache directory's lifetime counters."""
        if self.cache is None:
            return
        now = self.lifetime_counters()
        self.cache.meta.add_counters({k: v - self._flushed.get(k, 0) for k, v in now.items()})
        self._flushed = now

    async def _flush_counters_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            try:
                failpoint("flush")
                await trio.to_thread.run_sync(self.flush_counters)
            except Exception as e:
                log.warning("cannot save counters: %s", e)
