"""CPU per GET of each way a trio program can make ranged GETs, against the benchmark origin.

`python -m bench.getclient [--gets N] [--concurrency C] [--repeat R]`

Each client fetches the same CT instances (about 0.5 MB each) whole, C at a time, from a trio program, as
the read path does. Reported per client: process CPU time (user + system, all threads) per GET, and GETs/s.
The origin (moto) runs in another process, so its CPU is not counted.

- s3fs: fsspec's s3fs `cat_file` in trio worker threads (the GET path before issue 18);
- obstore-sync: obstore's blocking `get_range` in trio worker threads;
- obstore-loop: obstore's `get_range_async` on one asyncio loop in its own thread, each result handed
  back to trio through its token;
- trio-asyncio: obstore's `get_range_async` through trio-asyncio (`pip install trio-asyncio`);
- urllib3: urllib3's pooled blocking GETs in trio worker threads, read into a buffer of the listed size;
- aiohttp-loop: aiohttp on one asyncio loop thread, woken through trio's token, as obstore-loop;
- idcfs-md5: idcfs's own path (`ObjectStore.aread`: obstore-loop, retries and deadline), MD5 checked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import trio

from .harness import REPO, origin


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _obstore(endpoint: str, bucket: str):
    import obstore.store

    return obstore.store.S3Store(
        bucket, endpoint=endpoint, region="us-east-1", skip_signature=True, client_options={"allow_http": True}
    )


async def _drive(keys, concurrency: int, one) -> None:
    limiter = trio.CapacityLimiter(concurrency)

    async def get(k):
        async with limiter:
            await one(k)

    async with trio.open_nursery() as n:
        for k in keys:
            n.start_soon(get, k)


def run_s3fs(endpoint, bucket, keys, sizes, concurrency):
    import s3fs

    fs = s3fs.S3FileSystem(anon=True, client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
                           config_kwargs={"max_pool_connections": 64,
                                          "response_checksum_validation": "when_required"})  # fmt: skip
    lim = trio.CapacityLimiter(concurrency)

    async def one(k):
        data = await trio.to_thread.run_sync(lambda: fs.cat_file(f"{bucket}/{k}", start=0, end=sizes[k]), limiter=lim)
        assert len(data) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


def run_obstore_sync(endpoint, bucket, keys, sizes, concurrency):
    import obstore

    store = _obstore(endpoint, bucket)
    lim = trio.CapacityLimiter(concurrency)

    async def one(k):
        data = await trio.to_thread.run_sync(lambda: obstore.get_range(store, k, start=0, end=sizes[k]), limiter=lim)
        assert len(data) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


def run_obstore_loop(endpoint, bucket, keys, sizes, concurrency):
    import obstore

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    store = asyncio.run_coroutine_threadsafe(_make(endpoint, bucket), loop).result()

    async def one(k):
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box = {}

        def finished(fut):
            box["r"] = fut
            token.run_sync_soon(done.set)

        def start():
            try:
                t = asyncio.ensure_future(obstore.get_range_async(store, k, start=0, end=sizes[k]))
            except BaseException as e:
                t = loop.create_future()
                t.set_exception(e)
            t.add_done_callback(finished)

        loop.call_soon_threadsafe(start)
        await done.wait()
        assert len(box["r"].result()) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


async def _make(endpoint, bucket):
    return _obstore(endpoint, bucket)


def run_trio_asyncio(endpoint, bucket, keys, sizes, concurrency):
    import obstore
    import trio_asyncio

    async def main(ks):
        async with trio_asyncio.open_loop():
            store = await trio_asyncio.aio_as_trio(_make)(endpoint, bucket)

            async def one(k):
                data = await trio_asyncio.aio_as_trio(obstore.get_range_async)(store, k, start=0, end=sizes[k])
                assert len(data) == sizes[k]

            await _drive(ks, concurrency, one)

    return lambda ks: trio.run(main, ks)


def run_urllib3(endpoint, bucket, keys, sizes, concurrency):
    import urllib3

    pool = urllib3.PoolManager(maxsize=concurrency, retries=False)
    lim = trio.CapacityLimiter(concurrency)

    def get(k):  # into a buffer of the listed size, as a lean client would
        r = pool.request("GET", f"{endpoint}/{bucket}/{k}", headers={"Range": f"bytes=0-{sizes[k] - 1}"},
                         preload_content=False)  # fmt: skip
        buf = memoryview(bytearray(sizes[k]))
        n = 0
        while n < len(buf) and (got := r.readinto(buf[n:])):
            n += got
        r.release_conn()
        return n

    async def one(k):
        assert await trio.to_thread.run_sync(get, k, limiter=lim) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


def run_aiohttp_loop(endpoint, bucket, keys, sizes, concurrency):
    import aiohttp

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def make():
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

    session = asyncio.run_coroutine_threadsafe(make(), loop).result()

    async def get(k):
        async with session.get(f"{endpoint}/{bucket}/{k}", headers={"Range": f"bytes=0-{sizes[k] - 1}"}) as r:
            return await r.read()

    async def one(k):
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        fut = asyncio.run_coroutine_threadsafe(get(k), loop)
        fut.add_done_callback(lambda _: token.run_sync_soon(done.set))
        await done.wait()
        assert len(fut.result()) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


def run_idcfs(endpoint, bucket, keys, sizes, concurrency):
    """idcfs's own GET path (ObjectStore.aread: retries, deadline, failover bookkeeping), MD5 checked."""
    from idcfs.store import ObjectStore

    store = ObjectStore("aws", endpoint, "http://127.0.0.1:9", failover=False)
    md5s = {o.name: o.md5 for k in {k.split("/")[0] for k in keys} for o in store.list_series(bucket, k)}
    assert all(md5s.get(k.split("/")[1]) for k in keys)

    async def one(k):
        data = await store.aread(bucket, k, 0, sizes[k], sizes[k], md5s[k.split("/")[1]])
        assert len(data) == sizes[k]

    return lambda ks: trio.run(_drive, ks, concurrency, one)


