"""The read policies call by call, then the Reader carrying them out against a fake store (no servers)."""

from __future__ import annotations

import itertools

import pytest
import trio
import trio.testing

from idcfs.background import Background
from idcfs.cache import BLOCK_SIZE, WHOLE_FILE, CacheDir
from idcfs.readpath import MEMORY, Reader
from idcfs.readpolicy import (
    FIRST_WINDOW,
    HEAD,
    HEADER_STREAK,
    MAX_WINDOW,
    PREFETCH_BUDGET,
    PREFETCH_FILES,
    READAHEAD_AFTER,
    SCATTERED,
    WARM_PER_OPEN,
    HeaderStreak,
    OpenFile,
    Readahead,
    SeriesPrefetch,
    nblocks,
)
from idcfs.store import MAX_GET, StoreError

from .fakes import BUCKET, FakeStore, content, series_files

MiB = 1 << 20
SMALL = 100 << 10  # a CT slice: one block, larger than HEAD


def _never(i):
    return False


# -- readahead


def _read_in_order(ra: Readahead, of: OpenFile, chunk: int = MiB) -> list[list[int]]:
    """The extra blocks readahead asks for on each read of the whole file in order."""
    return [ra.read(of, off, min(off + chunk, of.file.size), _never) for off in range(0, of.file.size, chunk)]


