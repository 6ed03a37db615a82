"""Background work (block loads, cache writes, prefetch, warming, upkeep) inside one error boundary.

pyfuse3 ends the mount when a task in its nursery raises. A background task is no handler, so the FUSE
boundary does not cover it: one unexpected exception in a cache write would end the mount right after a
read that succeeded. Every task started through `Background` that raises is logged, counted, and the
mount goes on. Cancellation passes through, so unmounting still stops everything.

Fault injection for tests: IDCFS_FAILPOINTS=name[:count][,...] makes `failpoint(name)` raise, the first
`count` times (default 1), in the process that reads the variable. No name is active by default.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import trio

log = logging.getLogger(__name__)

LOGGED_PER_TASK = 10  # tracebacks logged per kind of task; after that, only the count grows


class InjectedFault(RuntimeError):
    """Raised by an active failpoint."""


def _parse(text: str) -> dict[str, int]:
    points = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, count = item.partition(":")
        points[name] = int(count) if count.isdigit() else 1
    return points


_points = _parse(os.environ.get("IDCFS_FAILPOINTS", ""))
_points_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Raise InjectedFault if IDCFS_FAILPOINTS names this point and it has firings left."""
    if not _points:
        return
    with _points_lock:
        left = _points.get(name, 0)
        if left <= 0:
            return
        _points[name] = left - 1
    raise InjectedFault(f"failpoint {name}")


class Background:
    """Starts tasks in a nursery, each inside the boundary."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.errors = 0
        self._by_task: Counter[str] = Counter()

    def start_soon(self, fn, *args) -> None:
        self.nursery.start_soon(self._guarded, fn, args, name=getattr(fn, "__qualname__", repr(fn)))

    async def _guarded(self, fn, args) -> None:
        try:
            await fn(*args)
        except Exception:
            task = getattr(fn, "__qualname__", repr(fn))
            self.errors += 1
            self._by_task[task] += 1
            if self._by_task[task] <= LOGGED_PER_TASK:
                log.exception("background task %s failed; the mount goes on", task)
