"""The idc:// fsspec protocol without FUSE, against the sandbox origin: worker processes, cached instances as
local file objects, read-only errors and bad options, unreachable origins, shuffled epochs. Checked against a
real mount of the same selection: tests/mount/test_fsspec.py.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import random
import socket
import threading
import time
from pathlib import Path

import fsspec
import pytest

from idcfs.cache import WHOLE_FILE
from idcfs.fsspec import LocalFile

from ..conftest import origin_files


def _options(sandbox, cache_dir: Path, **kw) -> dict:
    return {
        "manifest": str(sandbox.manifest),
        "s3_endpoint": sandbox.s3_endpoint,
        "gcs_endpoint": sandbox.gcs_endpoint,
        "cache_dir": str(cache_dir),
        **kw,
    }


def _fs(sandbox, cache_dir: Path, **kw):
    return fsspec.filesystem("idc", **_options(sandbox, cache_dir, **kw))


def _key(fs, path: str) -> str:
    return f"{fs.info(path)['crdc_series_uuid']}/{path.rsplit('/', 1)[1]}"


# Worker functions live at module level so a spawned worker can import them.
_worker_fs = None


def _init_worker(fs) -> None:
    global _worker_fs
    _worker_fs = fs


def _sha_in_worker(path: str) -> tuple[int, str, str, int, bool]:
    time.sleep(0.01)  # so a worker that started first does not take every task while the others spawn
    known = _worker_fs.engine.resolve_known(_worker_fs._parts(path)) is not None  # before this worker opens it
    with _worker_fs.open(path) as f:
        return os.getpid(), path, hashlib.sha256(f.read()).hexdigest(), id(_worker_fs.engine.ns), known


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_processes_read_correctly(sandbox, tmp_path, start_method):
    """A filesystem made (and used) in the parent, handed to forked or spawned workers, as a DataLoader does."""
    fs = _fs(sandbox, tmp_path / "cache")
    paths = [p for p in fs.find("") if fs.info(p)["size"] < 64 << 20]
    origin = origin_files(sandbox)
    fs.cat_file(paths[0])
    # The parent's engine keeps reading (and writing its cache) while the workers are forked: a fork in the
    # middle of a SQLite call used to leave the child hung in its first sqlite3 connect.
    done = threading.Event()

    def read_in_parent():
        while not done.is_set():
            for p in paths:
                fs.cat_file(p)

    reader = threading.Thread(target=read_in_parent, daemon=True)
    reader.start()
    try:
        ctx = multiprocessing.get_context(start_method)
        with ctx.Pool(4, initializer=_init_worker, initargs=(fs,)) as pool:
            results = pool.map(_sha_in_worker, paths, chunksize=1)
    finally:
        done.set()
        reader.join(60)
    assert len({pid for pid, *_ in results}) > 1
    assert all(sha == origin[_key(fs, p)] for _, p, sha, _, _ in results)
    if start_method == "fork":  # a forked worker has its own engine over the parent's tree (copy-on-write)
        assert {tree for _, _, _, tree, _ in results} == {id(fs.engine.ns)}
        # and the parent's listings: every path the parent listed resolves from memory, with no hop
        assert all(known for *_, known in results)
    assert hashlib.sha256(fs.cat_file(paths[-1])).hexdigest() == origin[_key(fs, paths[-1])]  # parent still fine


def test_cached_instances_open_as_local_file_objects(sandbox, tmp_path):
    """Once cached whole, an instance opens as a local file object: checked at open, its reads need no engine."""
    fs = _fs(sandbox, tmp_path / "cache")
    origin = origin_files(sandbox)
    small = [p for p in fs.find("") if fs.info(p)["size"] <= WHOLE_FILE]
    with fs.open(small[0]) as f:
        assert not isinstance(f, LocalFile)  # not cached yet: read through the engine
    for p in small:  # the rest may be cached by the series prefetch by the time it is opened
        with fs.open(p) as f:
            assert hashlib.sha256(f.read()).hexdigest() == origin[_key(fs, p)]
    deadline = time.monotonic() + 30
    while fs.stats()["unstored_bytes"] and time.monotonic() < deadline:
        time.sleep(0.05)
    gets = fs.stats()["get_requests"]
    for p in small:
        with fs.open(p) as f:
            assert isinstance(f, LocalFile) and f.size == fs.info(p)["size"]
            head = f.read(132)
            f.seek(0)
            data = f.read()
        assert head[128:] == b"DICM" and hashlib.sha256(data).hexdigest() == origin[_key(fs, p)], p
    assert fs.stats()["get_requests"] == gets
    # A new engine (other options) over the same cache: opening the files in order is seen by its series
    # prefetch (the opens reach the engine in batches), which leaves files cached whole on disk alone: each
    # is read once, by its opener, not loaded by the engine as well.
    fresh = _fs(sandbox, tmp_path / "cache", timeout=29)
    for p in small:
        with fresh.open(p) as f:
            assert isinstance(f, LocalFile)
    time.sleep(0.5)
    assert fresh.stats()["hits"] == len(small) and fresh.stats()["get_requests"] == 0
    # Paths resolve by their directory, known once per process: other spellings of it, and names not in it.
    directory, name = small[1].rsplit("/", 1)
    for spelling in (f"idc://{small[1]}", f"/{directory}//{name}", f"{directory}/{name}/"):
        with fresh.open(spelling) as f:
            assert hashlib.sha256(f.read()).hexdigest() == origin[_key(fs, small[1])], spelling
    with pytest.raises(FileNotFoundError):
        fresh.open(f"{directory}/no-such-instance.dcm")
    # A damaged entry is not handed out: the open goes through the engine, which refetches it.
    victim = tmp_path / "cache" / "files" / _key(fs, small[0])
    victim.write_bytes(victim.read_bytes()[:-1] + b"!")
    with fs.open(small[0]) as f:
        assert not isinstance(f, LocalFile)
        assert hashlib.sha256(f.read()).hexdigest() == origin[_key(fs, small[0])]


def test_read_only_errors_and_bad_options(sandbox, tmp_path):
    fs = _fs(sandbox, tmp_path / "cache")
    path = fs.find("")[0]
    directory = path.rsplit("/", 1)[0]
    for write in (
        lambda: fs.open(path, "wb"),
        lambda: fs.open(directory + "/new.dcm", "wb"),
        lambda: fs.pipe_file(path, b"x"),
        lambda: fs.touch(directory + "/new"),
        lambda: fs.mkdir(directory + "/new"),
        lambda: fs.makedirs(directory + "/new/deeper"),
        lambda: fs.rm(path),
        lambda: fs.rm(directory, recursive=True),
        lambda: fs.mv(path, directory + "/moved.dcm"),
        lambda: fs.cp_file(path, directory + "/copy.dcm"),
        lambda: fs.put_file(__file__, directory + "/put.py"),
    ):
        with pytest.raises(OSError) as e:
            write()
        assert e.value.errno == errno.EROFS
    fs.makedirs(directory, exist_ok=True)  # mkdir -p of what exists succeeds, as on any read-only mount
    for missing in ("nope", directory + "/nope.dcm", "nlst/nope/x"):
        assert not fs.exists(missing)
        with pytest.raises(FileNotFoundError):
            fs.info(missing)
        with pytest.raises(FileNotFoundError):
            fs.cat_file(missing)
    assert not fs.exists(path + "/below-a-file")
    with pytest.raises(IsADirectoryError):
        fs.open(directory)
    assert fs.cat_file(path, 10, 10) == b"" and fs.cat_file(path, 10**12) == b""
    # Bad options: ValueError naming the option as given here (filter, not --filter), at construction.
    for kw, expect in (
        ({"filter": "Modality = = 'CT'"}, "invalid filter SQL"),
        ({"filter": "Modality = 'XX'"}, "the selection is empty"),
        ({"manifest": str(tmp_path / "none.txt")}, "is not a file"),
        ({"s3_endpoint": "localhost:9000"}, "give an http:// or https:// URL"),
        ({"cache_size": "lots"}, "cache_size"),
        ({"memory": "1M"}, "below the minimum"),
        ({"source": "azure"}, "give 'aws' or 'gcs'"),
        ({"timeout": 0}, "out of range"),
        ({"cache_dir": "/proc/idcfs"}, "is not usable"),
        ({"collection": "nlst"}, "unknown option 'collection': did you mean 'collections'?"),
        ({"layout": "pretty"}, "bad layout 'pretty'"),
        ({"layout": "readable", "template": "%collection_id"}, "give template or layout, not both"),
    ):
        with pytest.raises(ValueError, match=expect):
            fsspec.filesystem("idc", **{**_options(sandbox, tmp_path / "cache"), **kw})


def test_filesystems_made_from_many_threads_at_once(sandbox, tmp_path):
    """Threads of one process making the same filesystem at once (a thread pool's first tasks) each check the
    new cache directory: none may see another's probe file vanish."""
    from concurrent.futures import ThreadPoolExecutor

    from idcfs.options import check_cache_dir

    for attempt in range(20):
        with ThreadPoolExecutor(16) as pool:
            assert len(set(pool.map(check_cache_dir, [tmp_path / f"c{attempt}"] * 64))) == 1
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: _fs(sandbox, tmp_path / "shared"), range(8)))
    assert all(fs.ls("", detail=False) == made[0].ls("", detail=False) for fs in made)


