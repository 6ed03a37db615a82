"""FUSE passthrough on real mounts: the kernel reads cached instances from their files, no READ reaches the
daemon, and the kernel's rules (no mixed opens, one backing file per inode, readable until closed) hold.

The tests marked `accelerated` need the build of `make passthrough`; with Debian's libfuse the others check
that the mount says passthrough is off and serves as before. CI runs the suite on both builds.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
import sys
import time

import pyfuse3
import pytest

from idcfs.cache import WHOLE_FILE
from idcfs.testing.sandbox import read_uncached

from ..conftest import files_under, idcfs, mount_stats, origin_files, read_all, uuid_of

ACCELERATED = hasattr(pyfuse3, "backing_open")
accelerated = pytest.mark.skipif(not ACCELERATED, reason="needs the pyfuse3 of `make passthrough`")


def unmount(mnt) -> None:
    r = idcfs("unmount", mnt)
    assert r.returncode == 0, r.stderr


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def small_files(mnt) -> list:
    return [p for p in files_under(mnt) if p.stat().st_size <= WHOLE_FILE]


def cached_file(cache, p):
    return cache / "files" / uuid_of(p) / p.name


def wait_cached(cache, p, timeout=10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cached_file(cache, p).exists():
        assert time.monotonic() < deadline, f"{p} never reached the cache"
        time.sleep(0.05)


@accelerated
def test_warm_opens_are_passed_through_and_no_read_reaches_the_daemon(mount, sandbox, tmp_path):
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    origin = origin_files(sandbox)
    assert read_all(mnt) == origin  # cold: the daemon serves and fills the instance files
    unmount(mnt)
    mnt = mount(cache_dir=cache)
    before = mount_stats(mnt)
    assert before["passthrough"] == "on", before
    small = small_files(mnt)
    assert len(small) > 100
    for p in small:
        assert sha(read_uncached(p)) == origin[f"{uuid_of(p)}/{p.name}"], p
    s = mount_stats(mnt)
    assert s["passthrough_opens"] - before["passthrough_opens"] == len(small), s
    assert s["bytes_read"] == before["bytes_read"], "a READ reached the daemon"
    assert s["get_requests"] == 0 and s["passthrough_files"] == 0, s
    # The large instances (slides) stay daemon-served, byte for byte.
    assert read_all(mnt) == origin
    r = idcfs("stats", mnt)
    assert r.returncode == 0 and "passthrough " in r.stdout and " on" in r.stdout, r.stdout


def copied(fd: int, how: str, tmp_path) -> bytes:
    """The whole file behind fd, moved in the kernel by sendfile(2) to a file, or splice(2) through a pipe."""
    size = os.fstat(fd).st_size
    if how == "sendfile":
        out = tmp_path / "sent"
        with open(out, "wb") as f:
            offset = 0
            while offset < size:
                offset += os.sendfile(f.fileno(), fd, offset, size - offset)
        return out.read_bytes()
    r, w = os.pipe()
    chunks, offset = [], 0
    try:
        while offset < size:
            n = os.splice(fd, w, min(65536, size - offset), offset_src=offset)
            assert n > 0
            offset += n
            chunks.append(os.read(r, n))
    finally:
        os.close(r)
        os.close(w)
    return b"".join(chunks)


@accelerated
def test_mmap_sendfile_splice_and_a_file_evicted_while_open(mount, sandbox, tmp_path):
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    origin = origin_files(sandbox)
    p = small_files(mnt)[5]
    want = origin[f"{uuid_of(p)}/{p.name}"]
    assert sha(read_uncached(p)) == want
    wait_cached(cache, p)
    with open(p, "rb") as f1:  # passthrough: registers the backing file
        s = mount_stats(mnt)
        assert s["passthrough_files"] == 1, s
        for flags in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
            with mmap.mmap(f1.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as m:
                assert sha(m[:]) == want
        assert sha(copied(f1.fileno(), "sendfile", tmp_path)) == want
        assert sha(copied(f1.fileno(), "splice", tmp_path)) == want
        os.unlink(cached_file(cache, p))  # what eviction does to a file someone is reading
        os.posix_fadvise(f1.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert sha(os.pread(f1.fileno(), WHOLE_FILE, 0)) == want
        with open(p, "rb") as f2:  # a second open of the inode shares its backing file
            assert sha(f2.read()) == want
        assert mount_stats(mnt)["passthrough_files"] == 1
    time.sleep(0.2)  # RELEASE is asynchronous
    s = mount_stats(mnt)
    assert s["passthrough_files"] == 0, s
    assert sha(read_uncached(p)) == want  # no longer cached: served by the daemon (memory, or a GET)
    assert mount_stats(mnt)["passthrough_opens"] == s["passthrough_opens"]


@accelerated
def test_an_inode_open_from_the_daemon_is_not_switched_until_released(mount, sandbox, tmp_path):
    """Mixed opens of one inode fail in the kernel with EIO: the switch waits for the last daemon-served
    open to be released."""
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    origin = origin_files(sandbox)
    p = small_files(mnt)[7]
    want = origin[f"{uuid_of(p)}/{p.name}"]
    with open(p, "rb") as f1:
        assert sha(f1.read()) == want  # cold, daemon-served: the file lands in the cache meanwhile
        wait_cached(cache, p)
        opens = mount_stats(mnt)["passthrough_opens"]
        with open(p, "rb") as f2:
            assert sha(f2.read()) == want
        assert mount_stats(mnt)["passthrough_opens"] == opens
    time.sleep(0.2)
    with open(p, "rb") as f3:
        assert sha(f3.read()) == want
        with open(p, "rb") as f4:  # while f3 is open in passthrough, so is every other open
            assert sha(f4.read()) == want
    assert mount_stats(mnt)["passthrough_opens"] == opens + 2


@accelerated
def test_a_refused_backing_file_turns_passthrough_off_with_one_line(sandbox, tmp_path):
    cache, mnt = tmp_path / "cache", tmp_path / "m"
    mnt.mkdir()
    args = ["--cache-dir", cache, "--manifest", sandbox.manifest]
    args += ["--s3-endpoint", sandbox.s3_endpoint, "--gcs-endpoint", sandbox.gcs_endpoint]
    assert idcfs("prefetch", *args).returncode == 0
    r = idcfs("mount", mnt, *args, env=dict(os.environ, IDCFS_FAILPOINTS="backing:1"))
    assert r.returncode == 0, r.stderr
    try:
        assert read_all(mnt) == origin_files(sandbox)
        s = mount_stats(mnt)
        assert s["passthrough"].startswith("off: the kernel refused a backing file"), s
        assert s["passthrough_opens"] == 0 and s["get_requests"] == 0, s
        log = (cache / "idcfs.log").read_text()
        assert log.count("passthrough off") == 1, log
    finally:
        unmount(mnt)


def test_the_mount_says_why_passthrough_is_off(mount, sandbox, tmp_path):
    mnt = mount("--passthrough", "off")
    assert read_all(mnt) == origin_files(sandbox)
    s = mount_stats(mnt)
    assert (s["passthrough"], s["passthrough_opens"]) == ("off: --passthrough off", 0), s
    origin = origin_files(sandbox)
    p = small_files(mnt)[3]  # served by the daemon: mmap, sendfile and splice as in passthrough
    with open(p, "rb") as f:
        for flags in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
            with mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as m:
                assert sha(m[:]) == origin[f"{uuid_of(p)}/{p.name}"]
        for how in ("sendfile", "splice"):
            assert sha(copied(f.fileno(), how, tmp_path)) == origin[f"{uuid_of(p)}/{p.name}"]
    mnt = mount("--cache-size", "0")
    assert mount_stats(mnt)["passthrough"] == "off: no instance files (--cache-size 0)"
    if not ACCELERATED:  # Debian's libfuse 3.14: the default build
        mnt = mount()
        assert mount_stats(mnt)["passthrough"].startswith("off: pyfuse3 without passthrough")
        assert read_all(mnt) == origin_files(sandbox)


@accelerated
def test_many_readers_of_warm_files_in_passthrough(mount, sandbox, tmp_path):
    """Concurrent processes opening and closing the same warm files: every open succeeds, with the right
    bytes, while backing ids come and go."""
    cache = tmp_path / "cache"
    mnt = mount(cache_dir=cache)
    origin = origin_files(sandbox)
    small = small_files(mnt)[:60]
    for p in small:
        read_uncached(p)
    for p in small:
        wait_cached(cache, p)
    code = (
        "import hashlib, sys\n"
        "paths = sys.argv[1:]\n"
        "for _ in range(5):\n"
        "    for p in paths:\n"
        "        print(p, hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *map(str, small[i::2] + small)], stdout=subprocess.PIPE)
        for i in range(4)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.decode().splitlines():
            path, digest = line.rsplit(" ", 1)
            p = next(q for q in small if str(q) == path)
            assert digest == origin[f"{uuid_of(p)}/{p.name}"], path
    s = mount_stats(mnt)
    assert s["passthrough_opens"] >= 4 * 5 * len(small), s
