"""Browsing the benchmark origin: `ls` of the root and of one series, and `find` of everything, per mount.

The peers show the bucket as `<uuid>/<uuid>.dcm`; idcfs shows
collection/patient/study/series from the index. Listings are timed cold (fresh
mount) and then again (warm), with the latency proxy in front of the origin.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .harness import MOUNTS, REPO, origin, series_of


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _find(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.browse", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--tools", nargs="+", default=["idcfs", "rclone mount", "s3fs-fuse"])
    p.add_argument("--json", type=Path, default=REPO / "bench" / "browse.json")
    args = p.parse_args(argv)

    from idcfs.testing.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
    results: dict = {"latency_ms": args.latency_ms, "runs": {}}
    with origin(args.series) as state, FaultProxy(state.s3_endpoint) as proxy:
        proxy.delay = args.latency_ms / 1000
        uuid = series_of(state, "CT")[0]
        for tool in args.tools:
            with MOUNTS[tool](state, proxy.url, work) as src:
                root = src(uuid).parent if tool != "idcfs" else src(uuid).parents[3]
                row = {}
                for when in ("cold", "warm"):
                    row[f"ls root {when} s"], names = _timed(lambda: os.listdir(root))  # noqa: B023
                    row[f"ls series {when} s"], files = _timed(lambda: os.listdir(src(uuid)))  # noqa: B023
                    row[f"find {when} s"], entries = _timed(lambda: _find(root))  # noqa: B023
                row.update(root_entries=len(names), series_files=len(files), find_entries=entries)
                results["runs"][tool] = row
                r = row
                print(f"{tool:<13} root: {len(names)} entries ({', '.join(names[:2])}, ...); "
                      f"ls root {r['ls root cold s']:.3f} s cold, {r['ls root warm s']:.3f} s warm; "
                      f"ls series ({len(files)} files) {r['ls series cold s']:.3f} / {r['ls series warm s']:.3f} s; "
                      f"find ({entries} entries) {r['find cold s']:.2f} / {r['find warm s']:.2f} s",
                      flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
