"""Instance files of leaf directories, from one LIST per series prefix.

The index has no instance names or sizes, so the first lookup or listing of a
leaf directory LISTs each of its series once, and keeps the result in the
cache directory forever (a crdc UUID names immutable content): a remount or a
second mount makes no LIST for series seen before. Concurrent callers share
one LIST.

A file's inode number is computed from its directory and its place in it, so
it is the same whenever the directory is listed again. That lets memory stay
bounded: at most HELD_FILES files are kept listed, least recently used dropped
first, and among those, first the directories whose files the kernel has
forgotten (FORGET). A dropped directory is read back from the cache directory
when it or one of its inodes is asked for again. A listing that could not be
kept in the cache directory is never dropped: listed again, the origin might
answer differently.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import trio

from .cache import MetaCache
from .namespace import Namespace, Series
from .store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


INDEX_BITS = 24  # files per directory: the largest series holds 91,980 instances
HELD_FILES = 131_072  # files kept listed in memory (about 50 MB), beyond those of directories never stored
SHRINK_TO = 0.9  # dropping goes down to this share of HELD_FILES, so it runs in batches


@dataclass(frozen=True, slots=True)
class InstanceFile:
    ino: int
    name: str
    size: int
    mtime_ns: int
    etag: str
    md5: str  # hex; "" when the origin published none (then a whole-file GET is checked by length only)
    series: Series
    dir_id: int
    index: int  # position in its directory, which is sorted by name

    @property
    def key(self) -> str:
        return f"{self.series.crdc_series_uuid}/{self.name}"


def stored_listing(meta: MetaCache, series_uuid: str) -> list[ObjectInfo] | None:
    """A series' objects as kept in the cache directory; None if not kept there. Blocking."""
    known = meta.listing(series_uuid)
    return None if known is None else [ObjectInfo(*entry) for entry in known]


def keep_listing(meta: MetaCache, series_uuid: str, objs: list[ObjectInfo]) -> bool:
    """Keep a series' LIST in the cache directory; True if it was kept. Blocking."""
    return bool(meta.set_listing(series_uuid, [o.entry() for o in objs]))


class _Listed:
    """One listed leaf directory."""

    __slots__ = ("by_name", "in_order", "stored")

    def __init__(self, by_name: dict[str, InstanceFile], stored: bool):
        self.by_name = by_name
        self.in_order = list(by_name.values())  # by name
        self.stored = stored  # in the cache directory: dropping it from memory loses nothing


