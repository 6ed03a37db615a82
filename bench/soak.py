"""Soak: 32 reader processes against one mount for a bounded time, with faults, while `ls -R` and `find` run.

Every read is checked: whole CT instances against the origin's sha256, random ranges of the 1.1 GB slide
against the origin's bytes. The daemon's RSS, open file descriptors and threads are sampled throughout;
a leak shows as counts that keep growing after the first minutes. The block cache is capped below the
cohort's size, so eviction runs the whole time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from idcfs.testing.sandbox import read_uncached

from .harness import REPO, SM_SERIES, origin, origin_dir, unmount, wait_mounted


def _daemon_sample(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines())
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def _reader(seed: int, files: list[tuple[str, str]], slide: tuple[str, str] | None, until: float, out) -> None:
    """Whole files (or, with a slide, random ranges of it) until `until`; counts outcomes."""
    rng = random.Random(seed)
    counts = {"ok": 0, "eio": 0, "wrong": 0, "other": 0, "bytes": 0}
    while time.time() < until:
        try:
            if slide:
                mounted, local = slide
                size = os.path.getsize(local)
                off, n = rng.randrange(size), rng.choice((4096, 65536, 262144, 1 << 20))
                with open(mounted, "rb", buffering=0) as f, open(local, "rb") as g:
                    f.seek(off)
                    g.seek(off)
                    got, want = f.read(n), g.read(n)
                good = got == want
            else:
                path, digest = rng.choice(files)
                got = read_uncached(path)
                good = hashlib.sha256(got).hexdigest() == digest
            counts["ok" if good else "wrong"] += 1
            counts["bytes"] += len(got)
        except OSError as e:
            counts["eio" if e.errno == 5 else "other"] += 1
    out.put(counts)


def _browse(mnt: Path, until: float, runs: list) -> None:
    while time.time() < until:
        for cmd in (["ls", "-R", str(mnt)], ["find", str(mnt)]):
            t = time.monotonic()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append((cmd[0], r.returncode, time.monotonic() - t))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--readers", type=int, default=32)
    p.add_argument("--fault-rate", type=float, default=0.1, help="share of requests to each origin that fail")
    p.add_argument("--cache-size", default="1G")
    p.add_argument("--memory", default="256M", help="the mount's --memory (default 256M)")
    p.add_argument("--rss-bound-mb", type=float, default=None,
                   help="default: RSS at rest + --memory + the prefetch budget + the cache write backlog")  # fmt: skip
    p.add_argument("--json", type=Path, default=REPO / "bench" / "soak.json")
    args = p.parse_args(argv)

    from idcfs.testing.faultproxy import FAULTS, FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-soak-"))
    mnt, cache = work / "mnt", work / "cache"
    mnt.mkdir()
    with origin(16) as state, FaultProxy(state.s3_endpoint, 1) as s3, FaultProxy(state.gcs_endpoint, 2) as gcs:
        cmd = [sys.executable, "-m", "idcfs", "mount", str(mnt), "--foreground", "--manifest", state.manifest,
               "--cache-dir", str(cache), "--cache-size", args.cache_size, "--memory", args.memory, "--timeout", "10",
               "--s3-endpoint", s3.url, "--gcs-endpoint", gcs.url]  # fmt: skip
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_mounted(mnt, daemon, timeout=60)
            t = time.monotonic()
            paths = [p for p in mnt.rglob("*.dcm")]  # lists every series, before the faults start
            print(f"listed {len(paths)} files in {time.monotonic() - t:.1f} s", flush=True)
            digests = {k.split("/", 1)[1]: v for k, v in state.objects.items()}
            files = [
                (str(p), digests[f"{os.getxattr(p, 'user.idc.crdc_series_uuid').decode()}/{p.name}"])
                for p in paths
                if p.stat().st_size <= 8 << 20
            ]
            big = max((p for p in paths if SM_SERIES in os.getxattr(p, "user.idc.crdc_series_uuid").decode()),
                      key=lambda p: p.stat().st_size)  # fmt: skip
            slide = (str(big), str(origin_dir(state, SM_SERIES) / big.name))
            for proxy in (s3, gcs):
                proxy.fault_rate, proxy.faults, proxy.stall_seconds = args.fault_rate, FAULTS, 30.0
            samples = [_daemon_sample(daemon.pid)]
            until = time.time() + args.minutes * 60
            out = mp.Queue()
            readers = [
                mp.Process(target=_reader, args=(i, files, slide if i == 0 else None, until, out))
                for i in range(args.readers)
            ]
            for r in readers:
                r.start()
            browse_runs: list = []
            browser = threading.Thread(target=_browse, args=(mnt, until, browse_runs))
            browser.start()
            while time.time() < until:
                time.sleep(5)
                samples.append(_daemon_sample(daemon.pid))
                s = samples[-1]
                print(f"{(time.time() - until) / 60 + args.minutes:5.1f} min  RSS {s['rss_mb']:.0f} MB  "
                      f"threads {s['threads']}  fds {s['fds']}", flush=True)  # fmt: skip
            counts = [out.get(timeout=120) for _ in readers]
            for r in readers:
                r.join(30)
            browser.join(120)
            time.sleep(15)  # idle worker threads expire after 10 s
            after = _daemon_sample(daemon.pid)
            alive = daemon.poll() is None
            faults = s3.counters.faults + gcs.counters.faults
            requests = s3.counters.requests + gcs.counters.requests
        finally:
            unmount(mnt)
            daemon.wait(30)
    shutil.rmtree(work, ignore_errors=True)

    from idcfs.cache import parse_size
    from idcfs.readpath import STORE_BACKLOG
    from idcfs.readpolicy import PREFETCH_BUDGET

    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    if args.rss_bound_mb is None:  # the daemon at rest plus what its read path may hold by design
        args.rss_bound_mb = samples[0]["rss_mb"] + (parse_size(args.memory) + PREFETCH_BUDGET + STORE_BACKLOG) / 2**20
    third = max(1, len(samples) // 3)
    early, late = samples[:third], samples[-third:]
    result = {
        "minutes": args.minutes,
        "readers": args.readers,
        "fault_rate": args.fault_rate,
        "requests": requests,
        "faults_injected": faults,
        "reads": total,
        "browse_runs": len(browse_runs),
        "browse_failures": sum(1 for _, rc, _ in browse_runs if rc),
        "browse_max_s": max((s for *_, s in browse_runs), default=None),
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_bound_mb": args.rss_bound_mb,
        "threads_early_max": max(s["threads"] for s in early),
        "threads_late_max": max(s["threads"] for s in late),
        "fds_early_max": max(s["fds"] for s in early),
        "fds_late_max": max(s["fds"] for s in late),
        "idle_after": after,
        "daemon_alive": alive,
        "samples": samples,
    }
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    problems = []
    if total["wrong"] or total["other"]:
        problems.append(f"{total['wrong']} wrong and {total['other']} non-EIO failed reads")
    if not alive:
        problems.append("the daemon died")
    if result["rss_max_mb"] > args.rss_bound_mb:
        problems.append(f"RSS {result['rss_max_mb']:.0f} MB over the bound of {args.rss_bound_mb:.0f} MB")
    # Pooled keep-alive connections are fds too: a leak is growth after the pools have filled.
    if result["fds_late_max"] > result["fds_early_max"] + 16 or after["fds"] > result["fds_early_max"]:
        problems.append("file descriptors grow")
    if result["threads_late_max"] > result["threads_early_max"] + 8 or after["threads"] > samples[0]["threads"] + 4:
        problems.append("threads grow")
    if result["browse_failures"]:
        problems.append(f"{result['browse_failures']} ls -R/find runs failed")
    print("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
