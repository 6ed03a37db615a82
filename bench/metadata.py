"""Metadata workload over the full shipped index: mount time, ls, find, daemon RSS, each against its target.

Browsing needs no object store, so the endpoints point at a local server that answers 404 to everything
(bench.harness.empty_origin): any request the tree made to the bucket would fail and be counted.

`find` runs after `drop_caches 3`, so the kernel asks the daemon for every entry. Its limit is the same
`find` over a local directory tree of the same shape (the same names), also after `drop_caches 3`.
`--profile` adds where start-up time and the daemon's memory go, stage by stage, in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .harness import REPO, drop_caches, empty_origin

TARGETS = {  # figure -> (target, "<=" or ">=")
    "first mount, empty cache dir (s)": (3.0, "<="),
    "warm mount (s)": (1.0, "<="),
    "daemon RSS after mount and ls nlst (MB)": (400.0, "<="),
    "find nlst -maxdepth 2 (entries/s)": (30_000.0, ">="),
    "ls nlst (s)": (0.1, "<="),
}


def _idcfs(*args):
    return subprocess.run([sys.executable, "-m", "idcfs", *map(str, args)], capture_output=True, text=True)


def _mount(mnt: Path, cache: Path, origin: str) -> float:
    t = time.perf_counter()
    r = _idcfs("mount", mnt, "--cache-dir", cache, "--s3-endpoint", origin, "--gcs-endpoint", origin)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return dt


def _rss_mb(mnt: Path) -> float:
    pids = subprocess.run(["pgrep", "-f", f"idcfs mount {mnt}"], capture_output=True, text=True).stdout.split()
    rss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = max(rss, int(line.split()[1]))
    return rss / 1024


def _find(top: Path, depth: int) -> tuple[float, int]:
    drop_caches(3)
    t = time.perf_counter()
    out = subprocess.run(["find", str(top), "-maxdepth", str(depth)], capture_output=True, check=True).stdout
    return time.perf_counter() - t, out.count(b"\n")


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _copy_shape(src: Path, dest: Path, depth: int) -> None:
    """Directories with the names of src's, down to depth (empty leaves): what find walks."""
    for root, dirs, _ in os.walk(src):
        level = len(Path(root).relative_to(src).parts)
        if level >= depth - 1:
            dirs[:] = []
        for d in dirs:
            (dest / Path(root).relative_to(src) / d).mkdir(parents=True, exist_ok=True)


PROFILE = r"""
import os, sys, time, json, resource
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
rows, t0, last = [], time.perf_counter(), [time.perf_counter(), rss()]
def stage(name):
    now, r = time.perf_counter(), rss()
    rows.append((name, now - last[0], r - last[1], r))
    last[:] = [now, r]
stage("interpreter")
import idcfs.cli
stage("import idcfs.cli")
import trio, pyfuse3
stage("import trio, pyfuse3")
from idcfs.namespace import Namespace, DEFAULT_TEMPLATE
stage("import namespace (duckdb, pyarrow, numpy)")
from idcfs.store import ObjectStore
stage("import store")
index, cache = sys.argv[1], sys.argv[2]
from idcfs.namespace import Namespace
ns = Namespace.__new__(Namespace)
import duckdb
con = duckdb.connect(":memory:", config={"threads": 2})
con.execute(f"CREATE VIEW v AS SELECT * FROM read_parquet('{index}')")
con.execute("DESCRIBE v").fetchall()
stage("a duckdb connection over the index")
con.close()
ns = Namespace(index, DEFAULT_TEMPLATE, cache_dir=cache)
stage("Namespace (tree " + ("built" if sys.argv[3] == "first" else "mapped") + ")")
from idcfs.cache import CacheDir
from idcfs.engine import Engine
from idcfs.fs import IdcOperations
c = CacheDir(cache, None)
stage("import cache, engine, fs; open the cache dir")
store = ObjectStore("aws", "http://127.0.0.1:9", "http://127.0.0.1:9")
engine = Engine(ns, store, c)
stage("engine")
print(json.dumps(rows))
"""


