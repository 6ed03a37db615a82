"""The idc:// fsspec protocol: the mount's tree, bytes and cache, without FUSE, compared with a mount.

The reference is always real: the origin's sha256 of every object, and a real
FUSE mount of the same selection read through the kernel (fsspec's
LocalFileSystem over it stands in for "what a filesystem does").
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import warnings
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from idcfs.testing.sandbox import sha256_file

from ..conftest import by_modality, idcfs, mount_stats, origin_files, series_dir
from ..engine.test_fsspec import _fs, _key, _options


def _tree(root: Path) -> list[str]:
    out = []
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        out += [os.path.normpath(os.path.join(rel, n)) for n in dirs + files]
    return sorted(out)


def _wait_stored(stats, timeout: float = 30) -> None:
    """Until every fetched block has reached the disk cache."""
    deadline = time.monotonic() + timeout
    while stats()["unstored_bytes"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stats()["unstored_bytes"] == 0


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_same_tree_and_bytes_as_the_mount_and_the_origin(mount, sandbox, tmp_path, source):
    mnt = mount("--source", source)
    fs = _fs(sandbox, tmp_path / "fscache", source=source)
    assert type(fs).__name__ == "IdcFileSystem"  # found through the fsspec.specs entry point
    # The tree: every directory and file, with the sizes stat reports.
    assert sorted(fs.find("", withdirs=True)) == _tree(mnt)
    assert fs.ls("", detail=False) == sorted(os.listdir(mnt))
    origin = origin_files(sandbox)
    for path in fs.find(""):
        assert fs.info(path)["size"] == (mnt / path).stat().st_size
        assert hashlib.sha256(fs.cat_file(path)).hexdigest() == origin[_key(fs, path)], path
    # Ranges of the slide, through cat_file and a seeking file object, equal the mount's.
    sm = max(fs.find(""), key=lambda p: fs.info(p)["size"])
    size = fs.info(sm)["size"]
    rng = random.Random(6)
    with open(mnt / sm, "rb") as local, fs.open(sm) as remote:
        for _ in range(40):
            start = rng.randrange(size)
            n = rng.choice([1, 100, 5000, 300_000, 3_000_000])
            local.seek(start)
            want = local.read(n)
            assert fs.cat_file(sm, start, start + n) == want
            remote.seek(start)
            assert remote.read(n) == want
        assert fs.cat_file(sm, -10) == (mnt / sm).read_bytes()[-10:]
    # The URL form, with the options as storage options.
    with fsspec.open(f"idc://{sm}", **_options(sandbox, tmp_path / "fscache", source=source)) as f:
        assert f.read(132)[128:] == b"DICM"


def test_cache_warmed_by_one_path_is_hit_by_the_other(mount, sandbox, tmp_path):
    shared = tmp_path / "shared"
    ct = [s for s in sandbox.series if s["Modality"] in ("CT", "MR")][:2]
    # The mount warms series A.
    mnt = mount(cache_dir=shared)
    a = series_dir(mnt, ct[0]["crdc_series_uuid"], sandbox)
    a_files = sorted(a.iterdir())
    want = {p.name: sha256_file(p) for p in a_files}
    _wait_stored(lambda: mount_stats(mnt))
    assert idcfs("unmount", mnt).returncode == 0
    # idc:// reads series A from that cache: no LIST, no GET.
    fs = _fs(sandbox, shared)
    a_path = str(a.relative_to(mnt))
    got = {p.rsplit("/", 1)[1]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(a_path)}
    assert got == want
    stats = fs.stats()
    assert stats["get_requests"] == 0 and stats["list_requests"] == 0 and stats["hits"] == len(a_files)
    # idc:// warms series B; a new mount on the same cache reads it without the origin.
    b_path = str(series_dir(Path(""), ct[1]["crdc_series_uuid"], sandbox))
    b_sums = {p.rsplit("/", 1)[1]: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in fs.find(b_path)}
    assert fs.stats()["get_requests"] > 0
    _wait_stored(fs.stats)
    mnt2 = mount(cache_dir=shared)
    assert {p.name: sha256_file(p) for p in (mnt2 / b_path).iterdir()} == b_sums
    stats = mount_stats(mnt2)
    assert stats["get_requests"] == 0 and stats["list_requests"] == 0 and stats["hits"] == len(b_sums)


def test_dicom_libraries_on_idc_paths(mount, sandbox, tmp_path):
    import highdicom
    import pydicom
    from wsidicom import WsiDicom

    mnt = mount()
    opts = _options(sandbox, tmp_path / "fscache")
    fs = fsspec.filesystem("idc", **opts)
    ct = str(series_dir(Path(""), by_modality(sandbox, "CT")["crdc_series_uuid"], sandbox))
    for path in fs.find(ct)[:20]:
        with fs.open(path) as f:
            head = pydicom.dcmread(f, stop_before_pixels=True)
        with fs.open(path) as f:
            ds = pydicom.dcmread(f)
        assert ds.pixel_array.shape == (head.Rows, head.Columns)
        assert (ds.pixel_array == pydicom.dcmread(mnt / path).pixel_array).all()
    # highdicom's lazy frames fetch a few blocks of the slide, not the slide.
    sm_dir = str(series_dir(Path(""), by_modality(sandbox, "SM")["crdc_series_uuid"], sandbox))
    slide = max(fs.find(sm_dir), key=lambda p: fs.info(p)["size"])
    before = fs.stats()["bytes_fetched"]
    with fs.open(slide) as f:
        image = highdicom.imread(f, lazy_frame_retrieval=True)
        frame = image.get_raw_frame(image.number_of_frames)
    assert fs.stats()["bytes_fetched"] - before < fs.info(slide)["size"] // 4
    with open(mnt / slide, "rb") as f:
        assert frame == highdicom.imread(f, lazy_frame_retrieval=True).get_raw_frame(image.number_of_frames)
    # wsidicom opens the series directory by URL, as it opens any fsspec URL (through universal_pathlib, which
    # must find idc:// implemented: no warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with WsiDicom.open(f"idc://{sm_dir}", file_options=opts) as remote, WsiDicom.open(mnt / sm_dir) as local:
            assert remote.read_tile(0, (0, 0)).tobytes() == local.read_tile(0, (0, 0)).tobytes()
            region = (0, 0), 0, (300, 200)
            assert remote.read_region(*region).tobytes() == local.read_region(*region).tobytes()


def test_upath_on_idc_paths(mount, sandbox, tmp_path):
    from upath import UPath

    from idcfs.upath import IdcPath

    mnt = mount()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        root = UPath("idc://", **_options(sandbox, tmp_path / "fscache"))
        assert isinstance(root, IdcPath)
        assert sorted(p.name for p in root.iterdir()) == sorted(os.listdir(mnt))
        row = by_modality(sandbox, "CT")
        ct = root / str(series_dir(Path(""), row["crdc_series_uuid"], sandbox))
        assert ct.is_dir() and ct.parent.parent.parent == root / row["collection_id"]
        files = sorted(ct.glob("*.dcm"))
        assert [p.name for p in files] == sorted(os.listdir(mnt / ct.path))
        first = files[0]
        assert first.is_file() and first.stat().st_size == (mnt / first.path).stat().st_size
        assert first.read_bytes() == (mnt / first.path).read_bytes()
        assert UPath(str(first), **_options(sandbox, tmp_path / "fscache")) == first


# Differential checks in the manner of fsspec.tests.abstract: those suites build their scenario by writing into
# the filesystem under test, which a read-only tree of fixed depth cannot hold. Here the same operations (glob
# patterns, find with maxdepth, walk, recursive get) run on idc:// and on LocalFileSystem over the mount.
GLOBS = ["*", "*/*", "nlst/*", "nlst/**", "**/*.dcm", "*/*/*/CT_*", "?lst", "[cn]*", "*/*/*/*/*.dcm", "nlst/*/*/*/*"]


def test_operations_match_a_local_filesystem_over_the_mount(mount, sandbox, tmp_path):
    mnt = mount()
    fs, local = _fs(sandbox, tmp_path / "fscache"), LocalFileSystem(auto_mkdir=True)  # as fsspec's own fixtures
    root = str(mnt) + "/"

    def rel(paths):  # fsspec's find leaves out a root of "" but not a root path: compare what is below
        return sorted(p.removeprefix(root) for p in paths if p != root.rstrip("/"))

    for pattern in GLOBS:
        assert sorted(fs.glob(pattern)) == rel(local.glob(root + pattern)), pattern
    for depth in (1, 2, 3, 4, 5, None):
        for withdirs in (False, True):
            got = fs.find("", maxdepth=depth, withdirs=withdirs)
            assert sorted(got) == rel(local.find(root, maxdepth=depth, withdirs=withdirs)), (depth, withdirs)
    walked = [(d, sorted(ds), sorted(fs_)) for d, ds, fs_ in fs.walk("nlst")]
    assert walked == [(d.removeprefix(root), sorted(ds), sorted(f)) for d, ds, f in local.walk(root + "nlst")]
    assert fs.du("nlst") == local.du(root + "nlst")
    series = fs.glob("*/*/*/*")[0]
    assert fs.isdir(series) and not fs.isfile(series) and fs.isfile(fs.ls(series, detail=False)[0])
    assert fs.ls(fs.ls(series, detail=False)[0], detail=False) == [fs.ls(series, detail=False)[0]]
    # Recursive and glob gets: the same files land, with the same bytes. (Not of a collection: for a top-level
    # source fsspec's other_paths() cannot strip a parent, so it drops the source's own name, as for a bucket.)
    patients = fs.glob("nlst/*")[0], fs.glob("cptac_luad/*")[0]
    for source, kw in ((patients[0], {"recursive": True}), (series + "/*.dcm", {}), (patients[1], {"recursive": True})):
        a, b = tmp_path / "a", tmp_path / "b"
        fs.get(source, str(a) + "/", **kw)
        local.get(root + source, str(b) + "/", **kw)
        assert _tree(a) == _tree(b), source
        assert all(sha256_file(a / p) == sha256_file(b / p) for p in _tree(a) if (a / p).is_file())
        local.rm([str(a), str(b)], recursive=True)


def test_shuffled_reads_through_the_mount_fetch_each_file_once(mount, sandbox):
    from concurrent.futures import ThreadPoolExecutor

    from idcfs.testing.faultproxy import FaultProxy

    with FaultProxy(sandbox.s3_endpoint) as s3:
        mnt = mount(s3_endpoint=s3.url)
        small = [p for p in sorted(mnt.rglob("*.dcm")) if p.stat().st_size <= 8 << 20]
        random.Random(4).shuffle(small)
        s3.reset_counters()
        with ThreadPoolExecutor(4) as pool:
            sums = list(pool.map(sha256_file, small))
        origin = origin_files(sandbox)
        assert sums == [origin[f"{os.getxattr(p, 'user.idc.crdc_series_uuid').decode()}/{p.name}"] for p in small]
        stats = mount_stats(mnt)
        assert stats["prefetched_files"] > len(small) / 2
        assert s3.counters.gets <= len(small) + 2, (s3.counters.gets, len(small))
