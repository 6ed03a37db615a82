"""The read path: turn a (file, offset, size) read into ranged GETs, and check what comes back.

A read returns exactly the bytes asked for (clipped at end of file) or raises;
a short or long body from the origin is never passed on.
"""

from __future__ import annotations

import logging

import trio

from .listing import InstanceFile
from .store import ObjectStore, StoreError

log = logging.getLogger(__name__)


class Reader:
    def __init__(self, store: ObjectStore, limiter: trio.CapacityLimiter):
        self.store = store
        self.limiter = limiter
        self.get_requests = 0
        self.bytes_fetched = 0

    async def read(self, f: InstanceFile, offset: int, size: int) -> bytes:
        if offset >= f.size or size <= 0:
            return b""
        end = min(offset + size, f.size)
        self.get_requests += 1
        data = await trio.to_thread.run_sync(
            self.store.read, f.series.aws_bucket, f.key, offset, end, limiter=self.limiter
        )
        self.bytes_fetched += len(data)
        if len(data) != end - offset:
            raise StoreError(f"GET {f.key} [{offset}, {end}) returned {len(data)} bytes")
        return data
