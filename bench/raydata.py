"""Header extraction over the bench cohort with Ray Data, against the same job in one process.

The job: pydicom.dcmread(stop_before_pixels=True) of every CT instance of the bench origin (16 nlst CT
series, 4,010 instances) through idc://, behind the latency proxy (20 ms per request), 8 reader threads per
process. One process runs it over all files; Ray runs it in map_batches on a local cluster of --cpus CPUs
(default: this machine's cores), each worker process with its own engine and the one cache directory. Each
run starts with an empty cache directory; listing the series is done before the clock starts, as the
driver does it once for every run. Runs alternate; the figures are medians with min-max. The origin's own
ceiling: one ranged GET of idcfs's head size per file, 32 at a time, with no parsing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from idcfs.readpolicy import HEAD

from .harness import CLOSED, REPO, origin, series_of
from .headers import ranged_gets

THREADS = 8


class HeaderScan:
    """The job's step, picklable: the headers of a batch of idc:// paths, THREADS at a time."""

    def __init__(self, storage_options: dict):
        self.storage_options = storage_options

    def __call__(self, batch: dict) -> dict:
        import fsspec
        import pydicom

        fs = fsspec.filesystem("idc", **self.storage_options)  # one per process, made on first use

        def one(path: str) -> str:
            with fs.open(path) as f:
                return str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)

        with ThreadPoolExecutor(THREADS) as pool:
            sops = list(pool.map(one, batch["path"]))
        return {"path": list(batch["path"]), "sop": sops, "pid": [os.getpid()] * len(sops)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.raydata", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "raydata.json")
    args = p.parse_args(argv)
    try:
        import ray
    except ImportError:
        print("bench.raydata needs Ray: pip install 'ray[data]'", file=sys.stderr)
        return 2
    from idcfs.cohort import Cohort
    from idcfs.testing.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-ray-"))
    out: dict = {"latency_ms": args.latency_ms, "cpus": args.cpus, "machine_cores": os.cpu_count(), "runs": []}
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        with origin(args.series) as state, FaultProxy(state.s3_endpoint) as proxy:
            proxy.delay = args.latency_ms / 1000
            ct = [k for k in state.objects if k.split("/")[1] in set(series_of(state, "CT"))]
            for run in range(args.runs):
                seconds = ranged_gets(proxy.url, ct, HEAD)
                out["runs"].append({"run": run, "how": "origin ceiling", "seconds": seconds, "files": len(ct)})
                print(f"origin ceiling run {run}: {len(ct)} ranged GETs of {HEAD >> 10} KiB, 32 at a time, in "
                      f"{seconds:6.1f} s ({len(ct) / seconds:6.0f}/s)", flush=True)  # fmt: skip
                for how in ("one process", "ray"):
                    cache = work / f"cache-{run}-{how.replace(' ', '-')}"
                    options = {"manifest": str(state.manifest), "s3_endpoint": proxy.url, "gcs_endpoint": CLOSED,
                               "cache_dir": str(cache)}  # fmt: skip
                    cohort = Cohort.select("Modality = 'CT'", **options)
                    paths = [f.removeprefix("idc://") for f in cohort.files(progress=False)]
                    proxy.reset_counters()
                    t = time.perf_counter()
                    if how == "one process":
                        rows = HeaderScan(options)({"path": paths})
                        n, workers = len(rows["sop"]), 1
                    else:
                        ds = ray.data.from_items([{"path": q} for q in paths], override_num_blocks=4 * args.cpus)
                        rows = ds.map_batches(HeaderScan(options), batch_size=64, concurrency=args.cpus).take_all()
                        n, workers = len(rows), len({r["pid"] for r in rows})
                    seconds = time.perf_counter() - t
                    assert n == len(paths)
                    record = {"run": run, "how": how, "seconds": seconds, "files": n, "files_per_s": n / seconds,
                              "workers": workers, "gets_per_file": proxy.counters.gets / n}  # fmt: skip
                    out["runs"].append(record)
                    print(f"{how:<12} run {run}: {n} headers in {seconds:6.1f} s ({n / seconds:6.0f}/s), "
                          f"{workers} process(es), {record['gets_per_file']:.2f} GETs/file", flush=True)  # fmt: skip
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    by = {h: [r["seconds"] for r in out["runs"] if r["how"] == h] for h in ("one process", "ray", "origin ceiling")}
    ratios = [a / b for a, b in zip(by["one process"], by["ray"], strict=True)]
    out["ray_vs_one_process"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    ceiling = [a / b for a, b in zip(by["one process"], by["origin ceiling"], strict=True)]
    out["ceiling_vs_one_process"] = {"median": statistics.median(ceiling), "min": min(ceiling), "max": max(ceiling)}
    print(f"Ray ({args.cpus} CPUs on a {os.cpu_count()}-core machine shared with the origin) against one process: "
          f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}); the origin's ceiling "
          f"{statistics.median(ceiling):.2f}x (min {min(ceiling):.2f}, max {max(ceiling):.2f})")  # fmt: skip
    args.json.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
