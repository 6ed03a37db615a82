"""The block cache, readahead, prefetch and failover, on real mounts against the sandbox origins."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from idcfs.cache import BlockCache, block_key, parse_size
from idcfs.faultproxy import FaultProxy
from idcfs.sandbox import Sandbox, sha256_file

from .conftest import (
    by_modality,
    files_under,
    idcfs,
    mount_stats,
    origin_files,
    origin_sizes,
    read_all,
    series_dir,
    uuid_of,
)


def cache_stats(cache: Path) -> dict:
    r = idcfs("cache", "stats", "--json", "--cache-dir", cache)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def unmount(mnt: Path) -> None:
    r = idcfs("unmount", mnt)
    assert r.returncode == 0, r.stderr


def origin_size(state) -> int:
    return sum(origin_sizes(state).values())


def test_remount_with_both_origins_stopped_reads_from_cache(mount, sandbox, tmp_path):
    cache = tmp_path / "cache"
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        mnt = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
        assert read_all(mnt) == origin_files(sandbox)
        unmount(mnt)
    # The proxies are gone: for idcfs, both origins have stopped answering.
    mnt = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
    assert read_all(mnt) == origin_files(sandbox)
    assert subprocess.run(["find", str(mnt)], capture_output=True).returncode == 0
    s = mount_stats(mnt)
    assert (s["list_requests"], s["get_requests"], s["misses"], s["origin_errors"]) == (0, 0, 0, 0), s
    assert s["hits"] > 0


def test_corrupt_blocks_are_dropped_and_refetched(mount, sandbox, tmp_path):
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    unmount(mnt)
    values = sorted((cache / "blocks").rglob("*.val"))
    assert len(values) > 100
    for i, v in enumerate(values):
        data = bytearray(v.read_bytes())
        if i % 3 == 0:
            v.write_bytes(data[: len(data) // 2])  # truncated
        elif i % 3 == 1:
            data[len(data) // 2] ^= 0xFF  # one flipped bit pattern
            v.write_bytes(data)
        else:
            v.write_bytes(b"")  # emptied
    mnt = mount(cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    s = mount_stats(mnt)
    assert s["corrupt_blocks"] >= len(values), s
    assert s["get_requests"] > 0


def test_eviction_keeps_cache_under_cap(mount, sandbox, tmp_path):
    cap = 64 << 20
    assert origin_size(sandbox) > 2 * cap
    cache = tmp_path / "cache"
    mnt = mount("--cache-size", "64M", cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    unmount(mnt)
    stats = cache_stats(cache)
    assert stats["size_limit_bytes"] == cap
    assert 0 < stats["size_bytes"] <= cap, stats
    on_disk = sum(p.stat().st_size for p in (cache / "blocks").rglob("*") if p.is_file())
    assert on_disk <= cap * 1.05, on_disk


READER = textwrap.dedent(
    """
    import hashlib, json, random, sys
    paths = json.loads(sys.argv[1])
    random.Random(int(sys.argv[2])).shuffle(paths)
    out = {}
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        out[p] = h.hexdigest()
    print(json.dumps(out))
    """
)


def test_16_concurrent_reader_processes(mount, sandbox):
    mnt = mount()
    paths = files_under(mnt)
    want = {str(p): sandbox.objects[f"{_bucket(p)}/{uuid_of(p)}/{p.name}"] for p in paths}
    procs = [
        subprocess.Popen([sys.executable, "-c", READER, json.dumps(list(want)), str(seed)], stdout=subprocess.PIPE)
        for seed in range(16)
    ]
    browsing, done = [], threading.Event()

    def browse():  # ls -R and find, over and over, while the readers run
        while not done.is_set() or not browsing:
            for cmd in (["ls", "-R", str(mnt)], ["find", str(mnt)]):
                t = time.monotonic()
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
                browsing.append((r.returncode, r.stdout.count(".dcm"), time.monotonic() - t))

    browser = threading.Thread(target=browse)
    browser.start()
    try:
        for p in procs:
            out, _ = p.communicate(timeout=500)
            assert p.returncode == 0
            assert json.loads(out) == want
    finally:
        done.set()
        browser.join(120)
    assert {(rc, n) for rc, n, _ in browsing} == {(0, len(paths))}, browsing[:3]
    assert max(t for *_, t in browsing) < 5.0, browsing
    s = mount_stats(mnt)
    # Readers of the same block share one GET: each byte came from the origin about once.
    assert s["bytes_fetched"] <= 1.05 * origin_size(sandbox), s


def _bucket(p: Path) -> str:
    return os.getxattr(p, "user.idc.aws_bucket").decode()


def test_reads_continue_from_gcs_when_s3_stops(mount, sandbox, tmp_path):
    ct = by_modality(sandbox, "CT")  # the first CT: nlst, 122 instances
    uuid = ct["crdc_series_uuid"]
    objects = {k: v for k, v in sandbox.objects.items() if k.split("/")[1] == uuid}
    assert len(objects) > 100
    own = Sandbox(Path(sandbox.data_dir))  # a second S3 origin holding only this series, to stop mid-run
    own.start_s3()
    try:
        own.fill_s3(objects)
        manifest = tmp_path / "one.s5cmd"
        manifest.write_text(f"cp s3://{ct['aws_bucket']}/{uuid}/* .\n")
        mnt = mount(manifest=manifest, s3_endpoint=own.s3_endpoint)
        files = sorted(series_dir(mnt, uuid, sandbox).iterdir())
        half = len(files) // 2
        for p in files[:half]:
            assert sha256_file(p) == objects[f"{ct['aws_bucket']}/{uuid}/{p.name}"]
        assert mount_stats(mnt)["failovers"] == 0
        own.stop_one("s3")
        for p in files[half:]:
            assert sha256_file(p) == objects[f"{ct['aws_bucket']}/{uuid}/{p.name}"]
        s = mount_stats(mnt)
        assert s["failovers"] > 0 and s["origin_errors"] == 0, s
    finally:
        own.stop()


def test_wsidicom_tile_fetches_under_2_percent(mount, sandbox):
    from wsidicom import WsiDicom

    with FaultProxy(sandbox.s3_endpoint) as proxy:
        mnt = mount(s3_endpoint=proxy.url)
        d = series_dir(mnt, by_modality(sandbox, "SM")["crdc_series_uuid"], sandbox)
        biggest = max(d.iterdir(), key=lambda p: p.stat().st_size)
        assert biggest.stat().st_size > 200 << 20
        proxy.reset_counters()
        with WsiDicom.open(d) as wsi:
            tile = wsi.read_tile(0, (3, 4))
            assert tile.size == (256, 256)
        c = proxy.counters
        # Counted on the wire: headers of both levels, offsets, one 192 KiB tile.
        assert c.body_bytes < 0.02 * biggest.stat().st_size, c.body_bytes
        assert c.authorized == 0
        # Large instances are direct I/O: a private mapping still works (a shared one is ENODEV).
        with open(biggest, "rb") as f, mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE, mmap.PROT_READ) as m:
            assert m[128:132] == b"DICM"


def test_small_instance_is_one_get_and_series_is_prefetched(mount, sandbox):
    mnt = mount()
    d = series_dir(mnt, by_modality(sandbox, "CT")["crdc_series_uuid"], sandbox)
    files = sorted(d.iterdir())
    with open(files[0], "rb") as f:
        assert len(f.read(4096)) == 4096
    s = mount_stats(mnt)
    assert (s["get_requests"], s["bytes_fetched"]) == (1, files[0].stat().st_size), s
    for p in files:  # in order, as cp -r and dcm2niix do
        p.read_bytes()
    s = mount_stats(mnt)
    assert s["prefetched_files"] > len(files) // 2, s
    assert s["bytes_fetched"] == sum(p.stat().st_size for p in files), s  # each file fetched once


def test_header_scan_fetches_heads_then_whole_reads_are_exact(mount, sandbox):
    import pydicom

    from idcfs.readpath import HEAD

    mnt = mount()
    uuid = by_modality(sandbox, "CT")["crdc_series_uuid"]
    files = sorted(series_dir(mnt, uuid, sandbox).iterdir())
    origin = {p.name: p for p in (Path(sandbox.data_dir) / "gcs").glob(f"*/{uuid}/*.dcm")}
    for p in files:  # as a cohort table is built: headers only, in order
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds == pydicom.dcmread(origin[p.name], stop_before_pixels=True)
    s = mount_stats(mnt)
    whole = sum(p.stat().st_size for p in files)
    # The first files are fetched whole, until two partial reads in a row show a header scan.
    assert s["bytes_fetched"] < 0.5 * whole, s
    assert s["bytes_fetched"] >= (len(files) - PREFETCH_BURST) * HEAD, s
    # Now whole reads of the same files: exact bytes, and the mode switches back to whole files.
    for p in files:
        assert sha256_file(p) == origin_files(sandbox)[f"{uuid}/{p.name}"]
    assert mount_stats(mnt)["bytes_fetched"] < s["bytes_fetched"] + whole + HEAD * 4


PREFETCH_BURST = 10  # files opened or prefetched whole before the scan is recognised


def test_prefetch_selection_then_mount_offline(sandbox, mount, tmp_path):
    cache = tmp_path / "cache"
    r = idcfs(
        "prefetch", "-q", "--manifest", sandbox.manifest, "--cache-dir", cache,
        "--s3-endpoint", sandbox.s3_endpoint, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"prefetched {len(sandbox.objects)} files" in r.stdout
    stats = cache_stats(cache)
    assert stats["bytes_fetched"] == origin_size(sandbox) and stats["series_listed"] == len(sandbox.series)
    again = idcfs(
        "prefetch", "-q", "--manifest", sandbox.manifest, "--cache-dir", cache, "--s3-endpoint", "http://127.0.0.1:9"
    )
    assert again.returncode == 0 and f"{len(sandbox.objects)} already cached" in again.stdout, (
        again.stdout + again.stderr
    )
    mnt = mount(cache_dir=cache, s3_endpoint="http://127.0.0.1:9", gcs_endpoint="http://127.0.0.1:9")
    assert read_all(mnt) == origin_files(sandbox)
    unmount(mnt)
    r = idcfs("cache", "clear", "--cache-dir", cache)
    assert r.returncode == 0 and "cleared" in r.stdout
    stats = cache_stats(cache)
    assert (stats["blocks"], stats["series_listed"], stats["bytes_fetched"]) == (0, 0, 0)


def test_prefetch_paths_and_stats_command(mount, sandbox):
    mnt = mount()
    d = series_dir(mnt, by_modality(sandbox, "MR")["crdc_series_uuid"], sandbox)
    r = idcfs("prefetch", "-q", d)
    assert r.returncode == 0, r.stderr
    size = sum(p.stat().st_size for p in d.iterdir())
    r = idcfs("stats", mnt, "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["bytes_fetched"] == size
    r = idcfs("stats", mnt)
    assert "bytes_fetched" in r.stdout and "in_flight" in r.stdout
    r = idcfs("stats", mnt.parent)  # not a mount
    assert r.returncode == 2 and "not a running idcfs mount" in r.stderr
    r = idcfs("prefetch", "-q", mnt / "nope")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_full_cache_disk_streams_uncached(mount, sandbox, tmp_path):
    cache = tmp_path / "small"
    cache.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(cache)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        log_file = tmp_path / "idcfs.log"  # not on the full disk
        mnt = mount("--log-file", log_file, cache_dir=cache)
        assert read_all(mnt) == origin_files(sandbox)
        unmount(mnt)
        log = log_file.read_text()
        assert log.count("reads go on uncached") == 1, log[-2000:]
    finally:
        subprocess.run(["umount", "-l", str(cache)])


# -- units


def test_parse_size():
    assert parse_size("10G") == 10 << 30
    assert parse_size("500MiB") == 500 << 20
    assert parse_size("1.5k") == 1536
    assert parse_size("4096") == 4096
    for bad in ("", "ten", "10X", "-1G", "1e9", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_block_cache_rejects_damaged_values(tmp_path):
    cache = BlockCache(tmp_path, 1 << 30)
    key = block_key("s", "f.dcm", 100_000, 0)
    data = os.urandom(100_000)
    cache.put(key, data)
    assert cache.get(key, len(data)) == data
    assert cache.get(key, len(data) - 1) is None  # a different length is damage too
    cache.put(key, data)
    (val,) = tmp_path.rglob("*.val")
    val.write_bytes(val.read_bytes()[:-1])
    assert cache.get(key, len(data)) is None and cache.corrupt == 2
    assert not cache.has(key)
    other = block_key("s", "g.dcm", 100_000, 0)
    cache.put(key, data)
    cache.put(other, os.urandom(100_000))
    a, b = sorted(tmp_path.rglob("*.val"))
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)  # values swapped between keys
    b.write_bytes(a_bytes)
    assert cache.get(key, len(data)) is None and cache.get(other, 100_000) is None


def test_damaged_cache_database_is_one_line_error(sandbox, tmp_path):
    cache = tmp_path / "cache"
    (cache / "blocks").mkdir(parents=True)
    (cache / "blocks" / "cache.db").write_text("not a database")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = idcfs("mount", mnt, "--cache-dir", cache, "--manifest", sandbox.manifest, "--s3-endpoint", sandbox.s3_endpoint)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cache directory" in r.stderr, r.stderr
    assert not os.path.ismount(mnt)
    for size in ("lots", "10Q", "1M"):
        r = idcfs("mount", mnt, "--cache-dir", tmp_path / "c2", "--cache-size", size)
        assert r.returncode == 2 and "--cache-size" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_touch_handles_blocks_kept_inline(tmp_path):
    """diskcache keeps values under 32 KiB inside SQLite, as bytes: touch() used to fail on them and lose the batch."""
    cache = BlockCache(tmp_path / "blocks", 64 << 20)
    small, big = b"s" * 100, b"b" * (100 << 10)
    cache.put("small@0x100", small)
    cache.put("big@0x102400", big)
    assert bytes(cache.get("small@0x100", len(small))) == small
    assert bytes(cache.get("big@0x102400", len(big))) == big
    cache.touch()  # raised AttributeError: 'bytes' object has no attribute 'close'
    cache.close()