class Listings:
    def __init__(
        self,
        ns: Namespace,
        store: ObjectStore,
        meta: MetaCache | None,
        limiter: trio.CapacityLimiter,
        first_ino: int,
        held: int = HELD_FILES,
    ):
        self.ns = ns
        self.store = store
        self.meta = meta
        self.limiter = limiter  # LISTs; listings kept on disk are read under their own limit
        self.disk = trio.CapacityLimiter(8)
        self.first_ino = first_ino  # above every directory's inode
        self.held = held
        self._listed: OrderedDict[int, _Listed] = OrderedDict()  # dir_id -> listing, least recently used first
        self.files_held = 0
        self._kernel_refs: dict[int, int] = {}  # dir_id -> lookups the kernel holds on its files
        self._pending: dict[int, trio.Event] = {}
        self.list_requests = 0

    def adopt(self, other: Listings) -> None:
        """Take the directories `other` has listed (a forked child, from its parent's engine): the child then
        resolves those paths from memory, with the same inode numbers."""
        for dir_id, listed in other._listed.items():
            if dir_id not in self._listed:
                self._listed[dir_id] = listed
                self.files_held += len(listed.in_order)

    # -- inode numbers

    def ino(self, dir_id: int, index: int) -> int:
        return self.first_ino + (dir_id << INDEX_BITS) + index

    def _locate(self, ino: int) -> tuple[int, int] | None:
        """(dir_id, index) of a file's inode number, or None if it cannot be one."""
        k = ino - self.first_ino
        dir_id, index = k >> INDEX_BITS, k & ((1 << INDEX_BITS) - 1)
        return (dir_id, index) if 0 < dir_id <= self.ns.num_dirs and self.ns.is_leaf(dir_id) else None

    async def file(self, ino: int) -> InstanceFile | None:
        """The file with this inode number; its directory is read back if it was dropped from memory."""
        where = self._locate(ino)
        if where is None:
            return None
        dir_id, index = where
        await self.files_of(dir_id)
        files = self.in_order(dir_id)
        return files[index] if index < len(files) else None

    # -- the kernel's references

    def looked_up(self, f: InstanceFile) -> None:
        """The kernel was given f's inode (LOOKUP, READDIRPLUS): it holds one more reference until FORGET."""
        self._kernel_refs[f.dir_id] = self._kernel_refs.get(f.dir_id, 0) + 1

    def forget(self, ino: int, n: int) -> None:
        where = self._locate(ino)
        if where is None:
            return
        left = self._kernel_refs.get(where[0], 0) - n
        if left > 0:
            self._kernel_refs[where[0]] = left
        else:
            self._kernel_refs.pop(where[0], None)

    # -- listings

    def will_list(self, most: int) -> bool:
        """A selection of at most `most` series, one of them not listed in the cache directory: a mount of a
        cohort that is about to be read, whose first LIST should not wait for the LIST client to load."""
        if self.ns.num_series > most:
            return False
        return self.meta is None or any(self.meta.listing(s.crdc_series_uuid) is None for s in self.ns.all_series())

    def in_order(self, dir_id: int) -> list[InstanceFile]:
        """The files of a directory in memory, by name; [] if not listed (or dropped)."""
        listed = self._listed.get(dir_id)
        return [] if listed is None else listed.in_order

    def listed(self, dir_id: int) -> dict[str, InstanceFile] | None:
        """The files of a leaf directory if in memory (safe from any thread), else None."""
        listed = self._listed.get(dir_id)
        return None if listed is None else listed.by_name

    async def files_of(self, dir_id: int) -> dict[str, InstanceFile]:
        """The files of a leaf directory, LISTing its series on first use."""
        while True:
            done = self._listed.get(dir_id)
            if done is not None:
                self._listed.move_to_end(dir_id)
                return done.by_name
            pending = self._pending.get(dir_id)
            if pending is None:
                break
            await pending.wait()  # the LIST in flight may fail; then loop and try again
        event = self._pending[dir_id] = trio.Event()
        try:
            entries: list[tuple[Series, ObjectInfo]] = []
            stored = self.meta is not None
            for series in self.ns.series_in(dir_id):
                objs, kept = await self._list(series)
                entries += [(series, o) for o in objs]
                stored = stored and kept
            entries.sort(key=lambda e: e[1].name)
            files: dict[str, InstanceFile] = {}
            for series, obj in entries:
                if obj.name in files:  # same name in two series of one directory: keep the first
                    log.warning("duplicate file name %s in directory %d", obj.name, dir_id)
                    continue
                index = len(files)
                f = InstanceFile(
                    self.ino(dir_id, index), obj.name, obj.size, obj.mtime_ns, obj.etag, obj.md5, series, dir_id, index
                )
                files[f.name] = f
            self._listed[dir_id] = _Listed(files, stored)
            self.files_held += len(files)
            if self.files_held > self.held:
                self._shrink(keep=dir_id)
            return files
        finally:
            del self._pending[dir_id]
            event.set()

    def _shrink(self, keep: int) -> None:
        """Drop listings, least recently used first, down to SHRINK_TO of the bound: first those the kernel
        holds no inode of, then any (their inodes stay valid: see file())."""
        target = self.held * SHRINK_TO
        for kernel_too in (False, True):
            for dir_id, listed in list(self._listed.items()):
                if self.files_held <= target:
                    return
                if dir_id == keep or not listed.stored or (not kernel_too and dir_id in self._kernel_refs):
                    continue
                del self._listed[dir_id]
                self.files_held -= len(listed.in_order)

    async def _list(self, series: Series) -> tuple[list[ObjectInfo], bool]:
        """The series' objects, and whether that list is kept in the cache directory."""
        uuid = series.crdc_series_uuid
        if self.meta is not None:
            known = await trio.to_thread.run_sync(stored_listing, self.meta, uuid, limiter=self.disk)
            if known is not None:
                return known, True
        self.list_requests += 1
        objs = await trio.to_thread.run_sync(self.store.list_series, series.aws_bucket, uuid, limiter=self.limiter)
        if self.meta is None or not objs:  # an empty LIST may be a lagging mirror: ask again next time
            return objs, False
        kept = await trio.to_thread.run_sync(keep_listing, self.meta, uuid, objs, limiter=self.disk)
        return objs, kept
