"""Fixtures: one sandbox origin (moto S3 + fake-gcs-server) per session, and real mounts made with the CLI.

The tiers: tests/unit needs the base install and pytest alone, tests/engine the sandbox (the test extra) but no
FUSE, tests/mount real FUSE mounts. So that the unit tier imports, nothing here imports the sandbox (moto,
pydicom, ...) or other test-extra packages at import time: the fixtures that need them import them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import idc_index_data
import pytest

INDEX = idc_index_data.IDC_INDEX_PARQUET_FILEPATH

REPO = Path(__file__).resolve().parent.parent
# Generated DICOM is reproducible, so it is kept between runs.
DATA_DIR = Path(os.environ.get("IDCFS_TEST_DATA", REPO / ".sandbox"))


def idcfs(*args, check=False, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "idcfs", *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def sandbox():
    from idcfs.testing.sandbox import Sandbox

    sb = Sandbox(DATA_DIR)
    with sb as state:
        state.sandbox = sb
        yield state


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


class Mounter:
    def __init__(self, tmp_path: Path, sandbox):
        self.tmp_path = tmp_path
        self.sandbox = sandbox
        self.mounted: list[Path] = []
        self.n = 0

    def __call__(
        self, *extra, source="aws", manifest=True, name=None, cache_dir=None, s3_endpoint=None, gcs_endpoint=None
    ) -> Path:
        """Mount with the CLI. By default each mount gets a fresh cache directory, so reads reach the origin."""
        self.n += 1
        mnt = self.tmp_path / (name or f"mnt{self.n}")
        mnt.mkdir(exist_ok=True)
        cache_dir = cache_dir or self.tmp_path / f"cache{self.n}"
        args = ["mount", mnt, "--cache-dir", cache_dir, "--source", source]
        args += ["--s3-endpoint", s3_endpoint or self.sandbox.s3_endpoint]
        args += ["--gcs-endpoint", gcs_endpoint or self.sandbox.gcs_endpoint]
        if manifest:
            args += ["--manifest", self.sandbox.manifest if manifest is True else manifest]
        r = idcfs(*args, *extra)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        self.mounted.append(mnt)
        return mnt

    def cleanup(self):
        for mnt in self.mounted:  # harmless when already unmounted; also clears stale mounts
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@pytest.fixture
def mount(tmp_path, sandbox):
    m = Mounter(tmp_path, sandbox)
    yield m
    m.cleanup()


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs, for the test_ray.py modules (which skip without Ray)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_index(tmp_path_factory):
    """Three real collections plus 4d_lung rows whose PatientIDs are hostile names."""
    import duckdb

    path = tmp_path_factory.mktemp("index") / "idx.parquet"
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE t AS SELECT * FROM read_parquet('{INDEX}') "
        "WHERE collection_id IN ('rider_phantom_mri', 'acrin_contralateral_breast_mr', '4d_lung')"
    )
    for i, pid in enumerate(["..", "a/b", ".", "", "x%2Fy", "evil/../../etc"]):
        con.execute(
            "INSERT INTO t SELECT * REPLACE (? AS PatientID, ? AS crdc_series_uuid, ? AS SeriesInstanceUID) "
            "FROM t WHERE collection_id = '4d_lung' LIMIT 1",
            [pid, f"00000000-0000-0000-0000-00000000000{i}", f"9.9.{i}"],
        )
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    return path


def origin_files(state) -> dict[str, str]:
    """{'<crdc_series_uuid>/<name>': sha256} of every object at the origin."""
    return {k.split("/", 1)[1]: v for k, v in state.objects.items()}


def origin_sizes(state) -> dict[str, int]:
    """{'<crdc_series_uuid>/<name>': size} of the objects the manifest's series hold (not earlier versions)."""
    gcs = Path(state.data_dir) / "gcs"
    want = origin_files(state)
    return {
        f"{p.parent.name}/{p.name}": p.stat().st_size
        for p in gcs.glob("*/*/*.dcm")
        if f"{p.parent.name}/{p.name}" in want
    }


def licenses_of(uuids: list[str]) -> dict[str, str]:
    """{crdc_series_uuid: license_short_name} from the shipped index."""
    import duckdb

    rows = duckdb.execute(
        "SELECT crdc_series_uuid, license_short_name FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?))",
        [str(INDEX), uuids],
    ).fetchall()
    return dict(rows)


def mount_stats(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.idc.stats"))


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def uuid_of(path: Path) -> str:
    return os.getxattr(path, "user.idc.crdc_series_uuid").decode()


def read_all(root: Path) -> dict[str, str]:
    """{'<crdc_series_uuid>/<name>': sha256} of every file under root, read through the mount."""
    from idcfs.testing.sandbox import sha256_file

    return {f"{uuid_of(p)}/{p.name}": sha256_file(p) for p in files_under(root)}


def series_dir(mnt: Path, crdc_series_uuid: str, state) -> Path:
    row = next(s for s in state.series if s["crdc_series_uuid"] == crdc_series_uuid)
    return (
        mnt
        / row["collection_id"]
        / row["PatientID"]
        / row["StudyInstanceUID"]
        / (f"{row['Modality']}_{row['SeriesInstanceUID']}")
    )


def by_modality(state, modality: str) -> dict:
    return next(s for s in state.series if s["Modality"] == modality)
