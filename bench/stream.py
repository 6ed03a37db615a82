"""Streaming workloads, side by side: whole CT series read in order, and a training-style epoch.

Tools, all pointed at the same sandbox S3 origin (moto) in the same run:
- local disk (the generated files, page cache dropped): the physical limit;
- s5cmd `run` of `cp s3://…/uuid/* …` lines, as idc-index downloads; to disk, and
  to tmpfs with its default 256 workers as the origin's ceiling;
- idcfs, cold (fresh cache directory, page cache dropped), and the daemon's CPU time per GET over it;
- `idcfs prefetch --manifest` of the same series into a fresh cache directory, process start to done;
- rclone mount (vfs cache off, read-only) and s3fs-fuse (public_bucket, ro); rclone with
  `--vfs-cache-mode full` for the epochs (its second epoch reads its own cache).

Latency: this kernel has no netem qdisc, so round-trip time is added by a
proxy in front of the origin that waits `--latency-ms` before forwarding each
request (every tool goes through it). 0 ms is measured too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .harness import (
    MOUNTS,
    REPO,
    cpu_seconds,
    daemon_pid,
    drop_caches,
    mount_stats,
    origin,
    origin_dir,
    run,
    s5cmd_download,
    series_of,
    summary,
)

EPOCH_TOOLS = ("idcfs", "idcfs no-passthrough", "local disk", "rclone vfs-full")

# -- workloads


def series_in_order(src, uuids, dest: Path) -> int:
    """cp -r each series directory, one after another, as a user copying series would."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for uuid in uuids:
        r = run(["cp", "-r", src(uuid), dest / uuid])
        if r.returncode:
            raise RuntimeError(r.stderr)
    return sum(p.stat().st_size for p in dest.rglob("*.dcm"))


