"""WSI tiles: wsidicom opens the SM series and reads 20 random base-level tiles from a 1.1 GB instance.

Reported per tool: time to the first tile (from `WsiDicom.open`), time for all
tiles, and body bytes on the wire (counted at the latency proxy) as a share of
the instance. Against downloading the whole instance (s5cmd from S3; one plain
GET from GCS), and the peers' mounts.

The origins differ: moto copies the whole object for every ranged GET (about
0.7 s for 1 GiB), fake-gcs-server serves ranges from memory. So idcfs runs on
both, and each origin's own round trip, one tile-sized ranged GET through the
same proxy, is measured in the same run. Time to first tile is also given in
those round trips.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from .harness import MOUNTS, REPO, drop_caches, idcfs_mount, origin, origin_dir, s5cmd, series_of, summary

TILE = 256


def tiles(series_dir: Path, n: int, seed: int) -> tuple[float, float]:
    """(seconds to the first tile, seconds for all n) reading random base-level tiles."""
    from wsidicom import WsiDicom

    t0 = time.perf_counter()
    first = 0.0
    with WsiDicom.open(series_dir) as slide:
        cols, rows = -(-slide.size.width // TILE), -(-slide.size.height // TILE)
        rng = random.Random(seed)
        for k in range(n):
            tile = slide.read_tile(0, (rng.randrange(cols), rng.randrange(rows)))
            assert tile.size == (TILE, TILE)
            if k == 0:
                first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


def object_url(endpoint: str, provider: str, bucket: str, key: str) -> str:
    if provider == "s3":
        return f"{endpoint}/{bucket}/{key}"
    return f"{endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(key, safe='')}?alt=media"


def get(url: str, start: int | None = None, length: int | None = None, to: Path | None = None) -> int:
    req = urllib.request.Request(url)
    if start is not None:
        req.add_header("Range", f"bytes={start}-{start + length - 1}")
    n = 0
    with urllib.request.urlopen(req) as r, open(to or "/dev/null", "wb") as out:
        while chunk := r.read(1 << 20):
            n += len(chunk)
            out.write(chunk)
    return n


def round_trip(url: str, size: int, repeat: int = 5) -> float:
    """Median time of one ranged GET of a tile's bytes at a random offset."""
    rng = random.Random(1)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        get(url, rng.randrange(size - 3 * TILE * TILE), 3 * TILE * TILE)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wsi", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16, help="CT series in the benchmark cohort (default 16)")
    p.add_argument("--tiles", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--tools", nargs="+", default=["download", "idcfs", "rclone mount", "s3fs-fuse"])
    p.add_argument("--json", type=Path, default=REPO / "bench" / "wsi.json")
    args = p.parse_args(argv)

    from idcfs.store import GCS_MIRROR
    from idcfs.testing.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
    results: dict = {"latency_ms": args.latency_ms, "runs": {}}
    with origin(args.series) as state:
        (uuid,) = series_of(state, "SM")
        big = max(origin_dir(state, uuid).iterdir(), key=lambda f: f.stat().st_size)
        size = big.stat().st_size
        row = next(s for s in state.series if s["crdc_series_uuid"] == uuid)
        results.update(instance_bytes=size)
        print(f"WSI: {args.tiles} random tiles of a {size / 1e9:.2f} GB instance, {args.latency_ms:g} ms", flush=True)
        buckets = {"s3": row["aws_bucket"], "gcs": GCS_MIRROR[row["aws_bucket"]]}
        for provider, upstream in (("s3", state.s3_endpoint), ("gcs", state.gcs_endpoint)):
            with FaultProxy(upstream) as proxy:
                proxy.delay = args.latency_ms / 1000
                url = object_url(proxy.url, provider, buckets[provider], f"{uuid}/{big.name}")
                rtt = round_trip(url, size)
                results[f"{provider} round trip s"] = rtt
                print(f"{provider} origin: one tile-sized ranged GET {rtt * 1000:.0f} ms", flush=True)
                for tool in args.tools:
                    if provider == "gcs" and tool in ("rclone mount", "s3fs-fuse"):
                        continue  # they are pointed at the S3 origin only
                    firsts, totals, wire = [], [], []
                    for k in range(args.repeat):
                        drop_caches()
                        proxy.reset_counters()
                        if tool == "download":
                            dest = work / "whole.dcm"
                            t = time.perf_counter()
                            if provider == "s3":
                                s5cmd(proxy.url, [f"cp s3://{buckets['s3']}/{uuid}/{big.name} {dest}"])
                            else:
                                get(url, to=dest)
                            firsts.append(time.perf_counter() - t)
                            totals.append(firsts[-1])
                            dest.unlink()
                        else:
                            mount = idcfs_mount if tool == "idcfs" else MOUNTS[tool]
                            kw = {"source": "aws" if provider == "s3" else "gcs"} if tool == "idcfs" else {}
                            with mount(state, proxy.url, work, **kw) as src:
                                first, total = tiles(src(uuid), args.tiles, seed=k)
                            firsts.append(first)
                            totals.append(total)
                        wire.append(proxy.counters.body_bytes)
                    name = f"{tool} ({provider})"
                    results["runs"][name] = {
                        "first_tile_s": summary(firsts),
                        "all_tiles_s": summary(totals),
                        "wire_bytes": statistics.median(wire),
                    }
                    first = statistics.median(firsts)
                    print(f"{name:<22} first {first:6.2f} s ({first / rtt:4.1f} round trips), "
                          f"all {statistics.median(totals):6.2f} s, "
                          f"{statistics.median(wire) / 1e6:7.1f} MB on the wire "
                          f"({100 * statistics.median(wire) / size:.2f}% of the instance)", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