CLIENTS = {
    "s3fs": run_s3fs,
    "obstore-sync": run_obstore_sync,
    "obstore-loop": run_obstore_loop,
    "trio-asyncio": run_trio_asyncio,
    "urllib3": run_urllib3,
    "aiohttp-loop": run_aiohttp_loop,
    "idcfs-md5": run_idcfs,
}


def _one_client(name, endpoint, bucket, keys, sizes, concurrency, repeat) -> dict:
    run = CLIENTS[name](endpoint, bucket, keys, sizes, concurrency)
    run(keys[: concurrency * 2])  # connections and imports
    cpu, rate = [], []
    for _ in range(repeat):
        c0, t0 = _cpu(), time.perf_counter()
        run(keys)
        c1, t1 = _cpu(), time.perf_counter()
        cpu.append((c1 - c0) / len(keys) * 1e3)
        rate.append(len(keys) / (t1 - t0))
    return {"cpu_ms_per_get": cpu, "gets_per_s": rate}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.getclient", description=__doc__.splitlines()[0])
    p.add_argument("--gets", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    args = p.parse_args(argv)
    with origin() as state:
        items = [k for k in state.objects if "00028ccd" not in k][: args.gets]
        bucket = items[0].split("/", 1)[0]
        keys = [k.split("/", 1)[1] for k in items]
        root = Path(state.data_dir) / "gcs"
        sizes = {}
        for k in items:
            b, rest = k.split("/", 1)
            sizes[rest] = next(root.glob(f"*/{rest}")).stat().st_size
        mb = statistics.mean(sizes.values()) / 1e6
        print(f"{len(keys)} GETs, {mb:.2f} MB each on average, {args.concurrency} at a time, {args.repeat} runs; "
              "each client in its own process", flush=True)  # fmt: skip
        out = {}
        for name in args.clients:
            # Its own process: one client's threads and loops must not bill the next.
            env = dict(os.environ, PYTHONPATH=str(REPO))
            code = "import json,sys; from bench.getclient import _one_client as f; print(json.dumps(f(**json.load(sys.stdin))))"  # noqa: E501
            job = dict(name=name, endpoint=state.s3_endpoint, bucket=bucket, keys=keys, sizes=sizes,
                       concurrency=args.concurrency, repeat=args.repeat)  # fmt: skip
            r = subprocess.run([sys.executable, "-c", code], env=env, input=json.dumps(job), capture_output=True,
                               text=True)  # fmt: skip
            if r.returncode:
                print(name, "failed:", r.stderr[-2000:])
                continue
            res = out[name] = json.loads(r.stdout.splitlines()[-1])
            c, g = res["cpu_ms_per_get"], res["gets_per_s"]
            print(f"{name:13s} CPU/GET {statistics.median(c):.3f} ms ({min(c):.3f}–{max(c):.3f})   "
                  f"{statistics.median(g):.0f} GETs/s ({min(g):.0f}–{max(g):.0f})", flush=True)  # fmt: skip
    (Path(__file__).parent / "getclient.json").write_text(json.dumps({"args": vars(args), "results": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
