"""Fixtures: one sandbox origin (moto S3 + fake-gcs-server) per session, and real mounts made with the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from idcfs.sandbox import Sandbox

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
    sb = Sandbox(DATA_DIR)
    with sb as state:
        state.sandbox = sb
        yield state


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


class Mounter:
    def __init__(self, tmp_path: Path, sandbox, cache_root: Path):
        self.tmp_path = tmp_path
        self.sandbox = sandbox
        self.cache_root = cache_root
        self.mounted: list[Path] = []
        self.n = 0

    def __call__(self, *extra, source="aws", manifest=True, name=None) -> Path:
        self.n += 1
        mnt = self.tmp_path / (name or f"mnt{self.n}")
        mnt.mkdir()
        args = ["mount", mnt, "--cache-dir", self.cache_root, "--source", source]
        args += ["--s3-endpoint", self.sandbox.s3_endpoint, "--gcs-endpoint", self.sandbox.gcs_endpoint]
        if manifest:
            args += ["--manifest", self.sandbox.manifest]
        r = idcfs(*args, *extra)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mnt)
        self.mounted.append(mnt)
        return mnt

    def cleanup(self):
        for mnt in self.mounted:  # harmless when already unmounted; also clears stale mounts
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@pytest.fixture
def mount(tmp_path, sandbox, cache_root):
    m = Mounter(tmp_path, sandbox, cache_root)
    yield m
    m.cleanup()


def origin_files(state) -> dict[str, str]:
    """{'<crdc_series_uuid>/<name>': sha256} of every object at the origin."""
    return {k.split("/", 1)[1]: v for k, v in state.objects.items()}


def mount_stats(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.idc.stats"))
