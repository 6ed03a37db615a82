"""Background work (block loads, cache writes, prefetch, warming, upkeep) inside one error boundary.

pyfuse3 ends the mount when a task in its nursery raises. A background task is no handler, so the FUSE
boundary does not cover it: one unexpected exception in a cache write would end the mount right after a
read that succeeded. Every task started through `Background` that raises is logged, counted, and the
mount goes on. Cancellation passes through, so unmounting still stops everything.

Blocking work nobody waits for (cache writes) runs in worker threads of its own, under the same boundary:
handing it to a thread pool costs a fraction of a trio thread hop, and its end wakes no event loop.

Fault injection for tests: IDCFS_FAILPOINTS=name[:count][,...] makes `failpoint(name)` raise, the first
`count` times (default 1), in the process that reads the variable. No name is active by default.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import trio

log = logging.getLogger(__name__)

LOGGED_PER_TASK = 10  # tracebacks logged per kind of task; after that, only the count grows
WRITER_THREADS = 8  # for blocking work nobody waits for: enough to overlap fsyncs


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
    """Starts tasks in a nursery, or blocking calls in worker threads, each inside the boundary."""

    def __init__(self, nursery: trio.Nursery):
        self.nursery = nursery
        self.errors = 0
        self._by_task: Counter[str] = Counter()
        self._lock = threading.Lock()  # errors are counted from worker threads too
        self._threads: ThreadPoolExecutor | None = None

    def start_soon(self, fn, *args) -> None:
        self.nursery.start_soon(self._guarded, fn, args, name=getattr(fn, "__qualname__", repr(fn)))

    def in_thread(self, fn, *args) -> bool:
        """Call blocking fn(*args) in a worker thread; nothing waits for it but close(). False if it was not
        started: the process is shutting down."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(WRITER_THREADS, thread_name_prefix="idcfs-write")
        try:
            self._threads.submit(self._guarded_call, fn, args)
        except RuntimeError:  # after close(), or at interpreter exit (concurrent.futures refuses new work)
            return False
        return True

    def close(self) -> None:
        """Wait for the blocking calls queued (cache writes of bytes already fetched: at most the backlog)."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)

    async def _guarded(self, fn, args) -> None:
        try:
            await fn(*args)
        except Exception:
            self._failed(fn)

    def _guarded_call(self, fn, args) -> None:
        try:
            fn(*args)
        except Exception:
            self._failed(fn)

    def _failed(self, fn) -> None:
        task = getattr(fn, "__qualname__", repr(fn))
        with self._lock:
            self.errors += 1
            self._by_task[task] += 1
            logged = self._by_task[task] <= LOGGED_PER_TASK
        if logged:
            log.exception("background task %s failed; the mount goes on", task)
