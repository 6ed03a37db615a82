"""PyTorch Datasets over an IDC cohort, read from a mount or from idc://.

    from torch.utils.data import DataLoader
    from idcfs.torch import Cohort, IdcInstances, IdcSeries

    cohort = Cohort.select("Modality = 'CT'", manifest="cohort.s5cmd")          # idc://
    cohort = Cohort.select("Modality = 'CT'", mountpoint="~/idc", manifest=...)  # a mount of the same selection
    mine = cohort.shard()                          # this DDP rank's series (torch.distributed, or RANK/WORLD_SIZE)
    loader = DataLoader(IdcInstances(mine), batch_size=32, shuffle=True, num_workers=8)
    volumes = DataLoader(IdcSeries(mine), batch_size=None, num_workers=4)

Everything here pickles as plain data (paths and options): spawned workers and Ray tasks receive it, and
each process makes its own idc:// filesystem on first use, never before a fork. Needs `pip install
idcfs[torch]` (torch, pydicom, SimpleITK).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .cohort import Cohort

__all__ = ["Cohort", "IdcInstances", "IdcSeries", "pixels"]


def pixels(ds) -> torch.Tensor:
    """An instance's pixel data as float32 after its modality LUT or rescale (Hounsfield units for CT), as
    pydicom applies them: (rows, columns), or (frames, rows, columns) for a multi-frame instance. The per-frame
    rescale of enhanced multi-frame objects is not applied (pydicom reads the top-level attributes only)."""
    from pydicom.pixels import apply_modality_lut

    return torch.from_numpy(np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32))


def _cohort(source: Cohort | Sequence[str | os.PathLike], storage_options: Mapping | None) -> Cohort:
    if isinstance(source, Cohort):
        if storage_options is not None:
            raise TypeError("a Cohort carries its own storage_options")
        return source
    if isinstance(source, (str, os.PathLike)):
        raise TypeError("give a Cohort or a list of paths, not one path")
    return Cohort(source, storage_options)


class IdcInstances(Dataset):
    """One item per instance file: `transform(pydicom.Dataset)`, by default `pixels` (a float32 tensor).

    source: a Cohort (its series' files, listed now), or a list of instance paths: under a mount or, with
    storage_options (those of fsspec.filesystem("idc", ...)), idc:// paths as fs.find() gives them.
    transform must pickle (a module-level function) for spawned workers.
    """

    def __init__(
        self,
        source: Cohort | Sequence[str | os.PathLike],
        storage_options: Mapping[str, Any] | None = None,
        *,
        transform: Callable[[Any], Any] = pixels,
    ):
        cohort = _cohort(source, storage_options)
        self.files = cohort.files() if isinstance(source, Cohort) else [cohort._normal(p) for p in source]
        self.cohort = Cohort([], cohort.storage_options)  # opens the files; their list is self.files alone
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import pydicom

        with self.cohort.open(self.files[i]) as f:
            ds = pydicom.dcmread(f)
            return self.transform(ds)


class IdcSeries(Dataset):
    """One item per series: a dict with "image" (a float32 tensor, slices × rows × columns, rescaled),
    "spacing" and "origin" (3 floats each, in z, y, x order as "image"), and "path".

    reader: "sitk" reads the files of a mount with SimpleITK's series reader (GDCM's slice order);
    "pydicom" reads the files with pydicom and orders slices along their normal (idc:// or a mount);
    "auto" (default) takes SimpleITK for a mount's paths. transform, if given, maps the dict.
    Use batch_size=None (or 1) in a DataLoader: volumes differ in size.
    """

    def __init__(
        self,
        source: Cohort | Sequence[str | os.PathLike],
        storage_options: Mapping[str, Any] | None = None,
        *,
        reader: str = "auto",
        transform: Callable[[dict], Any] | None = None,
    ):
        if reader not in ("auto", "sitk", "pydicom"):
            raise ValueError(f"reader {reader!r}: give auto, sitk or pydicom")
        self.cohort = _cohort(source, storage_options)
        if reader == "auto":
            reader = "sitk" if self.cohort.storage_options is None else "pydicom"
        if reader == "sitk" and self.cohort.storage_options is not None:
            raise ValueError("reader 'sitk' reads files by path: give a mount's paths, or use reader='pydicom'")
        self.reader = reader
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cohort)

    def __getitem__(self, i: int) -> Any:
        path = self.cohort.series[i]
        files = self.cohort.instances(path)
        item = _read_sitk(files) if self.reader == "sitk" else _read_pydicom(self.cohort, files)
        item["path"] = path
        return self.transform(item) if self.transform is not None else item


def _read_sitk(files: list[str]) -> dict:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    # GDCM orders the files along the slice normal (it reads each header once).
    directory = os.path.dirname(files[0])
    ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory) or files
    reader.SetFileNames(list(ordered))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return {
        "image": torch.from_numpy(array),
        "spacing": torch.tensor(image.GetSpacing()[::-1], dtype=torch.float64),
        "origin": torch.tensor(image.GetOrigin()[::-1], dtype=torch.float64),
    }


def _read_pydicom(cohort: Cohort, files: list[str]) -> dict:
    import pydicom

    slices = []
    for path in files:
        with cohort.open(path) as f:
            slices.append(pydicom.dcmread(f))
    if len(slices) == 1 and int(slices[0].get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{files[0]}: a multi-frame instance; read it with IdcInstances")
    position = [s.get("ImagePositionPatient") for s in slices]
    orientation = slices[0].get("ImageOrientationPatient")
    if orientation is not None and all(p is not None for p in position):
        normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
        along = np.array([float(np.dot(normal, np.asarray(p, float))) for p in position])
        order = np.argsort(along, kind="stable")
        gaps = np.diff(along[order])
        z = float(np.median(gaps)) if len(gaps) else float(slices[0].get("SliceThickness", 1) or 1)
        origin = [float(v) for v in position[order[0]]][::-1]
    else:  # no geometry: the instance number, as viewers do
        order = np.argsort([int(s.get("InstanceNumber", 0) or 0) for s in slices], kind="stable")
        z, origin = float(slices[0].get("SliceThickness", 1) or 1), [0.0, 0.0, 0.0]
    rows, columns = (float(v) for v in slices[0].get("PixelSpacing", (1, 1)))
    return {
        "image": torch.stack([pixels(slices[j]) for j in order]),
        "spacing": torch.tensor([z, rows, columns], dtype=torch.float64),
        "origin": torch.tensor(origin, dtype=torch.float64),
    }
