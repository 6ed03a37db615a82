"""The read path: (open file, offset, size) -> bytes, from memory, the block cache or ranged GETs.

A file is cut in blocks (cache.block_size): an instance up to WHOLE_FILE bytes
(most CT and MR) is a single block, fetched whole in one GET on first touch;
a larger one is cut in BLOCK_SIZE blocks. Blocks are looked up in a small
memory LRU (the kernel asks in pieces of up to 1 MiB), then in the persistent block
cache, then fetched.

What else to fetch is decided by the policies in readpolicy.py, asked on
every read, open and close: a readahead window for a sequential reader of a
large instance (fetched as parallel GETs of at most MAX_GET), the heads of
small files during a header scan, and the next files of a directory read in
order or the rest of one read whole in no order (series prefetch, with its
own connection limits). A file warmed for scattered reads is first claimed in
the cache directory, so processes sharing it (DataLoader workers on idc://,
two mounts) do not fetch it twice.

A block being loaded is shared: concurrent readers wait for the one disk-cache
read or GET.
Fetched blocks are written to the disk cache in the background, up to
STORE_BACKLOG bytes waiting, so a slow disk bounds memory, not the reader. A read
returns exactly the bytes asked for, clipped at end of file, or raises
StoreError (EIO): a short or wrong-sized body is never passed on.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
from collections import OrderedDict

import trio

from .background import Background, failpoint
from .cache import WHOLE_FILE, CacheDir, MetaCache, block_key, block_size
from .listing import InstanceFile
from .readpolicy import HEAD, HeaderStreak, OpenFile, Readahead, SeriesPrefetch, SiblingFetch, nblocks
from .store import MAX_GET, ObjectStore, StoreError

log = logging.getLogger(__name__)

MEMORY = 256 << 20
PREFETCH_CONNECTIONS = 32
WARM_CONNECTIONS = 16  # fewer than demand reads get: warming must not delay what a reader waits for
CLAIM_SECONDS = 60.0
OTHER_FETCH_WAIT = 5.0  # longest wait for another process's fetch of a small file before fetching it here
OTHER_FETCH_POLL = 0.02
STORE_BACKLOG = 128 << 20  # fetched bytes waiting for the disk cache; beyond this they are not cached


class _Flight:
    """One GET in flight and the blocks it will deliver."""

    __slots__ = ("done", "blocks", "error")

    def __init__(self):
        self.done = trio.Event()
        self.blocks: dict[int, bytes | memoryview] = {}
        self.error: BaseException | None = None

    async def result(self, i: int) -> bytes | memoryview:
        """Block i once the flight is over, or StoreError if it failed."""
        await self.done.wait()
        if i not in self.blocks:
            raise StoreError(str(self.error) or type(self.error).__name__)
        return self.blocks[i]

    @contextlib.contextmanager
    def recording_failure(self):
        """A failure inside is kept for the waiters; only cancellation propagates."""
        try:
            yield
        except BaseException as e:
            self.error = e
            if not isinstance(e, Exception):
                raise
            log.warning("%s", e)


class _Memory:
    """Recently used blocks, least recently used dropped first, within a byte budget."""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        self._blocks: OrderedDict[str, bytes] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._blocks

    def get(self, key: str) -> bytes | None:
        data = self._blocks.get(key)
        if data is not None:
            self._blocks.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        old = self._blocks.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._blocks[key] = data
        self.size += len(data)
        while self.size > self.budget:
            _, dropped = self._blocks.popitem(last=False)
            self.size -= len(dropped)


def _key(f: InstanceFile, i: int) -> str:
    return block_key(f.series.crdc_series_uuid, f.name, block_size(f.size), i)


def _runs(indexes: list[int], max_blocks: int):
    """Consecutive block indexes grouped into [lo, hi) runs of at most max_blocks."""
    for _, group in itertools.groupby(enumerate(sorted(indexes)), key=lambda p: p[1] - p[0]):
        run = [i for _, i in group]
        for k in range(0, len(run), max_blocks):
            part = run[k : k + max_blocks]
            yield part[0], part[-1] + 1


class Reader:
    def __init__(
        self,
        store: ObjectStore,
        cache: CacheDir | None,
        limiter: trio.CapacityLimiter,
        memory: int = MEMORY,
        claims: MetaCache | None = None,
    ):
        self.store = store
        self.cache = cache
        self.claims = claims
        self.limiter = limiter
        self.prefetch_limiter = trio.CapacityLimiter(PREFETCH_CONNECTIONS)
        self.warm_limiter = trio.CapacityLimiter(WARM_CONNECTIONS)
        self.disk = trio.CapacityLimiter(16)
        self.memory = _Memory(memory)
        self.readahead = Readahead(memory)
        self.headers = HeaderStreak()
        self.series = SeriesPrefetch()
        self.background: Background | None = None  # set by attach(); background GETs and cache writes run there
        self._flights: dict[str, _Flight] = {}
        self._unstored = 0  # bytes fetched and not yet written to the disk cache
        self._unstored_lock = threading.Lock()  # writer threads take theirs off
        # counters
        self.get_requests = 0
        self.bytes_fetched = 0
        self.in_flight = 0
        self.hits = 0  # blocks found in the disk cache
        self.fetched_elsewhere = 0  # small files another process sharing the cache directory fetched
        self.misses = 0  # blocks fetched from the origin
        self.memory_hits = 0
        self.prefetched_files = 0
        self.bytes_read = 0

    @property
    def unstored(self) -> int:
        """Bytes fetched and not yet written to the disk cache."""
        return self._unstored

    def attach(self, background: Background) -> None:
        self.background = background
        if self.cache is not None:
            background.start_soon(self._touch_every, 2.0)

    async def _touch_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            try:
                failpoint("touch")
                await trio.to_thread.run_sync(self.cache.touch, limiter=self.disk)
            except Exception as e:
                log.warning("cache access times not saved: %s", e)

    # -- reads

    async def read(self, of: OpenFile, offset: int, size: int) -> bytes | memoryview:
        f = of.file
        if offset >= f.size or size <= 0:
            return b""
        end = min(offset + size, f.size)
        of.read_to = max(of.read_to, end)
        if self.headers.head_only(of, end) and not self._known(f, 0):
            self.bytes_read += end - offset
            return memoryview(await self._head(f, self.limiter))[offset:end]
        extra = self.readahead.read(of, offset, end, functools.partial(self._known, f))
        bs = block_size(f.size)
        b0, b1 = offset // bs, (end - 1) // bs + 1
        try:
            blocks = await self._blocks(f, range(b0, b1), extra, self.limiter)
        except StoreError:
            # The whole small file could not be fetched: a read within its head is served from a cached head
            # (an offline mount's header scan, say), but makes no GET of its own: the error stands.
            if not (end <= HEAD < f.size <= WHOLE_FILE and self._head_at_hand(f)):
                raise
            self.bytes_read += end - offset
            return memoryview(await self._head(f, self.limiter))[offset:end]
        self.bytes_read += end - offset
        first, last = memoryview(blocks[0]), memoryview(blocks[-1])
        if len(blocks) == 1:
            return first[offset - b0 * bs : end - b0 * bs]
        return b"".join([first[offset - b0 * bs :], *blocks[1:-1], last[: end - (b1 - 1) * bs]])

    def _start(self, f: InstanceFile, indexes, limiter) -> dict[int, bytes | memoryview | _Flight]:
        """Each of `indexes`: its bytes if in memory, else the flight that will deliver it (started here if none)."""
        out: dict[int, bytes | memoryview | _Flight] = {}
        todo: list[int] = []
        for i in indexes:
            k = _key(f, i)
            data = self.memory.get(k)
            if data is not None:
                out[i] = data
            elif k in self._flights:
                out[i] = self._flights[k]
            else:
                todo.append(i)
        if todo:
            # One flight per GET-sized run, so a reader waits only for the run holding its block.
            runs = [(lo, hi, _Flight()) for lo, hi in _runs(todo, max(1, MAX_GET // block_size(f.size)))]
            for lo, hi, flight in runs:
                for i in range(lo, hi):
                    self._flights[_key(f, i)] = out[i] = flight
            self.background.start_soon(self._load, f, runs, limiter)
        return out

    async def _blocks(self, f: InstanceFile, need: range, extra: list[int], limiter) -> list[bytes | memoryview]:
        """Blocks `need` of f; blocks `extra` are only started, not waited for."""
        if extra:
            self._start(f, extra, limiter)
        out = []
        started = self._start(f, need, limiter)
        for i in need:
            got = started[i]
            if isinstance(got, _Flight):
                got = await got.result(i)
            else:
                self.memory_hits += 1
            out.append(got)
        return out

    def _head_at_hand(self, f: InstanceFile) -> bool:
        uuid = f.series.crdc_series_uuid
        return block_key(uuid, f.name, HEAD, 0) in self.memory or (
            self.cache is not None and self.cache.may_hold_head(uuid, f.name, f.size)
        )

    def _known(self, f: InstanceFile, i: int) -> bool:
        """Block i was fetched or is being fetched lately."""
        k = _key(f, i)
        return k in self._flights or k in self.memory

    def _from_disk(self, f: InstanceFile, indexes: list[int]) -> dict[int, bytes | memoryview]:
        if f.size <= WHOLE_FILE:  # one block, 0: the instance file
            data = self.cache.whole(f.series.crdc_series_uuid, f.name, f.size)
            return {} if data is None else {0: data}
        bs = block_size(f.size)
        found = {}
        for i in indexes:
            data = self.cache.blocks.get(_key(f, i), min(bs, f.size - i * bs))
            if data is not None:
                found[i] = data
        return found

    async def _load(self, f: InstanceFile, runs: list[tuple[int, int, _Flight]], limiter) -> None:
        """Background task: the runs' blocks from the disk cache (one thread hop), the rest by GET."""
        try:
            failpoint("load")
            found: dict[int, memoryview] = {}
            # A small file not in the instance files (a stat, here) needs no thread hop to find that out.
            if self.cache is not None and self.cache.may_hold(f.series.crdc_series_uuid, f.name, f.size):
                wanted = [i for lo, hi, _ in runs for i in range(lo, hi)]
                found = await trio.to_thread.run_sync(self._from_disk, f, wanted, limiter=self.disk)
                self.hits += len(found)
            async with trio.open_nursery() as nursery:
                for lo, hi, flight in runs:
                    for i in range(lo, hi):
                        if i in found:
                            self._deliver(f, i, found[i], flight)
                    missing = [i for i in range(lo, hi) if i not in found]
                    if missing:
                        nursery.start_soon(self._fetch, f, missing, flight, limiter)
                    else:
                        self._land(f, range(lo, hi), flight)
        except BaseException as e:  # failed or cancelled: waiters must not wait forever
            for lo, hi, flight in runs:
                if not flight.done.is_set():
                    flight.error = e
                    self._land(f, range(lo, hi), flight)
            raise

    def _deliver(self, f: InstanceFile, i: int, data, flight: _Flight) -> None:
        k = _key(f, i)
        flight.blocks[i] = data
        self.memory.put(k, data)
        self._forget(k, flight)

    def _forget(self, k: str, flight: _Flight) -> None:
        """Drop k's flight entry if it is still this flight's (a later flight may have taken the key)."""
        if self._flights.get(k) is flight:
            del self._flights[k]

    def _land(self, f: InstanceFile, indexes, flight: _Flight) -> None:
        """The flight is over for these blocks, delivered or not: wake its waiters."""
        for i in indexes:
            self._forget(_key(f, i), flight)
        flight.done.set()

    async def _fetch(self, f: InstanceFile, missing: list[int], flight: _Flight, limiter) -> None:
        """Ranged GETs for the missing blocks of one flight. Never raises; waiters see flight.error."""
        uuid, bs = f.series.crdc_series_uuid, block_size(f.size)
        self.series.fetched(f)
        # A small file another process sharing the cache directory is fetching (a DataLoader worker, a Ray
        # worker, a second mount) is waited for, not fetched twice.
        claimed = self.cache is not None and f.size <= WHOLE_FILE and missing == [0]
        if claimed and not self.cache.claim_whole(uuid, f.name, f.size):
            claimed = False
            data = await self._fetched_elsewhere(f)
            if data is not None:
                self.hits += 1
                self.fetched_elsewhere += 1
                self._deliver(f, 0, data, flight)
                self._land(f, missing, flight)
                return
        self.in_flight += 1
        try:
            with flight.recording_failure():
                for lo, hi in _runs(missing, len(missing)):
                    start, end = lo * bs, min(hi * bs, f.size)
                    async with limiter:
                        data = await self.store.aread(f.series.aws_bucket, f.key, start, end, f.size, f.md5)
                    self.get_requests += 1
                    self.bytes_fetched += len(data)
                    self.misses += hi - lo
                    failpoint("fetch")
                    for i in range(lo, hi):
                        # A copy: a view would keep the whole GET buffer alive while --memory counts one block.
                        part = data[(i - lo) * bs : (i - lo + 1) * bs] if hi - lo > 1 else data
                        self._deliver(f, i, part, flight)
                    stored = self._store_later(uuid, f.name, f.size, bs, lo, data, claimed)
                    claimed = claimed and not stored  # the store releases it
        finally:
            self.in_flight -= 1
            if claimed:  # not fetched, or not to be stored: others need not wait for it
                self.cache.release_whole(uuid, f.name, f.size)
            self._land(f, missing, flight)

    async def _fetched_elsewhere(self, f: InstanceFile) -> bytes | None:
        """The file another process fetches, once it is in the cache directory; None if that process gave
        up, or took longer than OTHER_FETCH_WAIT."""
        uuid, name, size = f.series.crdc_series_uuid, f.name, f.size
        deadline = trio.current_time() + OTHER_FETCH_WAIT
        while trio.current_time() < deadline:
            await trio.sleep(OTHER_FETCH_POLL)
            if self.cache.has_whole(uuid, name, size):
                return await trio.to_thread.run_sync(self.cache.whole, uuid, name, size, limiter=self.disk)
            if not self.cache.fetching_elsewhere(uuid, name, size):
                return None
        return None

    def _store_later(
        self,
        uuid: str,
        name: str,
        size: int,
        bs: int,
        first: int,
        data: bytes,
        claimed: bool = False,
        head: bool = False,
    ) -> bool:
        """Store data in a writer thread; True if it will be (the store then releases the claim)."""
        if self.cache is None or self._unstored + len(data) > STORE_BACKLOG:
            return False
        with self._unstored_lock:
            self._unstored += len(data)
        if self.background.in_thread(self._store, uuid, name, size, bs, first, data, claimed, head):
            return True
        with self._unstored_lock:
            self._unstored -= len(data)
        return False

    def _store(
        self, uuid: str, name: str, size: int, bs: int, first: int, data: bytes, claimed: bool, head: bool
    ) -> None:
        try:
            failpoint("store")
            if head:
                self.cache.put_head(uuid, name, size, data)
            else:
                self.cache.put(uuid, name, size, bs, first, data)
        finally:
            with self._unstored_lock:
                self._unstored -= len(data)
            if claimed:
                self.cache.release_whole(uuid, name, size)

    # -- heads: the first HEAD bytes of a small file, cached as a block of their own

    async def _head(self, f: InstanceFile, limiter) -> bytes | memoryview:
        k = block_key(f.series.crdc_series_uuid, f.name, HEAD, 0)
        data = self.memory.get(k)
        if data is not None:
            self.memory_hits += 1
            return data
        flight = self._flights.get(k)
        if flight is None:
            flight = self._flights[k] = _Flight()
            self.background.start_soon(self._load_head, f, k, flight, limiter)
        return await flight.result(0)

    async def _load_head(self, f: InstanceFile, k: str, flight: _Flight, limiter) -> None:
        try:
            failpoint("head")
            with flight.recording_failure():
                data = None
                uuid = f.series.crdc_series_uuid
                # A head never cached is known without a thread hop (a stat or two), and fetched at once.
                if self.cache is not None and self.cache.may_hold_head(uuid, f.name, f.size):
                    data = await trio.to_thread.run_sync(self.cache.head, uuid, f.name, f.size, HEAD, limiter=self.disk)
                if data is not None:
                    self.hits += 1
                else:
                    async with limiter:
                        data = await self.store.aread(f.series.aws_bucket, f.key, 0, HEAD, f.size)
                    self.get_requests += 1
                    self.bytes_fetched += len(data)
                    self.misses += 1
                    self._store_later(uuid, f.name, f.size, HEAD, 0, data, head=True)
                flight.blocks[0] = data
                self.memory.put(k, data)
        finally:
            self._forget(k, flight)
            flight.done.set()

    # -- open and close

    def open(self, f: InstanceFile, siblings: list[InstanceFile], local: bool = False) -> OpenFile:
        """local: the opener reads files held whole in the cache directory itself (FUSE passthrough, idc://),
        so the series prefetch leaves those files on disk instead of loading them here."""
        of = OpenFile(f, heads=self.headers.scanning())
        self.opened(f, siblings, of.heads, local)
        return of

    def close(self, of: OpenFile) -> None:
        """Learn from what the reader read: only the start of small files means a header scan."""
        self.headers.closed(of)

    # -- series prefetch

    def opened(self, f: InstanceFile, siblings: list[InstanceFile], heads: bool = False, local: bool = False) -> None:
        """Note that f was opened, and start the fetches of its siblings the series prefetch asks for."""
        attached = self.background is not None
        fetches = self.series.opened(
            f,
            siblings,
            heads,
            local,
            last_read_whole=self.headers.partial == 0,
            prefetch=attached,
            warm=attached and self.cache is not None,
            on_disk=self._held_whole,
            known=lambda g: self._known(g, 0),
        )
        for fetch in fetches:
            self.background.start_soon(self._prefetch, fetch)

    def _held_whole(self, f: InstanceFile) -> bool:
        return self.cache is not None and self.cache.has_whole(f.series.crdc_series_uuid, f.name, f.size)

    def _worth_fetching(self, f: InstanceFile) -> bool:
        """Not in the disk cache, and no other process sharing it is fetching it."""
        uuid = f.series.crdc_series_uuid
        return not self.cache.has(uuid, f.name, f.size) and (
            self.claims is None or self.claims.claim(_key(f, 0), CLAIM_SECONDS)
        )

    async def _prefetch(self, fetch: SiblingFetch) -> None:
        f, warming = fetch.file, fetch.warm
        limiter = self.warm_limiter if warming else self.prefetch_limiter
        try:
            failpoint("warm" if warming else "prefetch")  # outside the handler below: the boundary's to catch
            try:
                if warming and not await trio.to_thread.run_sync(self._worth_fetching, f, limiter=self.disk):
                    return
                if fetch.cost < f.size:
                    await self._head(f, limiter)
                else:
                    await self._blocks(f, range(nblocks(f)), [], limiter)
                self.prefetched_files += 1
            except Exception as e:  # a demand read will try again and report it
                log.debug("prefetch of %s: %s", f.key, e)
        finally:
            self.series.ended(fetch)
