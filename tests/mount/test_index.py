"""idcfs.Index: SQL over the selection, paths to metadata and back, checked against a real mount's tree."""

from __future__ import annotations

import json
import os

import fsspec
import pytest

import idcfs

from ..conftest import series_dir

TEMPLATE = "%collection_id-%Modality/%PatientID_%SeriesInstanceUID"


def _leaf_dirs(root) -> list[str]:
    return sorted(os.path.relpath(d, root) for d, dirs, files in os.walk(root) if files)


def test_index_maps_paths_and_metadata_like_the_mount(mount, sandbox, tmp_path):
    mnt = mount()
    ix = idcfs.Index(manifest=sandbox.manifest, cache_dir=tmp_path / "cache")
    assert len(ix) == len(sandbox.series)
    assert ix.paths() == _leaf_dirs(mnt)
    rows = ix.sql("SELECT Modality, count(*) AS n FROM index GROUP BY Modality").to_pylist()
    assert {r["Modality"]: r["n"] for r in rows} == {
        m: sum(s["Modality"] == m for s in sandbox.series) for m in {s["Modality"] for s in sandbox.series}
    }
    assert ix.paths("Modality = ?", ["SM"]) == [
        str(series_dir(mnt, s["crdc_series_uuid"], sandbox).relative_to(mnt))
        for s in sandbox.series
        if s["Modality"] == "SM"
    ]
    for s in sandbox.series:
        path = str(series_dir(mnt, s["crdc_series_uuid"], sandbox).relative_to(mnt))
        assert ix.path(s["SeriesInstanceUID"]) == ix.path(s["crdc_series_uuid"]) == path
        study = ix.path(s["StudyInstanceUID"])
        assert (mnt / study).is_dir() and path.startswith(study + "/") and study.count("/") == 2
        # A series directory's metadata is its user.idc.* xattrs, path added.
        xattrs = {k.removeprefix("user.idc."): os.getxattr(mnt / path, k).decode() for k in os.listxattr(mnt / path)}
        meta = ix.metadata(path)
        assert meta.pop("path") == path
        assert meta == {k: v for k, v in xattrs.items() if k not in ("aws_bucket", "url")}
        first = sorted(os.listdir(mnt / path))[0]
        assert ix.metadata(f"{path}/{first}")["crdc_instance_uuid"] == first.removesuffix(".dcm")
        above = ix.metadata(study)
        assert above["StudyInstanceUID"] == s["StudyInstanceUID"] and "SeriesInstanceUID" not in above
    assert ix.metadata("")["series_count"] == str(len(sandbox.series))
    nlst = ix.metadata("nlst")
    assert json.loads(nlst.pop("licenses")) == {"CC BY 4.0": 4}
    assert json.loads(nlst.pop("source_DOIs")) == {"10.5281/zenodo.8347011": 2, "10.7937/tcia.hmq8-j677": 2}
    assert nlst == {"collection_id": "nlst", "series_count": "4", "path": "nlst"}
    assert ix.metadata("")["idc_version"] == os.getxattr(mnt, "user.idc.idc_version").decode() == "v25"
    with pytest.raises(FileNotFoundError):
        ix.metadata("nlst/no-such-patient")
    with pytest.raises(KeyError):
        ix.path("1.2.3.4")
    with pytest.raises(ValueError, match="invalid SQL"):
        ix.sql("SELEC 1")
    with pytest.raises(ValueError, match="disabled by configuration"):  # the SQL reads nothing but the index
        ix.sql("SELECT * FROM read_csv('/etc/passwd')")


def test_index_follows_the_template_and_is_shared_by_idc_fs(mount, sandbox, tmp_path):
    mnt = mount("--template", TEMPLATE)
    ix = idcfs.Index(manifest=sandbox.manifest, template=TEMPLATE, cache_dir=tmp_path / "cache")
    assert ix.paths() == _leaf_dirs(mnt)
    fs = fsspec.filesystem(
        "idc",
        manifest=str(sandbox.manifest),
        template=TEMPLATE,
        s3_endpoint=sandbox.s3_endpoint,
        gcs_endpoint=sandbox.gcs_endpoint,
        cache_dir=str(tmp_path / "cache"),
    )
    assert fs.index.paths() == ix.paths()
    ct = fs.index.paths("Modality = 'CT'")[0]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(ct, detail=False)) == sorted(os.listdir(mnt / ct))
    assert fs.metadata(ct)["SeriesInstanceUID"] == ix.metadata(ct)["SeriesInstanceUID"]
