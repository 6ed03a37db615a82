"""Instance files of leaf directories, from one LIST per series prefix.

The index has no instance names or sizes, so the first lookup or listing of a
leaf directory LISTs each of its series once, and keeps the result in the
cache directory forever (a crdc UUID names immutable content): a remount or a
second mount makes no LIST for series seen before. Concurrent callers share
one LIST. File inode numbers are handed out then and never reused in a mount.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from .cache import MetaCache
from .namespace import Namespace, Series
from .store import ObjectInfo, ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
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


class Listings:
    def __init__(
        self,
        ns: Namespace,
        store: ObjectStore,
        meta: MetaCache | None,
        limiter: trio.CapacityLimiter,
        first_ino: int,
    ):
        self.ns = ns
        self.store = store
        self.meta = meta
        self.limiter = limiter  # LISTs; listings kept on disk are read under their own limit
        self.disk = trio.CapacityLimiter(8)
        self._next_ino = first_ino
        self.files: dict[int, InstanceFile] = {}
        self._dirs: dict[int, dict[str, InstanceFile]] = {}  # dir_id -> name -> file, sorted by name
        self._order: dict[int, list[InstanceFile]] = {}
        self._pending: dict[int, trio.Event] = {}
        self.list_requests = 0

    def adopt(self, other: Listings) -> None:
        """Take the directories `other` has listed (a forked child, from its parent's engine): the child then
        resolves those paths from memory, with the parent's inode numbers."""
        self.files.update(other.files)
        self._dirs.update(other._dirs)
        self._order.update(other._order)
        self._next_ino = max(self._next_ino, other._next_ino)

    def will_list(self, most: int) -> bool:
        """A selection of at most `most` series, one of them not listed in the cache directory: a mount of a
        cohort that is about to be read, whose first LIST should not wait for the LIST client to load."""
        if self.ns.num_series > most:
            return False
        return self.meta is None or any(self.meta.listing(s.crdc_series_uuid) is None for s in self.ns.all_series())

    def in_order(self, dir_id: int) -> list[InstanceFile]:
        """The files of a directory already listed, by name; [] if not listed yet."""
        return self._order.get(dir_id, [])

    def listed(self, dir_id: int) -> dict[str, InstanceFile] | None:
        """The files of a leaf directory if listed already (safe from any thread), else None."""
        return self._dirs.get(dir_id)

    async def files_of(self, dir_id: int) -> dict[str, InstanceFile]:
        """The files of a leaf directory, LISTing its series on first use."""
        while True:
            done = self._dirs.get(dir_id)
            if done is not None:
                return done
            pending = self._pending.get(dir_id)
            if pending is None:
                break
            await pending.wait()  # the LIST in flight may fail; then loop and try again
        event = self._pending[dir_id] = trio.Event()
        try:
            entries: list[tuple[Series, ObjectInfo]] = []
            for series in self.ns.series_in(dir_id):
                entries += [(series, o) for o in await self._list(series)]
            entries.sort(key=lambda e: e[1].name)
            files: dict[str, InstanceFile] = {}
            for series, obj in entries:
                if obj.name in files:  # same name in two series of one directory: keep the first
                    log.warning("duplicate file name %s in directory %d", obj.name, dir_id)
                    continue
                f = InstanceFile(
                    self._next_ino, obj.name, obj.size, obj.mtime_ns, obj.etag, obj.md5, series, dir_id, len(files)
                )
                self._next_ino += 1
                self.files[f.ino] = f
                files[f.name] = f
            self._dirs[dir_id] = files
            self._order[dir_id] = list(files.values())
            return files
        finally:
            del self._pending[dir_id]
            event.set()

    async def _list(self, series: Series) -> list[ObjectInfo]:
        uuid = series.crdc_series_uuid
        if self.meta is not None:
            known = await trio.to_thread.run_sync(self.meta.listing, uuid, limiter=self.disk)
            if known is not None:
                return [ObjectInfo(*entry) for entry in known]
        self.list_requests += 1
        objs = await trio.to_thread.run_sync(self.store.list_series, series.aws_bucket, uuid, limiter=self.limiter)
        if self.meta is not None and objs:  # an empty LIST may be a lagging mirror: ask again next time
            entry = [o.entry() for o in objs]
            await trio.to_thread.run_sync(self.meta.set_listing, uuid, entry, limiter=self.disk)
        return objs
