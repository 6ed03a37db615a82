"""A PyTorch training loop over an IDC cohort: epochs 1 and 2 through idcfs (mount and idc://) against the same
loop over a local `idc download` copy.

The Datasets are the package's own (`idcfs.torch.IdcInstances`), and MONAI's
(`monai.data.Dataset` with `LoadImaged(reader="ITKReader")` over series
directories) in "monai" mode.

The benchmark, on the bench origin (16 nlst CT series, 4,010 instances, 2.11 GB)
behind the latency proxy:
- local copy: idc-index's `download_from_selection` (s5cmd) into a directory,
  timed, then the loop over it (page cache dropped before epoch 1);
- idcfs mount: a fresh cache directory, page cache dropped before epoch 1;
- idc://: a fresh cache directory, fsspec in the workers.
Each loop runs with DataLoader workers (default 4), batch 32, shuffled; in
"pixels" mode each item is the decoded, rescaled pixel array (what training
needs), in "bytes" mode only the file's bytes (the I/O alone), in "monai" mode
a whole series volume per item (batch 1; mount and local copy only).
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

from .harness import CLOSED, REPO, drop_caches, origin, run, unmount, wait_mounted

try:
    import torch
    from torch.utils.data import DataLoader

    from idcfs.torch import IdcInstances
except ImportError:  # needs torch: pip install idcfs[torch]
    torch = None
    IdcInstances = object


class _Bytes(IdcInstances):
    """The file's size after reading it whole, without decoding: the I/O alone."""

    def __getitem__(self, i: int):
        with self.cohort.open(self.files[i]) as f:
            return torch.tensor(len(f.read()))


def dataset(mode: str, files: list[str], storage_options: dict | None = None, series: list[str] | None = None):
    """pixels: idcfs.torch.IdcInstances; bytes: the same files read whole; monai: one item per series
    directory, loaded by MONAI's LoadImaged with its ITK reader."""
    if mode == "pixels":
        return IdcInstances(files, storage_options)
    if mode == "bytes":
        return _Bytes(files, storage_options)
    from monai.data import Dataset
    from monai.transforms import LoadImaged

    load = LoadImaged(keys="image", reader="ITKReader", image_only=True)
    return Dataset([{"image": s} for s in series], transform=load)


def run_epoch(dataset, workers: int, batch: int, seed: int) -> dict:
    """One pass: seconds, time to the first batch, items (files, or series for monai) per second."""
    g = torch.Generator()
    g.manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, generator=g)
    t0 = time.perf_counter()
    first, n = None, 0
    for items in loader:
        n += len(items["image"]) if isinstance(items, dict) else len(items)
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
    p.add_argument("--modes", nargs="+", default=["pixels", "bytes"], choices=["pixels", "bytes", "monai"])
    p.add_argument("--tools", nargs="+", default=["local copy", "idcfs mount", "idc://"])
    p.add_argument("--json", type=Path, default=REPO / "bench" / "dataloader.json")
    args = p.parse_args(argv)
    if torch is None:
        print("bench.dataloader needs PyTorch: pip install 'idcfs[torch]' (and monai itk for --modes monai)",
              file=sys.stderr)  # fmt: skip
        return 2

    import idcfs
    from idcfs.testing.faultproxy import FaultProxy

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
                if mode == "monai" and tool == "idc://":
                    continue  # ITK reads files by path
                batch = 1 if mode == "monai" else args.batch
                out: dict = {}
                mnt = work / "mnt"
                if tool == "local copy":
                    out["download_s"] = idc_download(state, proxy.url, uids, work / "local")
                    data = dataset(mode, _files(work / "local", ct), series=[str(work / "local" / p) for p in ct])
                elif tool == "idcfs mount":
                    mnt.mkdir(exist_ok=True)
                    r = run([sys.executable, "-m", "idcfs", "mount", mnt, "--manifest", state.manifest,
                             "--cache-dir", work / "mount-cache", "--s3-endpoint", proxy.url,
                             "--gcs-endpoint", CLOSED])  # fmt: skip
                    if r.returncode:
                        raise RuntimeError(r.stderr)
                    wait_mounted(mnt)
                    data = dataset(mode, _files(mnt, ct), series=[str(mnt / p) for p in ct])
                else:
                    options = {"manifest": str(state.manifest), "s3_endpoint": proxy.url, "gcs_endpoint": CLOSED,
                               "cache_dir": str(work / "fsspec-cache")}  # fmt: skip
                    import fsspec

                    fs = fsspec.filesystem("idc", **options)
                    files = [f for s in ct for f in fs.find(s)]
                    data = dataset(mode, files, options)
                drop_caches()
                out["epoch1"] = run_epoch(data, args.workers, batch, seed=1)
                out["epoch2"] = run_epoch(data, args.workers, batch, seed=2)
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
