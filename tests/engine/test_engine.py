"""The engine and the FUSE adapter, driven directly against the sandbox origin: no kernel, no mount."""

from __future__ import annotations

import errno
import hashlib
import os

import pyfuse3
import pytest
import trio

from idcfs.errors import as_keyword
from idcfs.fs import IdcOperations
from idcfs.listing import InstanceFile
from idcfs.options import Options, build_engine

from ..conftest import by_modality, origin_files


def _options(sandbox, tmp_path, **extra) -> Options:
    given = {
        "s3_endpoint": sandbox.s3_endpoint,
        "gcs_endpoint": sandbox.gcs_endpoint,
        "manifest": sandbox.manifest,
        "cache_dir": tmp_path / "cache",
        "cache_size": "1G",
    }
    return Options.make(as_keyword, **(given | extra))


def _run(engine, test) -> None:
    """Run test() in a trio run with the engine's background nursery; its exception is raised as it is."""
    failed: list[Exception] = []

    async def main():
        async with trio.open_nursery() as nursery:
            engine.attach(nursery)
            try:
                await test()
            except Exception as e:
                failed.append(e)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        engine.close()
    if failed:
        raise failed[0]


def _series_parts(sandbox, modality: str) -> list[str]:
    row = by_modality(sandbox, modality)
    study = row["StudyInstanceUID"]
    return [row["collection_id"], row["PatientID"], study, f"{row['Modality']}_{row['SeriesInstanceUID']}"]


def test_engine_serves_origin_bytes(sandbox, tmp_path):
    """Paths resolve, listings come from one LIST, reads give the origin's bytes, and a second engine on the
    same cache directory reads them from disk with no GET."""
    origin = origin_files(sandbox)
    parts = _series_parts(sandbox, "CT")

    def check(engine, got: dict):
        async def test():
            series = await engine.resolve(parts)
            files = [f for _, f in await engine.children(series)]
            assert files and all(isinstance(f, InstanceFile) for f in files)
            for f in files[:12]:
                of = engine.open(f)
                try:
                    data = bytes(await engine.read(of, 0, f.size + 100))  # clipped at the end
                    assert bytes(await engine.read(of, 10, 20)) == data[10:30]
                finally:
                    engine.release(of)
                key = f"{f.series.crdc_series_uuid}/{f.name}"
                assert len(data) == f.size and hashlib.sha256(data).hexdigest() == origin[key]
            await engine.stored()
            got.update(engine.stats())

        _run(engine, test)

    cold, warm = {}, {}
    check(build_engine(_options(sandbox, tmp_path)), cold)
    check(build_engine(_options(sandbox, tmp_path)), warm)
    assert cold["get_requests"] >= 12 and cold["list_requests"] == 1
    assert warm["get_requests"] == 0 and warm["list_requests"] == 0 and warm["hits"] >= 12
    with pytest.raises(FileNotFoundError):
        _run(engine := build_engine(_options(sandbox, tmp_path)), lambda: engine.resolve([*parts[:-1], "nope"]))


def test_fuse_adapter_without_a_kernel(sandbox, tmp_path):
    """IdcOperations' handlers called as pyfuse3 would: attributes, reads, EROFS, and errno values from the
    one table (ENOENT, ENOTDIR, EBADF)."""
    engine = build_engine(_options(sandbox, tmp_path))
    ops = IdcOperations(engine, mtime_ns=0, passthrough=False)
    origin = origin_files(sandbox)

    async def fails(errno_, handler, *args):
        with pytest.raises(pyfuse3.FUSEError) as e:
            await handler(*args)
        assert e.value.errno == errno_, (handler.__name__, e.value.errno)

    async def test():
        ino = pyfuse3.ROOT_INODE
        for name in _series_parts(sandbox, "MR"):
            attr = await ops.lookup(ino, name.encode())
            ino = attr.st_ino
        assert (await ops.getattr(ino)).st_mode & 0o170000 == 0o040000
        names = sorted(f.name for _, f in await engine.children(ino - 1))
        attr = await ops.lookup(ino, names[0].encode())
        assert (await ops.getattr(attr.st_ino)).st_size == attr.st_size > 0
        fi = await ops.open(attr.st_ino, os.O_RDONLY, None)
        data = bytes(await ops.read(fi.fh, 0, attr.st_size))
        await ops.release(fi.fh)
        uuid = (await ops.getxattr(ino, b"user.idc.crdc_series_uuid", None)).decode()
        assert hashlib.sha256(data).hexdigest() == origin[f"{uuid}/{names[0]}"]
        await fails(errno.ENOENT, ops.lookup, ino, b"nope.dcm", None)
        await fails(errno.ENOTDIR, ops.lookup, attr.st_ino, b"x", None)
        await fails(errno.EBADF, ops.read, 12345, 0, 10)
        await fails(errno.EROFS, ops.open, attr.st_ino, os.O_WRONLY, None)
        await fails(errno.EROFS, ops.mkdir, ino, b"new", 0o755, None)
        await fails(errno.EISDIR, ops.open, ino, os.O_RDONLY, None)

    _run(engine, test)


def test_origin_failures_are_eio_in_both_front_ends(sandbox, tmp_path):
    """With no origin answering, the adapter answers EIO and idc:// raises OSError(EIO): one errno table."""
    import fsspec

    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    options = _options(sandbox, tmp_path, s3_endpoint=dead, gcs_endpoint=dead, timeout=1)
    engine = build_engine(options)
    ops = IdcOperations(engine, mtime_ns=0, passthrough=False)
    parts = _series_parts(sandbox, "CT")

    async def test():
        ino = pyfuse3.ROOT_INODE
        for name in parts:
            ino = (await ops.lookup(ino, name.encode())).st_ino  # the tree needs no origin
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(ino, b"any.dcm")  # the series' LIST fails
        assert e.value.errno == errno.EIO

    _run(engine, test)
    ends = {"s3_endpoint": dead, "gcs_endpoint": dead, "timeout": 1}
    fs = fsspec.filesystem("idc", manifest=str(sandbox.manifest), cache_dir=str(tmp_path / "f"), **ends)
    with pytest.raises(OSError) as e:
        fs.ls("/".join(parts))
    assert e.value.errno == errno.EIO and not isinstance(e.value, FileNotFoundError)
