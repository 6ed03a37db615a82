"""Ray Data over idc://: a local Ray cluster of 2 CPUs, its worker processes reading the sandbox through their
own engines and one shared cache directory, every byte checked against the origin. Over a mount:
tests/mount/test_ray.py.

Needs ray[data] (`make test-ray` installs it); skipped without.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle

import pytest

ray = pytest.importorskip("ray")

from idcfs.cohort import Cohort  # noqa: E402
from idcfs.ray import arrow_filesystem, read_binary_files  # noqa: E402
from idcfs.testing.faultproxy import FaultProxy  # noqa: E402

from ..conftest import origin_files  # noqa: E402


def headers(batch: dict) -> dict:
    """A DICOM decoding step as users write it: the header of each file, with what the test checks."""
    import pydicom

    out = {"path": [], "sha256": [], "pid": [], "sop": [], "modality": []}
    for path, data in zip(batch["path"], batch["bytes"], strict=True):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        out["path"].append(path)
        out["sha256"].append(hashlib.sha256(data).hexdigest())
        out["pid"].append(os.getpid())
        out["sop"].append(str(ds.SOPInstanceUID))
        out["modality"].append(str(ds.Modality))
    return out


class ReadAndHash:
    """Reads whole files through idc:// in a Ray actor (a worker process with its own engine)."""

    def __init__(self, storage_options: dict):
        import fsspec

        self.fs = fsspec.filesystem("idc", **storage_options)

    def __call__(self, batch: dict) -> dict:
        sums = [hashlib.sha256(self.fs.cat_file(p)).hexdigest() for p in batch["path"]]
        return {"path": list(batch["path"]), "sha256": sums, "pid": [os.getpid()] * len(sums)}


def _options(sandbox, s3, cache_dir) -> dict:
    return {
        "manifest": str(sandbox.manifest),
        "s3_endpoint": s3.url,
        "gcs_endpoint": sandbox.gcs_endpoint,
        "cache_dir": str(cache_dir),  # one node: its worker processes share it
    }


def test_ray_reads_idc_paths_in_worker_processes_fetching_each_file_once(cluster, sandbox, tmp_path):
    origin = origin_files(sandbox)
    with FaultProxy(sandbox.s3_endpoint) as s3:
        options = _options(sandbox, s3, tmp_path / "node-cache")
        cohort = Cohort.select("Modality != 'SM'", **options)
        files = cohort.files(progress=False)
        fs = cohort.filesystem()
        keys = {f.removeprefix("idc://"): f"{fs.info(f)['crdc_series_uuid']}/{f.rsplit('/', 1)[1]}" for f in files}
        # The filesystem pickles as its options: a worker builds its own engine.
        assert pickle.loads(pickle.dumps(arrow_filesystem(**options))).type_name == "py::fsspec+idc"
        s3.reset_counters()
        rows = read_binary_files(cohort, override_num_blocks=8).map_batches(headers, batch_size=16).take_all()
        gets = s3.counters.gets
        assert sorted(r["path"] for r in rows) == sorted(keys)
        assert all(r["sha256"] == origin[keys[r["path"]]] for r in rows)
        assert os.getpid() not in {r["pid"] for r in rows}  # decoded in Ray's workers
        assert len(files) > 200 and gets <= 1.15 * len(files), (gets, len(files))

        # Two worker processes for certain (an actor pool of 2, one batch at a time each), one cache directory.
        options = _options(sandbox, s3, tmp_path / "second-node-cache")
        s3.reset_counters()
        pool = ray.data.ActorPoolStrategy(size=2, max_tasks_in_flight_per_actor=1)
        rows = (
            ray.data.from_items([{"path": p} for p in keys], override_num_blocks=16)
            .map_batches(ReadAndHash, fn_constructor_args=(options,), compute=pool, batch_size=8)
            .take_all()
        )
        gets = s3.counters.gets
    print(
        f"{len(files)} files, {gets} GETs ({gets / len(files):.3f} per file), {len({r['pid'] for r in rows})} workers"
    )
    assert sorted(r["path"] for r in rows) == sorted(keys)
    assert all(r["sha256"] == origin[keys[r["path"]]] for r in rows)
    assert len({r["pid"] for r in rows}) == 2 and os.getpid() not in {r["pid"] for r in rows}
    assert gets <= 1.15 * len(files), (gets, len(files))
