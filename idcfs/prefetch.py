"""Warming the cache before a training run: `idcfs prefetch`.

Two ways in:
- paths inside a running mount: every file under them is read through the
  mount by parallel threads, which fills that mount's block cache (and the
  page cache);
- a selection (--manifest, --filter, --collection), no mount needed: the
  series are LISTed and their files downloaded by parallel GETs straight into
  the cache directory, which mounts using that directory then share.
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .cache import CacheDir, block_size
from .listing import keep_listing, stored_listing
from .namespace import Series
from .options import Options
from .store import MAX_GET, ObjectInfo, ObjectStore

READ_CHUNK = 1 << 20


@dataclass
class Summary:
    files: int = 0
    bytes: int = 0
    already_cached: int = 0
    failed: int = 0


def _files_under(paths: list[Path]) -> list[tuple[str, int]]:
    out = []
    for p in paths:
        if p.is_file():
            out.append((str(p), p.stat().st_size))
            continue
        for root, dirs, files in os.walk(p):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                out.append((path, os.stat(path).st_size))
    return out


def warm_paths(paths: list[Path], jobs: int, progress: bool = True) -> Summary:
    """Read every file under paths once, `jobs` files at a time."""
    files = _files_under(paths)
    summary = Summary(files=len(files))
    bar = tqdm(total=sum(s for _, s in files), unit="B", unit_scale=True, desc="prefetch", disable=not progress)

    def read(path: str) -> None:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(READ_CHUNK):
                bar.update(len(chunk))
                summary.bytes += len(chunk)

    with ThreadPoolExecutor(jobs) as pool:
        for fut in as_completed([pool.submit(read, path) for path, _ in files]):
            if fut.exception() is not None:
                summary.failed += 1
                tqdm.write(f"idcfs: {fut.exception()}")
    bar.close()
    return summary


def warm_selection(options: Options, jobs: int, progress: bool = True) -> Summary:
    """`idcfs prefetch --manifest/--filter/...`: every file of the selected series into the cache directory
    (UsageError for a bad selection), with the cap the last mount set."""
    series = options.namespace().all_series()
    store = options.store()
    cache = options.cache()
    try:
        return warm_series(cache, store, series, jobs, progress)
    finally:
        cache.close()


def warm_series(cache: CacheDir, store: ObjectStore, series: list[Series], jobs: int, progress=True) -> Summary:
    """LIST the series (or take their cached listing), then GET every file not fully cached."""
    summary = Summary()
    # Counted in memory and saved once at the end: a SQLite write per file, from every thread, made the
    # threads queue on the cache database's lock.
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def count(**deltas: int) -> None:
        with lock:
            counts.update(deltas)

    try:
        _warm_series(cache, store, series, jobs, progress, summary, count)
    finally:
        cache.meta.add_counters(dict(counts))
    return summary


def _warm_series(cache, store, series, jobs, progress, summary: Summary, count) -> None:
    def listing(s: Series) -> list[tuple[Series, ObjectInfo]]:
        known = stored_listing(cache.meta, s.crdc_series_uuid)
        if known is not None:
            return [(s, o) for o in known]
        objs = store.list_series(s.aws_bucket, s.crdc_series_uuid)
        if objs:  # an empty LIST may be a lagging mirror: ask again next time
            keep_listing(cache.meta, s.crdc_series_uuid, objs)
        count(list_requests=1)
        return [(s, o) for o in objs]

    files: list[tuple[Series, ObjectInfo]] = []
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(listing, s) for s in series]
        for fut in tqdm(as_completed(futures), total=len(futures), unit="series", desc="list", disable=not progress):
            if fut.exception() is not None:
                summary.failed += 1
                tqdm.write(f"idcfs: {fut.exception()}")
            else:
                files += fut.result()
    summary.files = len(files)

    bar = tqdm(total=sum(o.size for _, o in files), unit="B", unit_scale=True, desc="prefetch", disable=not progress)

    def fetch(s: Series, o: ObjectInfo) -> None:
        if cache.has(s.crdc_series_uuid, o.name, o.size):
            summary.already_cached += 1
            bar.update(o.size)
            return
        gets, bs = 0, block_size(o.size)
        step = max(bs, MAX_GET // bs * bs)
        for start in range(0, o.size, step):
            end = min(o.size, start + step)
            data = store.read(s.aws_bucket, f"{s.crdc_series_uuid}/{o.name}", start, end, o.size, o.md5)
            cache.put(s.crdc_series_uuid, o.name, o.size, bs, start // bs, data)
            gets += 1
            bar.update(len(data))
        summary.bytes += o.size
        count(get_requests=gets, bytes_fetched=o.size, misses=-(-o.size // bs))

    with ThreadPoolExecutor(jobs) as pool:
        for fut in as_completed([pool.submit(fetch, s, o) for s, o in files]):
            if fut.exception() is not None:
                summary.failed += 1
                tqdm.write(f"idcfs: {fut.exception()}")
    bar.close()
