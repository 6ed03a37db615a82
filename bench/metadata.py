"""Metadata workload over the full shipped index: mount time, ls, find, stat rate, daemon RSS.

Browsing needs no object store, so the endpoints point at a local server that answers 404 to everything
(bench.harness.empty_origin): any request the tree made to the bucket would fail and be counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import empty_origin


def _idcfs(*args):
    return subprocess.run([sys.executable, "-m", "idcfs", *map(str, args)], capture_output=True, text=True)


def _timed(fn, repeat=5):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times), out


def _rss_mb(mnt: Path) -> float:
    pids = subprocess.run(["pgrep", "-f", f"idcfs mount {mnt}"], capture_output=True, text=True).stdout.split()
    rss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = max(rss, int(line.split()[1]))
    return rss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--collection", default="nlst", help="collection walked by find")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, empty_origin() as (closed, hits):
        mnt, cache = Path(tmp) / "mnt", Path(tmp) / "cache"
        mnt.mkdir()
        mount_times = []
        for i in range(args.repeat):
            t = time.perf_counter()
            r = _idcfs("mount", mnt, "--cache-dir", cache, "--s3-endpoint", closed, "--gcs-endpoint", closed)
            mount_times.append(time.perf_counter() - t)
            assert r.returncode == 0, r.stderr
            if i < args.repeat - 1:
                _idcfs("unmount", mnt)
        rows.append(
            (
                "mount, full index (idcfs mount → ready)",
                statistics.median(mount_times),
                min(mount_times),
                max(mount_times),
                "goal ≤ 2 s",
            )
        )
        try:
            m, lo, hi, n = _timed(lambda: len(os.listdir(mnt)), args.repeat)
            rows.append((f"ls root ({n} collections)", m, lo, hi, "goal ≤ 0.3 s"))
            m, lo, hi, n = _timed(lambda: len(os.listdir(mnt / "nlst")), args.repeat)
            rows.append((f"ls nlst ({n} patients)", m, lo, hi, "goal ≤ 0.3 s"))
            patient = sorted(os.listdir(mnt / "nlst"))[100]
            study = sorted(os.listdir(mnt / "nlst" / patient))[0]
            m, lo, hi, n = _timed(lambda: len(os.listdir(mnt / "nlst" / patient / study)), args.repeat)
            rows.append((f"ls a study ({n} series)", m, lo, hi, ""))
            t = time.perf_counter()
            out = subprocess.run(["find", str(mnt / args.collection), "-maxdepth", "3"], capture_output=True)
            dt = time.perf_counter() - t
            entries = out.stdout.count(b"\n")
            rows.append(
                (
                    f"find {args.collection} to series level ({entries} entries)",
                    dt,
                    dt,
                    dt,
                    f"{entries / dt:,.0f} entries/s; goal ≥ 20,000",
                )
            )
            paths = out.stdout.split(b"\n")[:20000]
            t = time.perf_counter()
            for p in paths:
                if p:
                    os.stat(p)
            dt = time.perf_counter() - t
            rows.append((f"stat {len(paths)} paths (kernel-cached)", dt, dt, dt, f"{len(paths) / dt:,.0f} stat/s"))
            rss = _rss_mb(mnt)
            rows.append(("daemon RSS after the above (MB)", rss, rss, rss, "goal ≤ 500 MB"))
            probes = sum(1 for h in hits if h == "/")
            assert len(hits) == probes, f"the tree made requests to the origin: {hits[:5]}"
        finally:
            _idcfs("unmount", mnt)
    print("| workload | median s | min | max | note |")
    print("|---|---|---|---|---|")
    for name, m, lo, hi, note in rows:
        print(f"| {name} | {m:.3f} | {lo:.3f} | {hi:.3f} | {note} |")
    return 0
