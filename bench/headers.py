"""Header scan: `pydicom.dcmread(stop_before_pixels=True)` over 2,000 CT instances, one process, in series order.

Against downloading the same files whole with s5cmd and then scanning the copies
(what a user of `idc download` does), the peers' mounts, and local disk. Bytes
are counted on the wire at the latency proxy. The origin's ceiling is one
ranged GET of idcfs's head size per file, 32 at a time, with no scanning.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from idcfs.readpolicy import HEAD

from .harness import MOUNTS, REPO, drop_caches, origin, origin_dir, s5cmd, series_of, summary


def scan(paths: list[Path]) -> int:
    import pydicom

    n = 0
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        n += "PixelData" not in ds
    return n


def ranged_gets(endpoint: str, keys: list[str], length: int, concurrency: int = 32) -> float:
    """The origin's own ceiling for a header scan: one ranged GET per object, `concurrency` at a time."""
    import asyncio

    import aiohttp

    async def go() -> None:
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession() as session:

            async def one(key: str) -> None:
                async with sem, session.get(f"{endpoint}/{key}", headers={"Range": f"bytes=0-{length - 1}"}) as r:
                    if len(await r.read()) != length:
                        raise RuntimeError(f"short body for {key}")

            await asyncio.gather(*(one(k) for k in keys))

    t = time.perf_counter()
    asyncio.run(go())
    return time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.headers", description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=16, help="CT series in the benchmark cohort (default 16)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--latency-ms", type=float, nargs="+", default=[20.0])
    p.add_argument("--tools", nargs="+",
                   default=["local disk", "origin ceiling", "s5cmd", "idcfs", "rclone mount", "s3fs-fuse"])  # fmt: skip
    p.add_argument("--json", type=Path, default=REPO / "bench" / "headers.json")
    args = p.parse_args(argv)

    from idcfs.testing.faultproxy import FaultProxy

    work = Path(tempfile.mkdtemp(prefix="idcfs-bench-"))
    results: dict = {"runs": {}}
    with origin(args.series) as state:
        names = [(u, f.name) for u in series_of(state, "CT") for f in sorted(origin_dir(state, u).iterdir())]
        names = names[: args.files]
        size = sum((origin_dir(state, u) / n).stat().st_size for u, n in names)
        results.update(files=len(names), bytes=size)
        print(f"header scan: {len(names)} CT instances, {size / 1e9:.2f} GB whole", flush=True)
        for latency in args.latency_ms:
            runs = results["runs"].setdefault(f"{latency:g} ms", {})
            with FaultProxy(state.s3_endpoint) as proxy:
                proxy.delay = latency / 1000
                for tool in args.tools:
                    if tool == "local disk" and latency != args.latency_ms[0]:
                        continue  # no network involved: once is enough
                    times, wire = [], []
                    for _ in range(args.repeat):
                        drop_caches()
                        proxy.reset_counters()
                        if tool == "origin ceiling":
                            keys = [f"idc-open-data/{u}/{n}" for u, n in names]
                            times.append(ranged_gets(proxy.url, keys, HEAD))
                        elif tool == "s5cmd":
                            dest = work / "dest"
                            shutil.rmtree(dest, ignore_errors=True)
                            t = time.perf_counter()
                            s5cmd(proxy.url, [f"cp s3://idc-open-data/{u}/{n} {dest}/{u}/{n}" for u, n in names])
                            scan([dest / u / n for u, n in names])
                            times.append(time.perf_counter() - t)
                        else:
                            with MOUNTS[tool](state, proxy.url, work) as src:
                                paths = [src(u) / n for u, n in names]
                                t = time.perf_counter()
                                scan(paths)
                                times.append(time.perf_counter() - t)
                        wire.append(proxy.counters.body_bytes)
                    runs[tool] = {"seconds": summary(times), "wire_bytes": statistics.median(wire)}
                    print(f"{latency:g} ms  {tool:<13} {statistics.median(times):7.2f} s "
                          f"(runs: {', '.join(f'{x:.2f}' for x in times)}), "
                          f"{statistics.median(wire) / 1e6:.0f} MB on the wire", flush=True)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