def _read_whole(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        n = 0
        while chunk := f.read(1 << 20):
            n += len(chunk)
    return n


def epoch(paths: list[str], workers: int = 8, batch: int = 32, seed: int = 0) -> dict:
    """Random whole-file reads by worker processes: time to the first batch, files/s."""
    order = paths[:]
    random.Random(seed).shuffle(order)
    t0 = time.perf_counter()
    first = None
    with multiprocessing.Pool(workers) as pool:
        for i, _ in enumerate(pool.imap_unordered(_read_whole, order, chunksize=1), 1):
            if i == batch:
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"first_batch_s": first, "files_per_s": len(order) / total, "seconds": total}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16, help="CT series in the cohort (default 16, about 2 GB)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[20.0, 0.0])
    p.add_argument("--tools", nargs="+", default=["local disk", "s5cmd", "idcfs", "idcfs prefetch", "rclone mount",
                                                  "rclone vfs-full", "s3fs-fuse"])  # fmt: skip
    p.add_argument("--workers", type=int, default=8, help="reader processes in the epochs (default 8)")
    p.add_argument("--drop", type=int, choices=(1, 3), default=3,
                   help="drop_caches before the warm epoch: 3 (default) page cache, dentries and inodes; "
                   "1 the page cache only")  # fmt: skip
    p.add_argument("--json", type=Path, default=REPO / "bench" / "stream.json")
    args = p.parse_args(argv)

    from idcfs.testing.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
    with origin(args.series) as state:
        uuids = series_of(state, "CT")
        files = [f for u in uuids for f in origin_dir(state, u).iterdir()]
        size = sum(f.stat().st_size for f in files)
        results: dict = {"series": len(uuids), "instances": len(files), "bytes": size, "runs": {}}
        print(f"cohort: {len(uuids)} CT series, {results['instances']} files, {size / 1e9:.2f} GB", flush=True)
        for latency in args.latency_ms:
            with FaultProxy(state.s3_endpoint) as proxy:
                proxy.delay = latency / 1000
                runs = results["runs"].setdefault(f"{latency:g} ms", {})
                for tool in args.tools:
                    if tool == "local disk" and latency:
                        continue  # no network involved
                    rates, epochs = [], []
                    for _ in range(args.repeat):
                        drop_caches()
                        if tool == "s5cmd":
                            t = time.perf_counter()
                            got = s5cmd_download(proxy.url, uuids, work / "dest")
                            rates.append(got / (time.perf_counter() - t) / 1e6)
                            t = time.perf_counter()
                            s5cmd_download(proxy.url, uuids, Path("/dev/shm/idcfs-bench"))
                            runs.setdefault("origin ceiling (s5cmd to tmpfs)", []).append(
                                size / (time.perf_counter() - t) / 1e6
                            )
                            shutil.rmtree("/dev/shm/idcfs-bench", ignore_errors=True)
                            continue
                        if tool == "idcfs prefetch":  # process start to done, into a fresh cache directory
                            manifest = work / "ct.s5cmd"
                            manifest.write_text("".join(f"cp s3://idc-open-data/{u}/* .\n" for u in uuids))
                            shutil.rmtree(work / "prefetch-cache", ignore_errors=True)
                            t = time.perf_counter()
                            r = run([sys.executable, "-m", "idcfs", "prefetch", "-q", "--manifest", manifest,
                                     "--cache-dir", work / "prefetch-cache", "--s3-endpoint", proxy.url])  # fmt: skip
                            rates.append(size / (time.perf_counter() - t) / 1e6)
                            if r.returncode:
                                raise RuntimeError(r.stderr)
                            continue
                        if tool != "rclone vfs-full":  # measured for its epochs only
                            with MOUNTS[tool](state, proxy.url, work) as src:
                                pid = daemon_pid(work / "idcfs") if tool.startswith("idcfs") else 0
                                cpu = cpu_seconds(pid) if pid else 0.0
                                t = time.perf_counter()
                                got = series_in_order(src, uuids, work / "dest")
                                rates.append(got / (time.perf_counter() - t) / 1e6)
                                if got != size:
                                    raise RuntimeError(f"{tool}: copied {got} bytes, expected {size}")
                                if pid:
                                    gets = mount_stats(work / "idcfs")["get_requests"]
                                    per_get = (cpu_seconds(pid) - cpu) / gets * 1e3
                                    runs.setdefault(f"{tool} daemon CPU ms per GET", []).append(per_get)
                        if tool in EPOCH_TOOLS:
                            with MOUNTS[tool](state, proxy.url, work) as src:
                                paths = [str(f) for u in uuids for f in sorted(src(u).iterdir())]
                                drop_caches()
                                cold = epoch(paths, workers=args.workers)
                                drop_caches(args.drop)  # the second epoch: idcfs serves from its cache
                                pid = daemon_pid(work / "idcfs") if tool.startswith("idcfs") else 0
                                cpu = cpu_seconds(pid) if pid else 0.0
                                opens = mount_stats(work / "idcfs")["passthrough_opens"] if pid else 0
                                warm = epoch(paths, workers=args.workers, seed=1)
                                if pid:
                                    warm["daemon_cpu_ms_per_file"] = (cpu_seconds(pid) - cpu) / len(paths) * 1e3
                                    opens = mount_stats(work / "idcfs")["passthrough_opens"] - opens
                                    warm["passthrough_opens"] = opens
                                epochs.append({"cold": cold, "warm": warm})
                    runs[tool] = {"series_MBps": summary(rates) if rates else None, "epochs": epochs}
                    if rates:
                        print(f"{latency:g} ms  {tool:<14} series in order: {statistics.median(rates):7.1f} MB/s "
                              f"(runs: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)  # fmt: skip
                    for e in epochs:
                        print(f"{'':20} epoch cold {e['cold']['files_per_s']:.0f} files/s "
                              f"(first batch {e['cold']['first_batch_s']:.2f}s), "
                              f"warm {e['warm']['files_per_s']:.0f} files/s"
                              + (f", daemon CPU {e['warm']['daemon_cpu_ms_per_file']:.3f} ms/file, "
                                 f"{e['warm']['passthrough_opens']} passthrough opens"
                                 if "daemon_cpu_ms_per_file" in e["warm"] else ""), flush=True)  # fmt: skip
                for key, per_get in list(runs.items()):
                    if key.endswith("daemon CPU ms per GET") and isinstance(per_get, list):
                        runs[key] = summary(per_get)
                        print(f"{latency:g} ms  {key}: {statistics.median(per_get):.2f} "
                              f"(runs: {', '.join(f'{r:.2f}' for r in per_get)})", flush=True)  # fmt: skip
                ceiling = runs.get("origin ceiling (s5cmd to tmpfs)")
                if isinstance(ceiling, list):
                    runs["origin ceiling (s5cmd to tmpfs)"] = {"series_MBps": summary(ceiling)}
                    print(f"{latency:g} ms  origin ceiling: {statistics.median(ceiling):.1f} MB/s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
