"""idcfs.torch and MONAI on a real mount and on idc://, in DataLoader worker processes.

The reference is the origin's own files (the sandbox's GCS bucket directory), read with the same
readers as a local `idc download` copy would be. Needs torch (`make test-torch` installs torch, MONAI and
ITK); without it these tests are skipped.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import pydicom  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from idcfs.store import GCS_MIRROR  # noqa: E402
from idcfs.torch import Cohort, IdcInstances, IdcSeries, pixels  # noqa: E402

from ..conftest import by_modality, series_dir  # noqa: E402


def _options(sandbox, cache_dir: Path) -> dict:
    return {
        "manifest": str(sandbox.manifest),
        "s3_endpoint": sandbox.s3_endpoint,
        "gcs_endpoint": sandbox.gcs_endpoint,
        "cache_dir": str(cache_dir),
    }


def _origin_dir(sandbox, row: dict) -> Path:
    """The origin's own copy of a series: what `idc download` would have written."""
    return Path(sandbox.data_dir) / "gcs" / GCS_MIRROR[row["aws_bucket"]] / row["crdc_series_uuid"]


def _relative(cohort: Cohort, root: str) -> list[str]:
    return [s.removeprefix(root).strip("/") for s in cohort.series]


def test_cohorts_select_shard_and_pickle(mount, sandbox, tmp_path):
    mnt = mount()
    on_mount = Cohort.select(mountpoint=mnt, manifest=sandbox.manifest)
    on_idc = Cohort.select(**_options(sandbox, tmp_path / "c"))
    assert len(on_mount) == len(sandbox.series) == len(on_idc)
    assert _relative(on_mount, str(mnt)) == _relative(on_idc, "idc://")
    assert all(os.path.isdir(s) for s in on_mount.series)
    ct = Cohort.select("Modality = 'CT'", mountpoint=mnt, manifest=sandbox.manifest)
    assert 0 < len(ct) < len(on_mount) and set(ct.series) <= set(on_mount.series)

    for cohort in (on_mount, on_idc):
        files = cohort.files(progress=False)
        assert len(files) == len(sandbox.objects)
        back = pickle.loads(pickle.dumps(cohort))  # with the listings made: workers list nothing again
        assert back.series == cohort.series and back.storage_options == cohort.storage_options
        assert back._instances == cohort._instances and back._fs is None

        shards = [cohort.shard(rank, 4) for rank in range(4)]
        assert sorted(s for part in shards for s in part.series) == sorted(cohort.series)
        assert sum(len(p.files()) for p in shards) == len(files)
        even = [len(cohort.shard(rank, 4, even=True)) for rank in range(4)]
        assert len(set(even)) == 1 and sum(even) == len(cohort) // 4 * 4

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "3")
        assert on_mount.shard().series == on_mount.series[1::3]
    with pytest.raises(ValueError, match="is not a directory: give the mount's own selection"):
        Cohort.select(mountpoint=mnt, manifest=sandbox.manifest, layout="readable")
    with pytest.raises(ValueError, match="rank 3 of world_size 3"):
        on_mount.shard(3, 3)
    with pytest.raises(TypeError, match="'source' is not a selection option of a mount"):
        Cohort.select(mountpoint=mnt, source="gcs")
    with pytest.raises(ValueError, match="reader 'sitk' reads files by path"):
        IdcSeries(on_idc, reader="sitk")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("where", ["mount", "idc"])
def test_instances_in_worker_processes_equal_the_origin(mount, sandbox, tmp_path, where, start_method):
    row = by_modality(sandbox, "CT")
    only = "crdc_series_uuid = ?", [row["crdc_series_uuid"]]
    if where == "mount":
        cohort = Cohort.select(*only, mountpoint=mount(), manifest=sandbox.manifest)
    else:
        cohort = Cohort.select(*only, **_options(sandbox, tmp_path / "c"))
    dataset = IdcInstances(cohort)
    assert len(dataset) > 100
    loader = DataLoader(dataset, batch_size=None, num_workers=2, multiprocessing_context=start_method)
    origin = _origin_dir(sandbox, row)
    for path, image in zip(dataset.files, loader, strict=True):
        expected = pixels(pydicom.dcmread(origin / path.rsplit("/", 1)[1]))
        assert image.dtype == torch.float32 and torch.equal(image, expected), path


def test_series_volumes_by_both_readers_equal_the_origin(mount, sandbox, tmp_path):
    import SimpleITK as sitk

    mnt = mount()
    rows = [s for s in sandbox.series if s["Modality"] == "CT"]
    paths = [series_dir(mnt, r["crdc_series_uuid"], sandbox) for r in rows]
    by_sitk = IdcSeries(Cohort(paths))
    idc = Cohort([p.relative_to(mnt) for p in paths], storage_options=_options(sandbox, tmp_path / "c"))
    by_pydicom = IdcSeries(idc)
    assert by_sitk.reader == "sitk" and by_pydicom.reader == "pydicom"
    loader = DataLoader(by_pydicom, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    for row, a, b in zip(rows, (by_sitk[i] for i in range(len(rows))), loader, strict=True):
        local = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(_origin_dir(sandbox, row))))
        expected = torch.from_numpy(sitk.GetArrayFromImage(local).astype("float32"))
        assert torch.equal(a["image"], expected) and torch.equal(b["image"], expected), row["crdc_series_uuid"]
        assert torch.allclose(a["spacing"], torch.tensor(local.GetSpacing()[::-1], dtype=torch.float64))
        assert torch.allclose(a["spacing"], b["spacing"]) and torch.allclose(a["origin"], b["origin"])
        assert b["path"].removeprefix("idc://") == a["path"].removeprefix(str(mnt)).strip("/")


def test_monai_loads_series_from_a_mount_in_workers(mount, sandbox):
    pytest.importorskip("monai")
    pytest.importorskip("itk")
    from monai.data import Dataset
    from monai.transforms import LoadImage, LoadImaged

    mnt = mount()
    rows = [s for s in sandbox.series if s["Modality"] in ("CT", "MR", "PT")]
    data = [{"image": str(series_dir(mnt, r["crdc_series_uuid"], sandbox))} for r in rows]
    dataset = Dataset(data, transform=LoadImaged(keys="image", reader="ITKReader", image_only=True))
    loader = DataLoader(dataset, batch_size=1, num_workers=2)
    local = LoadImage(reader="ITKReader", image_only=True)
    for row, batch in zip(rows, loader, strict=True):
        expected = local(str(_origin_dir(sandbox, row)))
        assert tuple(batch["image"].shape[1:]) == tuple(expected.shape), row["crdc_series_uuid"]
        assert torch.equal(batch["image"][0].as_tensor(), expected.as_tensor()), row["crdc_series_uuid"]
        assert torch.allclose(batch["image"][0].affine, expected.affine)
