"""A walk over 20,000 series through a real mount: the daemon's memory stays bounded, inode numbers never change.

The index is real rows: the sandbox cohort, whose series the origin serves, plus 20,000 nlst series. The
nlst series' listings are in the cache directory, as an earlier mount's LISTs would have left them (20 files
each, 400,000 in all); the origin does not hold them, and the walk reads none of them. Listing 20,000 series
for real would take the sandbox origin many minutes. The cohort's series are LISTed from the origin for real
and read back byte for byte after their listings were dropped from the daemon's memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import duckdb

from idcfs.cache import MetaCache
from idcfs.listing import HELD_FILES
from idcfs.store import ObjectInfo

from ..conftest import INDEX, mount_stats, origin_files, series_dir

SERIES = 20_000
FILES = 20  # per walked series: 400,000 files, three times what the daemon keeps listed (HELD_FILES)
# Daemon RSS growth allowed over the walk. Keeping every file listed would take about 530 bytes a file,
# 210 MB here (and 31 GB for the whole index's 58.8 M instances).
RSS_BOUND = 120 << 20


def _rss(mnt: Path) -> int:
    pids = subprocess.run(["pgrep", "-f", f"idcfs mount {mnt}"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no daemon for {mnt}")


def _drop_kernel_entries() -> None:
    """The kernel forgets its dentries and inodes (FORGET to the daemon): the next stat asks the daemon."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def test_walk_of_20000_series_keeps_memory_bounded_and_inodes_stable(sandbox, mount, tmp_path):
    assert SERIES * FILES > 3 * HELD_FILES
    index, cache = tmp_path / "index.parquet", tmp_path / "cache"
    cohort = [s["crdc_series_uuid"] for s in sandbox.series]
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{INDEX}') WHERE crdc_series_uuid IN (SELECT unnest(?)) "
        f"UNION ALL (SELECT * FROM read_parquet('{INDEX}') WHERE collection_id = 'nlst' "
        f"AND crdc_series_uuid NOT IN (SELECT unnest(?)) ORDER BY crdc_series_uuid LIMIT {SERIES})) "
        f"TO '{index}' (FORMAT parquet)",
        [cohort, cohort],
    )
    walked = [u for (u,) in con.execute(f"SELECT crdc_series_uuid FROM '{index}'").fetchall() if u not in cohort]
    assert len(walked) == SERIES
    meta = MetaCache(cache / "meta")
    for u in walked:
        names = sorted(f"{uuid.uuid5(uuid.NAMESPACE_URL, f'{u}/{i}')}.dcm" for i in range(FILES))
        md5s = [hashlib.md5(n.encode()).hexdigest() for n in names]
        meta.set_listing(u, [ObjectInfo(n, 500_000 + i, f'"{m}"', 1_700_000_000 * 10**9, m).entry()
                             for i, (n, m) in enumerate(zip(names, md5s, strict=True))])  # fmt: skip
    meta.close()

    mnt = mount("--index", index, manifest=False, cache_dir=cache)
    # The cohort first: LISTed from the origin, then pushed out of memory by the walk.
    cohort_files = {}
    for u in cohort:
        d = series_dir(mnt, u, sandbox)
        for f in sorted(d.iterdir()):
            cohort_files[f] = f.stat().st_ino
    held_open = sorted(cohort_files)[0]
    fd = os.open(held_open, os.O_RDONLY)  # the kernel keeps this inode while the walk goes on
    try:
        before = _rss(mnt)
        out = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, check=True).stdout
        files = out.decode().splitlines()
        assert len(files) == SERIES * FILES + len(cohort_files)
        grown = _rss(mnt) - before
        assert grown < RSS_BOUND, f"the daemon grew by {grown >> 20} MB walking {len(files)} files"
        stats = mount_stats(mnt)
        assert stats["files_known"] <= HELD_FILES, stats
        # Ask the daemon again: same inode numbers, the same bytes as the origin.
        _drop_kernel_entries()
        assert os.fstat(fd).st_ino == cohort_files[held_open]
        want = origin_files(sandbox)
        for f, ino in cohort_files.items():
            assert f.stat().st_ino == ino, f
        for f in list(cohort_files)[:: max(1, len(cohort_files) // 40)]:
            key = f"{os.getxattr(f.parent, 'user.idc.crdc_series_uuid').decode()}/{f.name}"
            assert hashlib.sha256(f.read_bytes()).hexdigest() == want[key], f
        # A file of the walk, its listing dropped and read back from the cache directory: same inode.
        sample = Path(files[len(files) // 3])
        ino = sample.stat().st_ino
        _drop_kernel_entries()
        assert sample.stat().st_ino == ino
    finally:
        os.close(fd)
