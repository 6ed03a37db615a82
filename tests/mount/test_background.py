"""Background work never ends the mount: an exception injected into each kind of background task (block
loads, GETs, cache writes, head fetches, series prefetch, warming, upkeep) is logged and counted, the
reads it served answer the right bytes or EIO, and the mount goes on."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import time

from idcfs.testing.sandbox import read_uncached

from ..conftest import idcfs, mount_stats, origin_files, series_dir, uuid_of

# name:times. load, store, head, prefetch and warm raise through the background boundary; fetch fails a
# flight (its readers get EIO); touch and flush fail inside their own loops.
POINTS = "load:2,fetch:2,store:2,head:2,prefetch:2,warm:1,touch:1,flush:1"
BOUNDARY = ("load", "store", "head", "prefetch", "warm")


def _read(path, tries: int = 4) -> tuple[bytes, int]:
    """A whole file through the mount, and how many attempts answered EIO first."""
    for attempt in range(tries):
        try:
            return read_uncached(path), attempt
        except OSError as e:
            assert e.errno == errno.EIO, e
    raise AssertionError(f"{path}: EIO {tries} times")


def test_exceptions_in_background_tasks_never_end_the_mount(sandbox, tmp_path):
    mnt, cache = tmp_path / "m", tmp_path / "cache"
    mnt.mkdir()
    env = dict(os.environ, IDCFS_FAILPOINTS=POINTS)
    r = idcfs(
        "mount", mnt, "--cache-dir", cache, "--manifest", sandbox.manifest, "--s3-endpoint", sandbox.s3_endpoint,
        "--gcs-endpoint", sandbox.gcs_endpoint, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    origin = origin_files(sandbox)
    eio = 0
    try:
        # In order, whole (series prefetch), then a header scan (heads), then shuffled whole reads (warming).
        ct = series_dir(mnt, "3078b660-4db2-4f82-9b2a-afb3b8dd28b4", sandbox)
        for p in sorted(ct.iterdir()):
            data, failed = _read(p)
            eio += failed
            assert hashlib.sha256(data).hexdigest() == origin[f"{uuid_of(p)}/{p.name}"], p
        mr = series_dir(mnt, "c914e2ce-92a5-4950-a824-addba1744d7a", sandbox)
        for p in sorted(mr.iterdir()):
            for attempt in range(4):
                try:
                    with open(p, "rb") as f:
                        head = f.read(1024)
                    break
                except OSError as e:
                    assert e.errno == errno.EIO and attempt < 3, e
            assert head[128:132] == b"DICM", p
        other = series_dir(mnt, "01742e03-18ba-42a4-8a21-a6bcb57c3cc4", sandbox)
        files = sorted(other.iterdir())
        random.Random(1).shuffle(files)
        for p in files:
            data, failed = _read(p)
            eio += failed
            assert hashlib.sha256(data).hexdigest() == origin[f"{uuid_of(p)}/{p.name}"], p
        time.sleep(11)  # the upkeep loops: access times every 2 s, counters every 10 s
        stats = mount_stats(mnt)
        assert os.path.ismount(mnt) and len(os.listdir(ct)) == 122
        log = (cache / "idcfs.log").read_text()
        fired = {name for name in BOUNDARY if f"failpoint {name}" in log}
        assert fired == set(BOUNDARY), f"fired through the boundary: {sorted(fired)}"
        assert stats["background_errors"] >= len(BOUNDARY), stats
        assert "failpoint touch" in log and "failpoint flush" in log
        assert log.count("the mount goes on") == stats["background_errors"]
        assert eio <= 6, eio  # only reads whose load or GET was made to fail
        # Everything reads right afterwards, and the cache holds what was written.
        for p in sorted(ct.iterdir())[:10]:
            assert hashlib.sha256(read_uncached(p)).hexdigest() == origin[f"{uuid_of(p)}/{p.name}"]
    finally:
        assert idcfs("unmount", mnt).returncode == 0
    assert not os.path.ismount(mnt)
