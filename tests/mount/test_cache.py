"""The block cache, readahead, prefetch and failover, on real mounts against the sandbox origins."""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idcfs.readpolicy import PREFETCH_FILES
from idcfs.testing.faultproxy import FaultProxy
from idcfs.testing.sandbox import Sandbox, sha256_file

from ..conftest import (
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


def instance_files(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "files").glob("*/*") if not p.name.startswith(".") and p.suffix != ".head")


def test_damaged_instance_files_are_dropped_and_refetched(mount, sandbox, tmp_path):
    """The warm tier's plain files: each kind of damage is caught at load, the file refetched, never served."""
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    unmount(mnt)
    files = instance_files(cache)
    assert len(files) > 100
    for p in files:  # each holds exactly the instance's bytes: what FUSE passthrough needs
        assert sha256_file(p) == origin_files(sandbox)[f"{p.parent.name}/{p.name}"]
    damaged = files[:60]
    for i, p in enumerate(damaged):
        data = bytearray(p.read_bytes())
        kind = i % 6
        if kind == 0:  # truncated in place (the digest stays)
            with open(p, "r+b") as f:
                f.truncate(len(data) // 2)
        elif kind == 1:  # one byte flipped in place
            with open(p, "r+b") as f:
                f.seek(len(data) // 2)
                f.write(bytes([data[len(data) // 2] ^ 0xFF]))
        elif kind == 2:  # a byte appended
            with open(p, "ab") as f:
                f.write(b"\0")
        elif kind == 3:  # rewritten whole: a new file with no digest
            p.write_bytes(bytes(data))
            os.removexattr(p, "user.idcfs.xxh3") if "user.idcfs.xxh3" in os.listxattr(p) else None
        elif kind == 4:  # emptied
            with open(p, "r+b") as f:
                f.truncate(0)
        else:  # swapped with the next one, digests and all
            q = damaged[i - 1]
            tmp = p.with_name(".swap")
            os.rename(p, tmp)
            os.rename(q, p)
            os.rename(tmp, q)
    mnt = mount(cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    s = mount_stats(mnt)
    assert s["corrupt_blocks"] >= len(damaged), s
    assert s["get_requests"] >= len(damaged) and s["hits"] > 0, s
    unmount(mnt)
    for p in instance_files(cache):  # refetched whole, and nothing damaged left behind
        assert sha256_file(p) == origin_files(sandbox)[f"{p.parent.name}/{p.name}"]


def test_eviction_keeps_cache_under_cap(mount, sandbox, tmp_path):
    cap = 64 << 20
    assert origin_size(sandbox) > 2 * cap
    cache = tmp_path / "cache"
    mnt = mount("--cache-size", "64M", cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    unmount(mnt)
    deadline = time.monotonic() + 10  # the daemon's last upkeep may still be running after the unmount
    while (stats := cache_stats(cache))["size_bytes"] > cap and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stats["size_limit_bytes"] == cap
    assert 0 < stats["size_bytes"] <= cap, stats
    on_disk = sum(p.stat().st_size for d in ("blocks", "files") for p in (cache / d).rglob("*") if p.is_file())
    sizes = {d: sum(p.stat().st_size for p in (cache / d).rglob("*") if p.is_file()) for d in ("blocks", "files")}
    assert on_disk <= cap * 1.05, (sizes, stats)
    assert stats["instance_files"] == len(instance_files(cache))


def test_two_mounts_share_a_cache_while_one_evicts(mount, sandbox, tmp_path):
    """A small cap: both mounts write and evict in the shared directory, each reading what the other
    deletes under it; every read is exact, and the directory ends under the cap."""
    cap = 64 << 20
    cache = tmp_path / "shared"
    a = mount("--cache-size", "64M", cache_dir=cache)
    b = mount("--cache-size", "64M", cache_dir=cache)
    want = origin_files(sandbox)
    jobs = []
    for m, seed in ((a, 1), (b, 2), (a, 3), (b, 4)):
        files = files_under(m) * 2
        random.Random(seed).shuffle(files)
        jobs.append(files)

    def check(paths):
        return [p for p in paths if sha256_file(p) != want[f"{uuid_of(p)}/{p.name}"]]

    with ThreadPoolExecutor(4) as pool:
        wrong = [p for bad in pool.map(check, jobs) for p in bad]
    assert not wrong, wrong[:5]
    time.sleep(3)  # one more upkeep round in each mount
    for m in (a, b):
        unmount(m)
    on_disk = sum(p.stat().st_size for d in ("blocks", "files") for p in (cache / d).rglob("*") if p.is_file())
    assert on_disk <= cap * 1.1, on_disk
    c = mount(cache_dir=cache)
    assert read_all(c) == want
    assert mount_stats(c)["corrupt_blocks"] == 0


def test_kill_9_during_cache_writes_leaves_nothing_torn(sandbox, mount, tmp_path):
    """`idcfs prefetch` writes the cache as fast as it can; killed at five moments, then a mount offline
    serves only whole entries (and refetches nothing it has not got)."""
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "idcfs", "prefetch", "-q", "--manifest", str(sandbox.manifest),
            "--cache-dir", str(cache), "--s3-endpoint", sandbox.s3_endpoint]  # fmt: skip
    rng = random.Random(7)
    for i in range(5):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not i and not instance_files(cache) and time.monotonic() < deadline:  # a loaded machine starts slowly
            time.sleep(0.05)
        time.sleep(rng.uniform(1.0, 3.0))
        p.send_signal(signal.SIGKILL)
        p.wait()
    files = instance_files(cache)
    assert 0 < len(files) < len(sandbox.objects)
    for p in files:  # an entry in place is whole: written to a temporary name, fsynced, then renamed
        assert sha256_file(p) == origin_files(sandbox)[f"{p.parent.name}/{p.name}"]
    mnt = mount(cache_dir=cache)
    assert read_all(mnt) == origin_files(sandbox)
    s = mount_stats(mnt)
    assert s["corrupt_blocks"] == 0 and s["hits"] >= len(files), s


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
        # Reading files in order prefetches up to PREFETCH_FILES ahead; stopping S3 after the first 8 leaves
        # files no prefetch has started, whatever the timing, so some reads must go to GCS.
        first = 8
        assert first + PREFETCH_FILES < len(files)
        for p in files[:first]:
            assert sha256_file(p) == objects[f"{ct['aws_bucket']}/{uuid}/{p.name}"]
        assert mount_stats(mnt)["failovers"] == 0
        own.stop_one("s3")
        for p in files[first:]:
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

    from idcfs.readpolicy import HEAD

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


def test_heads_persist_and_damaged_heads_are_refetched(mount, sandbox, tmp_path):
    """A header scan keeps its heads in the cache directory: a remount with both origins stopped scans
    again from them; a damaged head is caught, refetched and never served."""
    import pydicom

    cache = tmp_path / "cache"
    uuid = by_modality(sandbox, "CT")["crdc_series_uuid"]
    origin = {p.name: p for p in (Path(sandbox.data_dir) / "gcs").glob(f"*/{uuid}/*.dcm")}

    def scan(mnt) -> None:
        for p in sorted(series_dir(mnt, uuid, sandbox).iterdir()):
            assert pydicom.dcmread(p, stop_before_pixels=True) == pydicom.dcmread(
                origin[p.name], stop_before_pixels=True
            )

    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        mnt = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
        scan(mnt)
        unmount(mnt)
    heads = sorted((cache / "files" / uuid).glob("*.head"))
    assert len(heads) >= len(origin) - PREFETCH_BURST
    mnt = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)  # both origins gone
    scan(mnt)
    s = mount_stats(mnt)
    # (The series prefetch may still try whole files the first scan had only the heads of: origin_errors.)
    assert (s["get_requests"], s["corrupt_blocks"]) == (0, 0) and s["hits"] >= len(heads), s
    unmount(mnt)
    for p in heads[:5]:
        data = p.read_bytes()
        with open(p, "r+b") as f:
            f.seek(200)
            f.write(bytes([data[200] ^ 0xFF]))
    # Passthrough off: files opened through it show the daemon no reads, so the scan would be recognised
    # later, and files fetched whole before it (without reading the damaged heads).
    mnt = mount("--passthrough", "off", cache_dir=cache)
    scan(mnt)
    s = mount_stats(mnt)
    assert s["corrupt_blocks"] == 5 and 5 <= s["get_requests"] <= 8, s


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
