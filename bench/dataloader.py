"""A PyTorch training loop over an IDC cohort: epochs 1 and 2 through idcfs (mount and idc://) against the same
loop over a local `idc download` copy.

`IdcInstances` is the example to copy: a map-style Dataset of DICOM instances,
read with pydicom from plain paths (a mount, a local copy) or from idc:// paths.
For idc:// it makes its fsspec filesystem in each worker process on first use,
never before the fork.

The benchmark, on the bench origin (16 nlst CT series, 4,010 instances, 2.11 GB)
behind the latency proxy:
- local copy: idc-index's `download_from_selection` (s5cmd) into a directory,
  timed, then the loop over it (page cache dropped before epoch 1);
- idcfs mount: a fresh cache directory, page cache dropped before epoch 1;
- idc://: a fresh cache directory, fsspec in the workers.
Each loop runs with DataLoader workers (default 4), batch 32, shuffled; in
"pixels" mode each item is the decoded, rescaled pixel array (what training
needs), in "bytes" mode only the file's bytes (the I/O alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .harness import CLOSED, REPO, drop_caches, origin, run, unmount, wait_mounted

try:
    import torch
    from torch.utils.data import DataLoader, Dataset
except ImportError:  # the Dataset below needs torch: pip install torch
    torch = None
    Dataset = object


class IdcInstances(Dataset):
    """DICOM instances as float32 tensors (CT in Hounsfield units), one item per file.

    files: paths of instance files: under a mount or a local copy, or, with storage_options, idc:// paths
    (as fs.find() returns them). storage_options: those of fsspec.filesystem("idc", ...).
    pixels=False yields the file size instead of decoding, to measure I/O alone.
    """

    def __init__(self, files: list[str], storage_options: dict | None = None, pixels: bool = True):
        self.files = files
        self.storage_options = storage_options
        self.pixels = pixels
        self._fs = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.files)

    def _open(self, path: str):
        if self.storage_options is None:
            return open(path, "rb")
        if self._pid != os.getpid():  # first use in this worker process: a filesystem of its own
            import fsspec

            self._fs, self._pid = fsspec.filesystem("idc", **self.storage_options), os.getpid()
        return self._fs.open(path)

    def __getitem__(self, i: int):
        import pydicom

        with self._open(self.files[i]) as f:
            if not self.pixels:
                return torch.tensor(len(f.read()))
            ds = pydicom.dcmread(f)
        image = ds.pixel_array.astype(np.float32)
        image = image * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        return torch.from_numpy(image)


def run_epoch(dataset, workers: int, batch: int, seed: int) -> dict:
    """One pass: seconds, time to the first batch, files/s."""
    g = torch.Generator()
    g.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=g)
    t0 = time.perf_counter()
    first, n = None, 0
    for items in loader:
        n += len(items)
        if first is None:
            first = time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    assert n == len(dataset)
    return {"seconds": seconds, "first_batch_s": first, "files_per_s": n / seconds}


def idc_download(state, endpoint: str, series_uids: list[str], dest: Path) -> float:
    """idc-index's download of the series (s5cmd underneath) into dest; returns seconds."""
    code = (
        "import json, sys\nfrom idc_index import index\n"
        f"index.aws_endpoint_url = {endpoint!r}\n"
        "c = index.IDCClient()\n"
        f"c.download_from_selection(downloadDir={str(dest)!r}, seriesInstanceUID={series_uids!r}, "
        "show_progress_bar=False, use_s5cmd_sync=False)\n"
    )
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return time.perf_counter() - t


def _files(root: Path, series_paths: list[str]) -> list[str]:
    return [str(root / p / name) for p in series_paths for name in sorted(os.listdir(root / p))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dataloader", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16, help="CT series in the cohort (default 16, about 2 GB)")
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--modes", nargs="+", default=["pixels", "bytes"], choices=["pixels", "bytes"])
    p.add_argument("--tools", nargs="+", default=["local copy", "idcfs mount", "idc://"])
    p.add_argument("--json", type=Path, default=REPO / "bench" / "dataloader.json")
    args = p.parse_args(argv)
    if torch is None:
        print("bench.dataloader needs PyTorch: pip install torch", file=sys.stderr)
        return 2

    import idcfs
    from idcfs.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-dl-"))
    results: dict = {"latency_ms": args.latency_ms, "workers": args.workers, "batch": args.batch, "runs": {}}
    with origin(args.series) as state, FaultProxy(state.s3_endpoint) as proxy:
        proxy.delay = args.latency_ms / 1000
        ix = idcfs.Index(manifest=state.manifest, cache_dir=work / "index-cache")
        ct = ix.paths("Modality = 'CT'")
        uids = [ix.metadata(s)["SeriesInstanceUID"] for s in ct]
        for mode in args.modes:
            runs = results["runs"].setdefault(mode, {})
            for tool in args.tools:
                out: dict = {}
                mnt = work / "mnt"
                if tool == "local copy":
                    out["download_s"] = idc_download(state, proxy.url, uids, work / "local")
                    dataset = IdcInstances(_files(work / "local", ct), pixels=mode == "pixels")
                elif tool == "idcfs mount":
                    mnt.mkdir(exist_ok=True)
                    r = run([sys.executable, "-m", "idcfs", "mount", mnt, "--manifest", state.manifest,
                             "--cache-dir", work / "mount-cache", "--s3-endpoint", proxy.url,
                             "--gcs-endpoint", CLOSED])  # fmt: skip
                    if r.returncode:
                        raise RuntimeError(r.stderr)
                    wait_mounted(mnt)
                    dataset = IdcInstances(_files(mnt, ct), pixels=mode == "pixels")
                else:
                    options = {"manifest": str(state.manifest), "s3_endpoint": proxy.url, "gcs_endpoint": CLOSED,
                               "cache_dir": str(work / "fsspec-cache")}  # fmt: skip
                    import fsspec

                    fs = fsspec.filesystem("idc", **options)
                    files = [f for s in ct for f in fs.find(s)]
                    dataset = IdcInstances(files, options, pixels=mode == "pixels")
                drop_caches()
                out["epoch1"] = run_epoch(dataset, args.workers, args.batch, seed=1)
                out["epoch2"] = run_epoch(dataset, args.workers, args.batch, seed=2)
                if tool == "idcfs mount":
                    unmount(mnt)
                for d in ("local", "mount-cache", "fsspec-cache"):
                    shutil.rmtree(work / d, ignore_errors=True)
                runs[tool] = out
                e1, e2 = out["epoch1"], out["epoch2"]
                dl = f"download {out['download_s']:.1f}s, " if "download_s" in out else ""
                print(f"{mode:<6} {tool:<12} {dl}epoch 1 {e1['seconds']:6.1f}s "
                      f"(first batch {e1['first_batch_s']:.2f}s), "
                      f"epoch 2 {e2['seconds']:6.1f}s  [{e1['files_per_s']:.0f} / {e2['files_per_s']:.0f} files/s]",
                      flush=True)  # fmt: skip
            local = runs.get("local copy")
            if local:
                for tool, out in runs.items():
                    if tool != "local copy":
                        out["epoch1_vs_download_then_epoch1"] = (
                            local["download_s"] + local["epoch1"]["seconds"]
                        ) / out["epoch1"]["seconds"]
                        out["epoch2_vs_local"] = local["epoch2"]["seconds"] / out["epoch2"]["seconds"]
                        print(f"{mode:<6} {tool:<12} epoch 1: {out['epoch1_vs_download_then_epoch1']:.2f}x "
                              f"download-then-epoch-1; epoch 2: {out['epoch2_vs_local']:.2f}x the local copy",
                              flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