def test_unreachable_origin_is_eio_within_the_timeout(sandbox, tmp_path):
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        fs = _fs(sandbox, tmp_path / "cache", s3_endpoint=url, gcs_endpoint=url, timeout=2)
        series = fs.glob("*/*/*/*")[0]
        t = time.monotonic()
        with pytest.raises(OSError) as e:
            fs.ls(series)
        assert e.value.errno == errno.EIO
        assert time.monotonic() - t < 10


def _sha_and_prefetched(path: str) -> tuple[int, str, str, int]:
    with _worker_fs.open(path) as f:
        data = f.read()
    return os.getpid(), path, hashlib.sha256(data).hexdigest(), _worker_fs.stats()["prefetched_files"]


def test_a_shuffled_epoch_in_workers_fetches_each_file_about_once(sandbox, tmp_path):
    """Shuffled whole-file reads warm the rest of each series; workers sharing the cache claim what they fetch."""
    from idcfs.testing.faultproxy import FaultProxy

    with FaultProxy(sandbox.s3_endpoint) as s3:
        fs = _fs(sandbox, tmp_path / "cache", s3_endpoint=s3.url)
        small = [p for p in fs.find("") if fs.info(p)["size"] <= 8 << 20]
        random.Random(3).shuffle(small)
        s3.reset_counters()
        with multiprocessing.get_context("fork").Pool(3, initializer=_init_worker, initargs=(fs,)) as pool:
            results = pool.map(_sha_and_prefetched, small, chunksize=1)
        origin = origin_files(sandbox)
        assert all(sha == origin[_key(fs, p)] for _, p, sha, _ in results)
        assert sum(max(n for pid, _, _, n in results if pid == w) for w in {r[0] for r in results}) > len(small) / 2
        assert s3.counters.gets <= 1.15 * len(small) + 10, (s3.counters.gets, len(small))  # + LISTs per worker