def test_sequential_reads_open_a_window_that_doubles_up_to_the_max():
    (f,) = series_files([200 * MiB])
    ra = Readahead(MEMORY)
    assert ra.max_window == MAX_WINDOW
    windows = [w for w in _read_in_order(ra, OpenFile(f)) if w]
    first = READAHEAD_AFTER // BLOCK_SIZE
    # Nothing until READAHEAD_AFTER bytes were read in order; then windows right behind each other, each
    # twice the last, up to MAX_WINDOW, the last one clipped at the end of the file.
    assert windows[0][0] == first
    assert [b for w in windows for b in w] == list(range(first, nblocks(f)))
    sizes = [len(w) for w in windows]
    step = FIRST_WINDOW // BLOCK_SIZE
    expected = [min(step << k, MAX_WINDOW // BLOCK_SIZE) for k in range(len(sizes) - 1)]
    assert sizes[:-1] == expected and sizes[-1] <= expected[-1]
    assert sizes[:6] == [8, 16, 32, 64, 128, 256]


def test_the_window_is_at_most_a_quarter_of_memory():
    (f,) = series_files([100 * MiB])
    ra = Readahead(16 * MiB)
    assert max(len(w) for w in _read_in_order(ra, OpenFile(f))) == 4 * MiB // BLOCK_SIZE


def test_small_reads_and_a_seek_reset_the_window():
    (f,) = series_files([100 * MiB])
    ra, of = Readahead(MEMORY), OpenFile(f)
    # Header reads stay small: less than READAHEAD_AFTER in order asks for nothing more.
    assert ra.read(of, 0, 4096, _never) == []
    assert ra.read(of, 4096, MiB, _never) == []
    assert ra.read(of, MiB, 2 * MiB, _never) == list(range(8, 16))
    assert ra.read(of, 2 * MiB, 3 * MiB, _never) == list(range(16, 32))
    assert of.window == 4 * FIRST_WINDOW
    # A seek (a WSI tile elsewhere) fetches only what it reads, and starts over.
    assert ra.read(of, 50 * MiB, 50 * MiB + 200_000, _never) == []
    assert of.window == FIRST_WINDOW and of.streak == 200_000
    b = (50 * MiB + 200_000 - 1) // BLOCK_SIZE + 1
    off = 50 * MiB + 200_000
    assert ra.read(of, off, off + READAHEAD_AFTER, _never) == list(range(b + 8, b + 16))


def test_a_jump_behind_blocks_fetched_lately_continues_their_stream():
    """Readers sharing the page cache see only pages still missing: a jump to just past blocks another
    reader fetched is read ahead at once."""
    (f,) = series_files([100 * MiB])
    ra = Readahead(MEMORY)
    b0 = 40
    assert ra.read(OpenFile(f), b0 * BLOCK_SIZE, (b0 + 1) * BLOCK_SIZE, lambda i: i == b0 - 1) == list(
        range(b0 + 1, b0 + 1 + FIRST_WINDOW // BLOCK_SIZE)
    )
    assert ra.read(OpenFile(f), b0 * BLOCK_SIZE, (b0 + 1) * BLOCK_SIZE, _never) == []


# -- series prefetch


def _names(fetches) -> list[int]:
    return [x.file.index for x in fetches]


def test_opens_in_name_order_prefetch_the_next_files_with_a_ramping_depth():
    files = series_files([SMALL] * 200)
    sp = SeriesPrefetch()
    started = [_names(sp.opened(f, files)) for f in files[:7]]
    assert started[0] == []  # one open is no order yet
    assert started[1] == list(range(2, 10))  # 8 ahead of file 1
    assert started[2] == list(range(10, 19))  # 16 ahead of file 2
    assert started[3] == list(range(19, 36))  # 32
    assert started[4] == list(range(36, 69))  # PREFETCH_FILES
    assert started[5] == [69] and started[6] == [70]  # then one per open, PREFETCH_FILES ahead
    assert 70 - 6 == PREFETCH_FILES
    assert sp.in_flight == 71 * SMALL - 2 * SMALL
    # Large instances are not prefetched: they have readahead.
    files = series_files([SMALL, SMALL, SMALL, WHOLE_FILE + 1, SMALL], dir_id=2)
    sp.opened(files[0], files)
    assert _names(sp.opened(files[1], files)) == [2]


def test_the_budget_stops_prefetch_until_fetches_end():
    files = series_files([WHOLE_FILE] * 100)
    sp = SeriesPrefetch()
    fetches = [x for f in files[:4] for x in sp.opened(f, files)]
    fit = PREFETCH_BUDGET // WHOLE_FILE
    assert _names(fetches) == list(range(2, 2 + fit))
    assert sp.in_flight == PREFETCH_BUDGET
    assert sp.opened(files[4], files) == []
    for x in fetches[:3]:
        sp.ended(x)
    assert sp.in_flight == PREFETCH_BUDGET - 3 * WHOLE_FILE
    assert _names(sp.opened(files[5], files)) == [2 + fit, 3 + fit, 4 + fit]  # where it stopped


def test_local_opens_skip_files_already_in_the_cache_directory():
    files = series_files([SMALL] * 20)
    sp = SeriesPrefetch()
    on_disk = {3, 4, 7}
    sp.opened(files[0], files, local=True, on_disk=lambda g: g.index in on_disk)
    fetches = sp.opened(files[1], files, local=True, on_disk=lambda g: g.index in on_disk)
    assert _names(fetches) == [2, 5, 6, 8, 9]
    assert _names(sp.opened(files[2], files, local=True, on_disk=lambda g: g.index in on_disk)) == list(range(10, 19))


def test_nothing_starts_where_the_caller_cannot_start_it():
    files = series_files([SMALL] * 20)
    sp = SeriesPrefetch()
    assert [sp.opened(f, files, prefetch=False) for f in files[:5]] == [[]] * 5
    assert sp.in_flight == 0


# -- header streaks


def test_partial_closes_switch_to_heads_and_one_whole_read_switches_back():
    files = series_files([SMALL] * 10)
    hs = HeaderStreak()

    def close(f, read_to):
        of = OpenFile(f, heads=hs.scanning())
        of.read_to = read_to
        hs.closed(of)
        return of

    for f in files[:HEADER_STREAK]:
        assert not hs.scanning()
        close(f, 4096)  # dcmread(stop_before_pixels=True)
    assert hs.scanning()
    of = OpenFile(files[5], heads=hs.scanning())
    assert HeaderStreak.head_only(of, 16 << 10) and HeaderStreak.head_only(of, HEAD)
    assert not HeaderStreak.head_only(of, HEAD + 1)
    # Nothing is learned from a file read from the page cache, or one no larger than its head.
    close(files[6], 0)
    close(series_files([HEAD])[0], HEAD)
    assert hs.scanning()
    close(files[7], SMALL)  # one whole read
    assert not hs.scanning()
    assert not HeaderStreak.head_only(OpenFile(files[8], heads=hs.scanning()), 4096)


def test_during_a_header_scan_the_series_prefetch_fetches_heads():
    files = series_files([SMALL] * 20 + [HEAD // 2])
    sp = SeriesPrefetch()
    sp.opened(files[0], files, heads=True)
    fetches = sp.opened(files[1], files, heads=True)
    assert _names(fetches) == list(range(2, 10))
    assert {x.cost for x in fetches} == {HEAD} and sp.in_flight == 8 * HEAD
    fetches = sp.opened(files[2], files, heads=True) + sp.opened(files[3], files, heads=True)
    assert _names(fetches) == list(range(10, 21))
    last = fetches[-1]
    assert last.file.size < HEAD and last.cost == last.file.size  # a file smaller than a head is fetched whole


# -- scattered reads


def test_scattered_whole_reads_after_a_fetched_file_start_warming():
    files = series_files([SMALL] * 40)
    sp = SeriesPrefetch()
    known = {10}
    kw = dict(known=lambda g: g.index in known)
    assert sp.opened(files[10], files, **kw) == []
    sp.fetched(files[10])  # it came from the origin: the directory is not all cached
    assert sp.opened(files[30], files, **kw) == []
    assert SCATTERED == 3
    first = sp.opened(files[5], files, **kw)
    assert _names(first) == [0, 1, 2, 3, 4, 6, 7, 8]  # not the opened file
    assert len(first) == WARM_PER_OPEN and all(x.warm and x.cost == SMALL for x in first)
    assert _names(sp.opened(files[20], files, **kw)) == [9, 11, 12, 13, 14, 15, 16, 17]  # 10 is at hand
    # An open in order goes to the in-order prefetch instead.
    fetches = sp.opened(files[21], files, **kw)
    assert _names(fetches) == list(range(22, 30)) and not any(x.warm for x in fetches)


@pytest.mark.parametrize("why", ["nothing fetched", "partial reads", "header scan", "no cache directory"])
def test_scattered_reads_do_not_warm(why):
    files = series_files([SMALL] * 40)
    sp = SeriesPrefetch()
    kw = dict(last_read_whole=why != "partial reads", heads=why == "header scan", warm=why != "no cache directory")
    for i in (10, 30, 5, 20, 1):
        assert sp.opened(files[i], files, **kw) == []
        if why != "nothing fetched":
            sp.fetched(files[i])


def test_warming_stays_within_the_budget():
    files = series_files([WHOLE_FILE] * 100)
    sp = SeriesPrefetch()
    sp.in_flight = PREFETCH_BUDGET - 2 * WHOLE_FILE  # an in-order prefetch elsewhere
    for i in (50, 80):
        sp.opened(files[i], files)
        sp.fetched(files[i])
    assert _names(sp.opened(files[60], files)) == [0, 1]
    assert sp.in_flight == PREFETCH_BUDGET


# -- the Reader carrying them out


def _run(test, cache: CacheDir | None = None, store: FakeStore | None = None):
    """Run test(reader, store) in trio, with the reader's background tasks in a nursery of its own."""
    store = store or FakeStore()

    async def main():
        with trio.fail_after(30):
            await _in_nursery()

    async def _in_nursery():
        async with trio.open_nursery() as nursery:
            r = Reader(store, cache, trio.CapacityLimiter(8))
            r.attach(Background(nursery))
            await test(r, store)
            await _settle(r)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return store


async def _settle(r: Reader) -> None:
    """Wait for the reader's background loads, prefetches and cache writes to end."""
    while r._flights or r.in_flight or r.unstored or r.series.in_flight:
        await trio.sleep(0.005)
    await trio.testing.wait_all_tasks_blocked()


async def _read_whole(r: Reader, f, siblings, chunk: int = MiB) -> bytes:
    of = r.open(f, siblings)
    data = b"".join([bytes(await r.read(of, off, chunk)) for off in range(0, f.size, chunk)])
    r.close(of)
    return data


def test_reading_a_large_file_in_order_issues_the_readahead_gets():
    files = series_files([40 * MiB])
    (f,) = files

    async def test(r, store):
        assert await _read_whole(r, f, files) == content(f.key, f.size)

    store = _run(test)
    # Demand reads until READAHEAD_AFTER; then windows of 2, 4, 8, 16 (two GETs of MAX_GET), 32 MiB (the rest).
    assert MAX_GET == 8 * MiB
    cuts = [0, 1, 2, 4, 8, 16, 24, 32, 40]
    assert store.ranges(f) == [(a * MiB, b * MiB) for a, b in itertools.pairwise(cuts)]


def test_a_seek_fetches_only_the_blocks_it_reads():
    files = series_files([40 * MiB])
    (f,) = files

    async def test(r, store):
        of = r.open(f, files)
        await r.read(of, 0, 4096)
        await r.read(of, 30 * MiB + 200_000, 128 << 10)  # across two blocks
        await _settle(r)

    store = _run(test)
    assert store.ranges(f) == [(0, BLOCK_SIZE), (30 * MiB, 30 * MiB + 2 * BLOCK_SIZE)]


def test_in_order_opens_of_small_files_fetch_the_next_ones_once():
    files = series_files([SMALL + i for i in range(10)])

    async def test(r, store):
        for f in files:
            assert await _read_whole(r, f, files) == content(f.key, f.size)
        await _settle(r)
        assert r.prefetched_files == 8  # 2..9, on the open of file 1
        assert r.series.in_flight == 0  # the budget is given back

    store = _run(test)
    assert sorted(store.requests) == [(BUCKET, f.key, 0, f.size) for f in files]


def test_a_header_scan_through_the_reader_fetches_heads():
    files = series_files([SMALL] * 20)

    async def test(r, store):
        for f in files:
            of = r.open(f, files)
            assert bytes(await r.read(of, 0, 4096)) == content(f.key, f.size)[:4096]
            r.close(of)
        await _settle(r)
        # The scan's first files were fetched whole; once it was recognised, only heads.
        assert r.headers.scanning()
        for f in files[:2]:
            assert await _read_whole(r, f, files) == content(f.key, f.size)
        assert not r.headers.scanning()

    store = _run(test)
    got = {f.index: store.ranges(f) for f in files}
    assert got == {f.index: [(0, SMALL)] if f.index < 10 else [(0, HEAD)] for f in files}


def test_concurrent_readers_of_one_block_share_one_get():
    files = series_files([SMALL])
    (f,) = files
    store = FakeStore()
    store.gate = trio.Event()
    got = []

    async def test(r, store):
        async def reader(offset):
            got.append(bytes(await r.read(r.open(f, files), offset, 4096)))

        async with trio.open_nursery() as readers:
            for k in range(5):
                readers.start_soon(reader, k * 4096)
            await trio.testing.wait_all_tasks_blocked()
            assert len(store.requests) == 1
            store.gate.set()

    _run(test, store=store)
    assert store.requests == [(BUCKET, f.key, 0, f.size)]
    assert sorted(got) == sorted(content(f.key, f.size)[k * 4096 : (k + 1) * 4096] for k in range(5))


def test_a_failing_get_fails_all_its_waiters_and_the_next_read_retries():
    files = series_files([SMALL])
    (f,) = files
    store = FakeStore()
    store.gate, store.failures = trio.Event(), 1
    errors = []

    async def test(r, store):
        async def reader():
            try:
                await r.read(r.open(f, files), 0, 4096)
            except StoreError as e:
                errors.append(e)

        async with trio.open_nursery() as readers:
            for _ in range(3):
                readers.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
        assert len(errors) == 3 and "injected" in str(errors[0])
        assert bytes(await r.read(r.open(f, files), 0, 4096)) == content(f.key, f.size)[:4096]

    _run(test, store=store)
    assert store.requests == [(BUCKET, f.key, 0, f.size)] * 2


def test_fetched_bytes_land_in_the_cache_directory(tmp_path):
    files = series_files([SMALL, 20 * MiB])
    small, large = files
    cache = CacheDir(tmp_path / "cache")
    try:

        async def test(r, store):
            await r.read(r.open(small, files), 0, 4096)
            await r.read(r.open(large, files), 0, MiB)

        _run(test, cache)
        uuid = small.series.crdc_series_uuid
        assert cache.whole(uuid, small.name, small.size) == content(small.key, small.size)
        assert not cache.has(uuid, large.name, large.size)

        # A second reader over the same directory reads them without a GET.
        async def again(r, store):
            assert bytes(await r.read(r.open(small, files), 0, SMALL)) == content(small.key, small.size)
            assert bytes(await r.read(r.open(large, files), 0, MiB)) == content(large.key, large.size)[:MiB]
            assert r.hits == 1 + MiB // BLOCK_SIZE

        assert _run(again, cache).requests == []
    finally:
        cache.close()


def test_shuffled_whole_reads_warm_the_rest_of_the_directory(tmp_path):
    files = series_files([SMALL] * 30)
    cache = CacheDir(tmp_path / "cache")
    try:

        async def test(r, store):
            for i in (10, 25, 5):
                assert await _read_whole(r, files[i], files) == content(files[i].key, SMALL)
            await _settle(r)
            assert r.prefetched_files == WARM_PER_OPEN

        store = _run(test, cache)
        uuid = files[0].series.crdc_series_uuid
        warmed = [0, 1, 2, 3, 4, 6, 7, 8]  # started on the third open, in order, skipping the opened file
        assert sorted(k for _, k, _, _ in store.requests) == sorted(files[i].key for i in [10, 25, 5, *warmed])
        assert all(cache.has_whole(uuid, files[i].name, SMALL) for i in warmed)
    finally:
        cache.close()
