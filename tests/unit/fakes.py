"""Stand-ins for the origin and the tree, for unit tests of the read path without servers."""

from __future__ import annotations

import random

import trio

from idcfs.listing import InstanceFile
from idcfs.namespace import Series
from idcfs.store import StoreError

BUCKET = "idc-open-data"


def content(key: str, size: int) -> bytes:
    """The bytes of object `key`: the same every time, different for every key and offset."""
    return random.Random(key).randbytes(size)


def series_files(sizes: list[int], uuid: str = "series-1", dir_id: int = 1) -> list[InstanceFile]:
    """The files of one leaf directory, by name, of the given sizes."""
    series = Series(row=dir_id - 1, crdc_series_uuid=uuid, aws_bucket=BUCKET)
    return [
        InstanceFile(
            ino=(dir_id << 24) + i,
            name=f"{i:05d}.dcm",
            size=size,
            mtime_ns=0,
            etag=f"etag{i}",
            md5="",
            series=series,
            dir_id=dir_id,
            index=i,
        )
        for i, size in enumerate(sizes)
    ]


class FakeStore:
    """ObjectStore.aread over deterministic bytes, recording every GET as (bucket, key, start, end).

    gate: while set and not yet triggered, GETs wait on it (to hold requests in flight).
    failures: that many next GETs raise StoreError, after waiting at the gate."""

    def __init__(self):
        self.requests: list[tuple[str, str, int, int]] = []
        self.gate: trio.Event | None = None
        self.failures = 0
        self._bodies: dict[str, bytes] = {}

    def body(self, key: str, size: int) -> bytes:
        if key not in self._bodies:
            self._bodies[key] = content(key, size)
        return self._bodies[key]

    async def aread(self, aws_bucket: str, key: str, start: int, end: int, size: int | None = None, md5: str = ""):
        assert size is not None and 0 <= start < end <= size, (key, start, end, size)
        self.requests.append((aws_bucket, key, start, end))
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise StoreError(f"GET {aws_bucket}/{key} [{start}, {end}): injected")
        return self.body(key, size)[start:end]

    def ranges(self, f: InstanceFile) -> list[tuple[int, int]]:
        """The ranges of f asked for so far, sorted."""
        return sorted((s, e) for _, k, s, e in self.requests if k == f.key)
