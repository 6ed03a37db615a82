"""Streaming workloads, side by side: whole CT series read in order, and a training-style epoch.

Tools, all pointed at the same sandbox S3 origin (moto) in the same run:
- local disk (the generated files, page cache dropped): the physical limit;
- s5cmd `run` of `cp s3://…/uuid/* …` lines, as idc-index downloads; to disk, and
  to tmpfs with its default 256 workers as the origin's ceiling;
- idcfs, cold (fresh cache directory, page cache dropped);
- rclone mount (vfs cache off, read-only) and s3fs-fuse (public_bucket, ro).

Latency: this kernel has no netem qdisc, so round-trip time is added by a
proxy in front of the origin that waits `--latency-ms` before forwarding each
request (every tool goes through it). 0 ms is measured too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("IDCFS_BENCH_DATA", REPO / ".bench"))


def bench_cohort(index: Path, n_series: int):
    import duckdb

    rows = duckdb.execute(
        "SELECT crdc_series_uuid, instanceCount FROM read_parquet(?) WHERE collection_id = 'nlst' "
        "AND Modality = 'CT' AND instanceCount BETWEEN 200 AND 400 ORDER BY crdc_series_uuid LIMIT ?",
        [str(index), n_series],
    ).fetchall()
    return tuple((uuid, int(n), "bench CT series") for uuid, n in rows)


def drop_caches() -> None:
    subprocess.run(["sync"])
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def wait_mounted(mnt: Path, proc=None, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mnt} did not mount")
        time.sleep(0.1)


def unmount(mnt: Path) -> None:
    run(["fusermount3", "-u", "-z", mnt])


# -- the tools: each is a context manager yielding a function series_uuid -> source directory


@contextlib.contextmanager
def local_disk(state, endpoint=None, work=None):
    from idcfs.namespace import GCS_MIRROR

    root = Path(state.data_dir) / "gcs" / GCS_MIRROR["idc-open-data"]
    yield lambda uuid: root / uuid


@contextlib.contextmanager
def idcfs_mount(state, endpoint, work: Path):
    mnt, cache = work / "idcfs", work / "idcfs-cache"
    shutil.rmtree(cache, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    r = run([sys.executable, "-m", "idcfs", "mount", mnt, "--manifest", state.manifest, "--cache-dir", cache,
             "--s3-endpoint", endpoint, "--gcs-endpoint", "http://127.0.0.1:9"])  # fmt: skip
    if r.returncode:
        raise RuntimeError(r.stderr)
    rows = {s["crdc_series_uuid"]: s for s in state.series}

    def path(uuid):
        s = rows[uuid]
        return mnt / s["collection_id"] / s["PatientID"] / s["StudyInstanceUID"] / f"CT_{s['SeriesInstanceUID']}"

    try:
        yield path
    finally:
        unmount(mnt)


@contextlib.contextmanager
def rclone_mount(state, endpoint, work: Path):
    mnt = work / "rclone"
    mnt.mkdir(exist_ok=True)
    conf = work / "rclone.conf"
    conf.write_text(f"[idc]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\nforce_path_style = true\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE" and not k.startswith("AWS_")}
    proc = subprocess.Popen(
        ["rclone", "mount", "idc:idc-open-data", str(mnt), "--config", str(conf), "--read-only",
         "--vfs-cache-mode", "off", "--dir-cache-time", "1h"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_mounted(mnt, proc)
    try:
        yield lambda uuid: mnt / uuid
    finally:
        unmount(mnt)
        proc.wait(10)


@contextlib.contextmanager
def s3fs_mount(state, endpoint, work: Path):
    mnt = work / "s3fs"
    mnt.mkdir(exist_ok=True)
    r = run(["s3fs", "idc-open-data", mnt, "-o", f"url={endpoint},use_path_request_style,public_bucket=1,ro"])
    if r.returncode:
        raise RuntimeError(r.stderr)
    wait_mounted(mnt)
    try:
        yield lambda uuid: mnt / uuid
    finally:
        unmount(mnt)


MOUNTS = {"local disk": local_disk, "idcfs": idcfs_mount, "rclone mount": rclone_mount, "s3fs-fuse": s3fs_mount}


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


def s5cmd_download(endpoint, state, uuids, dest: Path) -> int:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    cmds = dest.parent / "s5cmd.txt"
    cmds.write_text("".join(f"cp s3://idc-open-data/{u}/* {dest}/{u}/\n" for u in uuids))
    env = dict(os.environ, AWS_REGION="us-east-1")
    r = run(["s5cmd", "--no-sign-request", "--endpoint-url", endpoint, "run", cmds], env=env)
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


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16, help="CT series in the cohort (default 16, about 2 GB)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[20.0, 0.0])
    p.add_argument("--tools", nargs="+", default=["local disk", "s5cmd", "idcfs", "rclone mount", "s3fs-fuse"])
    p.add_argument("--workers", type=int, default=8, help="reader processes in the epochs (default 8)")
    p.add_argument("--json", type=Path, default=REPO / "bench" / "stream.json")
    args = p.parse_args(argv)

    import idc_index_data

    from idcfs.faultproxy import FaultProxy
    from idcfs.sandbox import Sandbox

    index = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
    cohort = bench_cohort(index, args.series)
    results: dict = {"series": len(cohort), "instances": sum(c[1] for c in cohort), "runs": {}}
    work = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
    with Sandbox(DATA / f"origin-{args.series}", cohort=cohort) as state:
        uuids = [s["crdc_series_uuid"] for s in state.series]
        size = sum(p.stat().st_size for p in (Path(state.data_dir) / "gcs").rglob("*.dcm"))
        results["bytes"] = size
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
                            got = s5cmd_download(proxy.url, state, uuids, work / "dest")
                            rates.append(got / (time.perf_counter() - t) / 1e6)
                            t = time.perf_counter()
                            s5cmd_download(proxy.url, state, uuids, Path("/dev/shm/idcfs-bench"))
                            runs.setdefault("origin ceiling (s5cmd to tmpfs)", []).append(
                                size / (time.perf_counter() - t) / 1e6
                            )
                            shutil.rmtree("/dev/shm/idcfs-bench", ignore_errors=True)
                            continue
                        with MOUNTS[tool](state, proxy.url, work) as src:
                            t = time.perf_counter()
                            got = series_in_order(src, uuids, work / "dest")
                            rates.append(got / (time.perf_counter() - t) / 1e6)
                            if got != size:
                                raise RuntimeError(f"{tool}: copied {got} bytes, expected {size}")
                        if tool in ("idcfs", "local disk"):
                            with MOUNTS[tool](state, proxy.url, work) as src:
                                paths = [str(f) for u in uuids for f in sorted(src(u).iterdir())]
                                drop_caches()
                                cold = epoch(paths, workers=args.workers)
                                drop_caches()  # the second epoch: idcfs serves from its block cache
                                warm = epoch(paths, workers=args.workers, seed=1)
                                epochs.append({"cold": cold, "warm": warm})
                    runs[tool] = {"series_MBps": _summary(rates), "epochs": epochs}
                    print(f"{latency:g} ms  {tool:<14} series in order: {statistics.median(rates):7.1f} MB/s "
                          f"(runs: {', '.join(f'{r:.1f}' for r in rates)})", flush=True)  # fmt: skip
                    for e in epochs:
                        print(f"{'':20} epoch cold {e['cold']['files_per_s']:.0f} files/s "
                              f"(first batch {e['cold']['first_batch_s']:.2f}s), "
                              f"warm {e['warm']['files_per_s']:.0f} files/s", flush=True)  # fmt: skip
                ceiling = runs.get("origin ceiling (s5cmd to tmpfs)")
                if isinstance(ceiling, list):
                    runs["origin ceiling (s5cmd to tmpfs)"] = {"series_MBps": _summary(ceiling)}
                    print(f"{latency:g} ms  origin ceiling: {statistics.median(ceiling):.1f} MB/s", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