def profile(index: str, cache: Path) -> dict:
    """Time and RSS by start-up stage, in fresh processes: a first mount (tree built) and a warm one."""
    out = {}
    for kind in ("first", "warm"):
        if kind == "first":
            shutil.rmtree(cache, ignore_errors=True)
        r = subprocess.run([sys.executable, "-c", PROFILE, index, str(cache), kind], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(r.stderr)
        out[kind] = json.loads(r.stdout.splitlines()[-1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.metadata", description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--collection", default="nlst", help="collection listed and walked (default nlst)")
    ap.add_argument("--deep", action="store_true", help="also find to series level (maxdepth 3, ~50 s on nlst)")
    ap.add_argument("--profile", action="store_true", help="also start-up time and RSS by stage")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "metadata.json")
    args = ap.parse_args(argv)
    import idc_index_data

    index = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    figures: dict[str, dict] = {}
    extra: dict[str, dict] = {}
    coll = args.collection
    with tempfile.TemporaryDirectory() as tmp, empty_origin() as (origin, hits):
        tmp = Path(tmp)
        mnt, cache = tmp / "mnt", tmp / "cache"
        mnt.mkdir()
        first, first_rss = [], []
        for _ in range(args.repeat):
            shutil.rmtree(cache, ignore_errors=True)
            first.append(_mount(mnt, cache, origin))
            first_rss.append(_rss_mb(mnt))
            _idcfs("unmount", mnt)
        warm = []
        for i in range(args.repeat):
            warm.append(_mount(mnt, cache, origin))
            if i < args.repeat - 1:
                _idcfs("unmount", mnt)
        figures["first mount, empty cache dir (s)"] = _spread(first)
        figures["warm mount (s)"] = _spread(warm)
        extra["daemon RSS after a first mount (MB)"] = _spread(first_rss)
        try:
            ls = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                n = len(os.listdir(mnt / coll))
                ls.append(time.perf_counter() - t)
            figures["daemon RSS after mount and ls nlst (MB)"] = _spread([_rss_mb(mnt)])
            figures["ls nlst (s)"] = _spread(ls)
            extra["ls nlst entries"] = {"median": n}
            rates, entries = [], 0
            for _ in range(args.repeat):
                dt, entries = _find(mnt / coll, 2)
                rates.append(entries / dt)
            figures["find nlst -maxdepth 2 (entries/s)"] = _spread(rates)
            extra["find nlst -maxdepth 2 entries"] = {"median": entries}
            shape = tmp / "shape"
            _copy_shape(mnt / coll, shape / coll, 2)
            local = []
            for _ in range(args.repeat):
                dt, n_local = _find(shape / coll, 2)
                local.append(n_local / dt)
            extra["find nlst -maxdepth 2 on local disk, same shape (entries/s)"] = _spread(local)
            if args.deep:
                dt, n = _find(mnt / coll, 3)
                extra[f"find nlst -maxdepth 3, {n} entries (entries/s)"] = _spread([n / dt])
            extra["daemon RSS at the end (MB)"] = _spread([_rss_mb(mnt)])
            probes = sum(1 for h in hits if h == "/")
            assert len(hits) == probes, f"the tree made requests to the origin: {hits[:5]}"
        finally:
            _idcfs("unmount", mnt)
        prof = profile(index, cache) if args.profile else None

    print(f"| figure ({args.repeat} runs) | median | min–max | target | |")
    print("|---|---|---|---|---|")
    for name, s in figures.items():
        target, sense = TARGETS[name]
        met = s["median"] <= target if sense == "<=" else s["median"] >= target
        print(f"| {name} | {s['median']:,.3f} | {s['min']:,.3f}–{s['max']:,.3f} | {sense} {target:,g} "
              f"| {'met' if met else 'MISSED'} |")  # fmt: skip
    for name, s in extra.items():
        spread = f"{s['min']:,.3f}–{s['max']:,.3f}" if "min" in s else ""
        print(f"| {name} | {s['median']:,.3f} | {spread} | | |")
    if prof:
        for kind, rows in prof.items():
            print(f"\nstart-up by stage, {kind} mount: | stage | s | RSS +MB | RSS MB |")
            for name, dt, drss, r in rows:
                print(f"| {name} | {dt:.3f} | {drss:+.0f} | {r:.0f} |")
    args.json.write_text(json.dumps({"figures": figures, "extra": extra, "profile": prof}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
