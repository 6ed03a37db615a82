"""Faulty origins, crashes and shared caches, against the real sandbox servers through a fault proxy and real mounts."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idcfs.cache import WHOLE_FILE
from idcfs.testing.faultproxy import FAULTS, FaultProxy
from idcfs.testing.sandbox import read_uncached

from ..conftest import files_under, idcfs, mount_stats, origin_files, read_all, series_dir, uuid_of
from ..engine.test_faults import sha

TIMEOUT = 3.0  # --timeout of the mounts below
# A read syscall fails within this: one deadline per provider, and the kernel may ask twice.
EIO_BOUND = 2 * 2 * TIMEOUT + 2
# 10,000 in `make soak`; fewer in CI, where the run must stay short.
FAULT_READS = int(os.environ.get("IDCFS_FAULT_READS", "2000"))


def expected(sandbox, path: Path) -> str:
    return origin_files(sandbox)[f"{uuid_of(path)}/{path.name}"]


def fault_mount(mount, s3: FaultProxy, gcs: FaultProxy, *extra, **kw) -> Path:
    return mount("--timeout", str(TIMEOUT), *extra, s3_endpoint=s3.url, gcs_endpoint=gcs.url, **kw)


def test_ten_percent_faults_give_exact_bytes_or_eio(mount, sandbox):
    """Every kind of fault on 10% of requests to both origins: each read is exact or a clean EIO."""
    with FaultProxy(sandbox.s3_endpoint, seed=1) as s3, FaultProxy(sandbox.gcs_endpoint, seed=2) as gcs:
        # No block cache and little memory: every read below reaches the origin.
        mnt = fault_mount(mount, s3, gcs, "--cache-size", "0", "--memory", "16M")
        files = [p for p in files_under(mnt) if p.stat().st_size <= WHOLE_FILE]
        want = {p: expected(sandbox, p) for p in files}
        for proxy in (s3, gcs):
            proxy.fault_rate, proxy.faults, proxy.stall_seconds = 0.1, FAULTS, 4 * TIMEOUT
            proxy.reset_counters()
        order = [files[i % len(files)] for i in range(FAULT_READS)]

        def one(p: Path) -> str:
            try:
                data = read_uncached(p)
            except OSError as e:
                return "eio" if e.errno == errno.EIO else f"errno {e.errno}"
            return "ok" if sha(data) == want[p] else f"wrong: {len(data)} of {p.stat().st_size} bytes"

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(one, order))
        faults = s3.counters.faults + gcs.counters.faults
        gets = s3.counters.gets + gcs.counters.gets
    print(f"{FAULT_READS} reads: {outcomes.count('ok')} exact, {outcomes.count('eio')} EIO; "
          f"{gets} GETs, {faults} faults injected")  # fmt: skip
    bad = [o for o in outcomes if o not in ("ok", "eio")]
    assert not bad, bad[:5]
    assert gets >= FAULT_READS and faults > gets * 0.05, (gets, faults)  # the reads really met the faults
    assert outcomes.count("eio") <= FAULT_READS * 0.01, outcomes.count("eio")  # retries mostly succeed


def test_all_requests_failing_gives_eio_in_bounded_time_then_recovers(mount, sandbox):
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        mnt = fault_mount(mount, s3, gcs)
        series = sorted({p.parent for p in files_under(mnt)})
        files = [sorted(d.iterdir())[0] for d in series][:5]
        unlisted = series_dir(mnt, "af22bfc6-52aa-4202-a34e-3a65994dc3c7", sandbox)
        fresh = fault_mount(mount, s3, gcs)  # to list a series for the first time
        unlisted = fresh / unlisted.relative_to(mnt)
        for proxy in (s3, gcs):
            proxy.fault_rate, proxy.faults, proxy.stall_seconds = 1.0, FAULTS, 60.0
        took = []
        for p in files:
            t = time.monotonic()
            with pytest.raises(OSError) as e:
                read_uncached(p)
            took.append(time.monotonic() - t)
            assert e.value.errno == errno.EIO, p
        t = time.monotonic()
        with pytest.raises(OSError) as e:
            os.listdir(unlisted)
        assert e.value.errno == errno.EIO
        took.append(time.monotonic() - t)
        assert max(took) < EIO_BOUND, took
        assert os.listdir(mnt) and os.path.ismount(mnt)  # still up
        for proxy in (s3, gcs):
            proxy.fault_rate = 0.0
        t = time.monotonic()
        for p in files:
            assert sha(read_uncached(p)) == expected(sandbox, p)
        assert os.listdir(unlisted)
        assert time.monotonic() - t < 10  # at once: a failed read is not remembered
        print(f"EIO after {min(took):.2f}-{max(took):.2f} s (bound {EIO_BOUND:.0f} s at --timeout {TIMEOUT:.0f})")


def test_a_stalled_series_does_not_block_other_reads(mount, sandbox):
    slow = 9.0  # a stalled GET is given up after slow / 3 and tried again
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        mnt = mount("--timeout", str(slow), s3_endpoint=s3.url, gcs_endpoint=gcs.url)
        by_series: dict[Path, list[Path]] = {}
        for p in files_under(mnt):  # lists every series
            by_series.setdefault(p.parent, []).append(p)
        dirs = sorted(d for d, fs in by_series.items() if len(fs) >= 2 and fs[0].stat().st_size <= WHOLE_FILE)
        stalled, other = dirs[0], dirs[1]
        cached = by_series[other][0]
        assert sha(read_uncached(cached)) == expected(sandbox, cached)
        for proxy in (s3, gcs):
            proxy.only = uuid_of(stalled)
            proxy.fault_rate, proxy.faults, proxy.stall_seconds = 1.0, ("stall",), 60.0
        results: dict[Path, str] = {}

        def reader(p):
            try:
                results[p] = sha(read_uncached(p))
            except OSError as e:
                results[p] = f"errno {e.errno}"

        readers = [threading.Thread(target=reader, args=(p,)) for p in by_series[stalled][:4]]
        for r in readers:
            r.start()
        time.sleep(0.5)

        def exact(p: Path) -> bool:
            return sha(read_uncached(p)) == expected(sandbox, p)

        checks = {
            "cached file": lambda: exact(cached),
            "uncached file": lambda: all(exact(p) for p in by_series[other][1:3]),
            "a third series": lambda: all(exact(p) for p in by_series[dirs[2]][:1]),
            "find": lambda: subprocess.run(["find", str(mnt)], capture_output=True).returncode == 0,
            "ls of the stalled series": lambda: len(os.listdir(stalled)) == len(by_series[stalled]),
            "stats": lambda: mount_stats(mnt)["in_flight"] >= 1,
        }  # fmt: skip
        for what, check in checks.items():
            t = time.monotonic()
            assert check(), what
            assert time.monotonic() - t < 2.0, (what, time.monotonic() - t)
        assert all(r.is_alive() for r in readers)  # the stalled reads really are stalled
        for proxy in (s3, gcs):
            proxy.fault_rate = 0.0
        for r in readers:
            r.join(2 * slow + 5)
            assert not r.is_alive()
    assert results == {p: expected(sandbox, p) for p in by_series[stalled][:4]}


def test_kill_9_during_reads_then_remount_with_valid_cache(sandbox, tmp_path):
    mnt, cache = tmp_path / "m", tmp_path / "cache"
    mnt.mkdir()
    args = ["mount", str(mnt), "--cache-dir", str(cache), "--manifest", str(sandbox.manifest)]
    args += ["--s3-endpoint", sandbox.s3_endpoint, "--gcs-endpoint", sandbox.gcs_endpoint]
    daemon = subprocess.Popen([sys.executable, "-m", "idcfs", *args, "--foreground"])
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert time.monotonic() < deadline and daemon.poll() is None
            time.sleep(0.05)
        files = files_under(mnt)
        random.Random(0).shuffle(files)
        outcomes: list[str] = []

        def reader(part):
            for p in part:
                try:
                    outcomes.append("ok" if sha(read_uncached(p)) == expected(sandbox, p) else "wrong")
                except OSError as e:
                    outcomes.append(errno.errorcode.get(e.errno, str(e.errno)))

        readers = [threading.Thread(target=reader, args=(files[i::4],)) for i in range(4)]
        for r in readers:
            r.start()
        while len(outcomes) < 40:
            time.sleep(0.01)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        for r in readers:
            r.join(30)
            assert not r.is_alive(), "a reader hangs after kill -9"
    finally:
        daemon.kill()
    assert "wrong" not in outcomes
    assert set(outcomes) - {"ok"} <= {"ENOTCONN", "ECONNABORTED"}, set(outcomes)
    assert outcomes.count("ok") < len(files)  # the kill did interrupt reading
    # The next mount on the same mountpoint cleans up the dead one; the cache it left is sound.
    r = idcfs(*args)
    assert r.returncode == 0, r.stderr
    try:
        assert read_all(mnt) == origin_files(sandbox)
        s = mount_stats(mnt)
        assert s["corrupt_blocks"] == 0 and s["hits"] > 0, s
    finally:
        idcfs("unmount", mnt)


def test_two_mounts_share_one_cache(mount, sandbox, tmp_path):
    cache = tmp_path / "shared"
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        a = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
        b = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
        jobs = []
        for m, seed in ((a, 1), (b, 2), (a, 3), (b, 4)):
            files = files_under(m)
            random.Random(seed).shuffle(files)
            jobs.append(files)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda fs: {p: sha(read_uncached(p)) == expected(sandbox, p) for p in fs}, jobs))
        assert all(all(r.values()) for r in results)
        assert s3.counters.gets < 2 * len(jobs[0])  # the mounts fetched for each other
        for m in (a, b):
            assert idcfs("unmount", m).returncode == 0
    # Both origins are gone now: a third mount is served from the shared cache alone, all of it intact.
    c = mount(cache_dir=cache, s3_endpoint=s3.url, gcs_endpoint=gcs.url)
    assert read_all(c) == origin_files(sandbox)
    s = mount_stats(c)
    assert (s["get_requests"], s["corrupt_blocks"]) == (0, 0), s


def test_a_flipped_byte_is_never_served_or_cached(mount, sandbox, tmp_path):
    """An origin that inverts one byte of a body and keeps its length: the MD5 the LIST published catches it."""
    cache = tmp_path / "shared"
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        mnt = fault_mount(mount, s3, gcs, cache_dir=cache)
        small = [p for p in files_under(mnt) if p.stat().st_size <= WHOLE_FILE]  # listed before any fault
        dirs = sorted({p.parent for p in small}, key=lambda d: -len(list(d.iterdir())))
        first = sorted(dirs[0].iterdir())[:20]
        others = [sorted(d.iterdir())[0] for d in dirs[1:]]  # first opens of a directory: nothing prefetched
        want = {p: expected(sandbox, p) for p in first + others}
        s3.fault_rate, s3.faults = 1.0, ("flip",)
        # AWS flips every body: each whole-file GET is checked, fetched once more, then read from GCS.
        for p in first:
            assert sha(read_uncached(p)) == want[p], p
        stats = mount_stats(mnt)
        # Each checked twice at AWS, until its circuit breaker sends the rest straight to GCS.
        assert stats["origin_corrupt_bodies"] >= 2 * 3 and stats["failovers"] >= 20, stats
        # Both origins flip: EIO, and nothing is cached; once they mend, the same reads are exact.
        gcs.fault_rate, gcs.faults = 1.0, ("flip",)
        for p in others:
            with pytest.raises(OSError) as e:
                read_uncached(p)
            assert e.value.errno == errno.EIO, p
        s3.fault_rate = gcs.fault_rate = 0.0
        for p in others:
            assert sha(read_uncached(p)) == want[p], p
        deadline = time.monotonic() + 30
        while mount_stats(mnt)["unstored_bytes"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert idcfs("unmount", mnt).returncode == 0
    # Offline, on the same cache: everything read above is served from it, and is right.
    dead = "http://127.0.0.1:1"
    offline = mount(cache_dir=cache, s3_endpoint=dead, gcs_endpoint=dead, name="offline")
    for p in first + others:
        q = offline / p.relative_to(mnt)
        assert sha(read_uncached(q)) == want[p], q
