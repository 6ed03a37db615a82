"""The read path: turn (open file, offset, size) reads into ranged GETs, and check what comes back.

Each open file keeps the last range it fetched. A read that continues where
the previous one ended is sequential: the fetch window doubles from 1 MiB up
to 16 MiB (so a whole-file reader makes few requests), and any seek resets it
(so a reader of one tile fetches only that tile). A read returns exactly the
bytes asked for, clipped at end of file, or raises: a short or long body from
the origin is never passed on.
"""

from __future__ import annotations

import logging

import trio

from .listing import InstanceFile
from .store import ObjectStore, StoreError

log = logging.getLogger(__name__)

FIRST_WINDOW = 1 << 20
MAX_WINDOW = 16 << 20


class OpenFile:
    def __init__(self, f: InstanceFile):
        self.file = f
        self.buf = b""
        self.buf_start = 0
        self.next_offset = 0  # where a sequential read would continue
        self.window = FIRST_WINDOW
        self.lock = trio.Lock()


class Reader:
    def __init__(self, store: ObjectStore, limiter: trio.CapacityLimiter):
        self.store = store
        self.limiter = limiter
        self.get_requests = 0
        self.bytes_fetched = 0

    async def read(self, of: OpenFile, offset: int, size: int) -> bytes:
        f = of.file
        if offset >= f.size or size <= 0:
            return b""
        end = min(offset + size, f.size)
        async with of.lock:
            buf_end = of.buf_start + len(of.buf)
            if not (of.buf_start <= offset and end <= buf_end):
                sequential = offset == of.next_offset
                if sequential:
                    fetch_end = min(f.size, max(end, offset + of.window))
                    of.window = min(of.window * 2, MAX_WINDOW)
                else:
                    fetch_end = end
                    of.window = FIRST_WINDOW
                of.buf = await self.fetch(f, offset, fetch_end)
                of.buf_start = offset
            of.next_offset = end
            return of.buf[offset - of.buf_start : end - of.buf_start]

    async def fetch(self, f: InstanceFile, start: int, end: int) -> bytes:
        self.get_requests += 1
        data = await trio.to_thread.run_sync(
            self.store.read, f.series.aws_bucket, f.key, start, end, limiter=self.limiter
        )
        self.bytes_fetched += len(data)
        if len(data) != end - start:
            raise StoreError(f"GET {f.key} [{start}, {end}) returned {len(data)} bytes")
        return data
