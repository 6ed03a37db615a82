"""The mount daemon's start: `idcfs mount` waits a bounded time, and a daemon that fails, dies or hangs is
named in one line, stopped, and leaves nothing mounted."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import idcfs

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a private mount namespace)")


def _args(sandbox, mnt: Path, cache: Path) -> list:
    return ["mount", mnt, "--cache-dir", cache, "--manifest", sandbox.manifest, "--s3-endpoint", sandbox.s3_endpoint]


def _daemons(mnt: Path) -> list[int]:
    """PIDs of idcfs daemons serving (or starting to serve) mnt."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--ready-fd" in argv and str(mnt).encode() in argv:
            found.append(int(pid))
    return found


def _start(sandbox, mnt: Path, cache: Path) -> tuple[subprocess.Popen, list[int]]:
    """`idcfs mount` in the background, once its daemon runs."""
    p = subprocess.Popen(
        [sys.executable, "-m", "idcfs", *map(str, _args(sandbox, mnt, cache))], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 30
    while not (pids := _daemons(mnt)):
        assert time.monotonic() < deadline and p.poll() is None, "the daemon did not start"
        time.sleep(0.05)
    return p, pids


@pytest.fixture
def held_cache(sandbox, tmp_path):
    """A cache directory whose block database another process holds locked, as a stuck mount would:
    the daemon then waits in SQLite at start-up (diskcache retries for a minute)."""
    cache = tmp_path / "cache"
    mnt = tmp_path / "warm"
    mnt.mkdir()
    r = idcfs(*_args(sandbox, mnt, cache))  # the tree is cached, so start-up reaches the cache directory quickly
    assert r.returncode == 0, r.stderr
    assert idcfs("unmount", mnt).returncode == 0
    con = sqlite3.connect(cache / "blocks" / "cache.db", isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    yield cache
    con.close()


def test_a_daemon_that_is_not_ready_in_time_is_stopped(sandbox, tmp_path, held_cache):
    mnt = tmp_path / "m"
    mnt.mkdir()
    env = dict(os.environ, IDCFS_READY_TIMEOUT="3")
    t = time.monotonic()
    r = idcfs(*_args(sandbox, mnt, held_cache), env=env)
    took = time.monotonic() - t
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("idcfs: error: the daemon was not ready after 3 s"), r.stderr
    assert "(it was opening the cache directory" in r.stderr, r.stderr
    assert "diskcache" in r.stderr and "stopped it" in r.stderr and "IDCFS_READY_TIMEOUT" in r.stderr, r.stderr
    assert took < 15, took
    assert not os.path.ismount(mnt) and not _daemons(mnt)
    # The Python API is bounded the same way, and says the same.
    import idcfs as api

    os.environ["IDCFS_READY_TIMEOUT"] = "2"
    try:
        with pytest.raises(api.MountFailed, match="not ready after 2 s"):
            with api.mounted(mnt, manifest=sandbox.manifest, s3_endpoint=sandbox.s3_endpoint, cache_dir=held_cache):
                pass
    finally:
        del os.environ["IDCFS_READY_TIMEOUT"]
    assert not os.path.ismount(mnt) and not _daemons(mnt)


def test_a_daemon_that_dies_is_named(sandbox, tmp_path, held_cache):
    mnt = tmp_path / "m"
    mnt.mkdir()
    p, pids = _start(sandbox, mnt, held_cache)
    time.sleep(1)
    os.kill(pids[0], signal.SIGKILL)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert "the daemon ended while" in err and "killed by SIGKILL" in err, err
    assert not os.path.ismount(mnt)


def test_ctrl_c_while_waiting_stops_the_daemon(sandbox, tmp_path, held_cache):
    mnt = tmp_path / "m"
    mnt.mkdir()
    p, _ = _start(sandbox, mnt, held_cache)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err.strip() == "idcfs: interrupted: stopped the daemon, nothing is mounted", err
    assert not os.path.ismount(mnt) and not _daemons(mnt)


@root_only
def test_a_daemon_that_fails_says_why(sandbox, tmp_path):
    """No usable /dev/fuse (a container started without it): the cause, with libfuse's own reason."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    cmd = [sys.executable, "-m", "idcfs", *map(str, _args(sandbox, mnt, tmp_path / "cache"))]
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *cmd],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "mount failed: cannot mount" in r.stderr and "(fuse: " in r.stderr and "log: " in r.stderr, r.stderr
    assert not os.path.ismount(mnt) and not _daemons(mnt)


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "1e9", "inf"])
def test_bad_ready_timeout(tmp_path, sandbox, value):
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = idcfs(*_args(sandbox, mnt, tmp_path / "cache"), env=dict(os.environ, IDCFS_READY_TIMEOUT=value))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "IDCFS_READY_TIMEOUT" in r.stderr and "Traceback" not in r.stderr
    assert not os.path.ismount(mnt)
