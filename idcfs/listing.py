"""Instance files of leaf directories, from one LIST per series prefix.

The index has no instance names or sizes, so the first lookup or listing of a
leaf directory LISTs each of its series once. Concurrent callers share that
LIST. File inode numbers are handed out then and never reused in a mount.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

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
    series: Series

    @property
    def key(self) -> str:
        return f"{self.series.crdc_series_uuid}/{self.name}"


class Listings:
    def __init__(self, ns: Namespace, store: ObjectStore, limiter: trio.CapacityLimiter, first_ino: int):
        self.ns = ns
        self.store = store
        self.limiter = limiter
        self._next_ino = first_ino
        self.files: dict[int, InstanceFile] = {}
        self._dirs: dict[int, dict[str, InstanceFile]] = {}  # dir_id -> name -> file, sorted by name
        self._pending: dict[int, trio.Event] = {}
        self.list_requests = 0

    def cached(self, dir_id: int) -> dict[str, InstanceFile] | None:
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
                self.list_requests += 1
                objs = await trio.to_thread.run_sync(
                    self.store.list_series, series.aws_bucket, series.crdc_series_uuid, limiter=self.limiter
                )
                entries += [(series, o) for o in objs]
            entries.sort(key=lambda e: e[1].name)
            files: dict[str, InstanceFile] = {}
            for series, obj in entries:
                if obj.name in files:  # same name in two series of one directory: keep the first
                    log.warning("duplicate file name %s in directory %d", obj.name, dir_id)
                    continue
                f = InstanceFile(self._next_ino, obj.name, obj.size, obj.mtime_ns, obj.etag, series)
                self._next_ino += 1
                self.files[f.ino] = f
                files[f.name] = f
            self._dirs[dir_id] = files
            return files
        finally:
            del self._pending[dir_id]
            event.set()
