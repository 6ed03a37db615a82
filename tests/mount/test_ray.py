"""Ray Data over a mount: a local Ray cluster of 2 CPUs, its worker processes reading a mount's paths, every
byte checked against the origin. Over idc://: tests/engine/test_ray.py.

Needs ray[data] (`make test-ray` installs it); skipped without.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

from idcfs.cohort import Cohort  # noqa: E402
from idcfs.ray import read_binary_files  # noqa: E402

from ..conftest import origin_files  # noqa: E402
from ..engine.test_ray import headers  # noqa: E402


def _key(path: str) -> str:
    return os.getxattr(path, "user.idc.crdc_series_uuid").decode() + "/" + os.path.basename(path)


def test_ray_reads_a_mount_s_paths(cluster, mount, sandbox):
    mnt = mount()
    cohort = Cohort.select("Modality != 'SM'", mountpoint=mnt, manifest=sandbox.manifest)
    rows = read_binary_files(cohort).map_batches(headers, batch_size=32, concurrency=2).take_all()
    origin = origin_files(sandbox)
    assert len(rows) == len(cohort.files()) and {r["modality"] for r in rows} >= {"CT", "MR", "SEG"}
    assert all(r["sha256"] == origin[_key(r["path"])] for r in rows)
