"""A counting, fault-injecting HTTP proxy for the sandbox origins (aiohttp).

Put it between idcfs and moto or fake-gcs-server to count what really goes
over the wire (requests, body bytes, Authorization headers) and to make the
origin misbehave on purpose. It runs its own event loop in a thread, so a test
can start it, read its counters and change its faults while idcfs runs.

Faults are drawn per request with probability `fault_rate` from `faults`:
- "500", "503": that status, with an S3-style error body;
- "429": SlowDown;
- "reset": send half the body, then drop the connection;
- "truncate": send the full Content-Length header but only half the body;
- "stall": send nothing for `stall_seconds`;
- "wrong_size": a body one byte longer than the real one, with a matching header;
- "flip": one byte of an object's body inverted, length and headers unchanged (not in FAULTS: only a
  checksum can tell, and ranged reads of large files have none to check against).
`only`, when set, limits faults to requests whose path contains it (one series, say).
`down = True` refuses service outright (every connection is closed at once).
`delay` adds that many seconds before each request is forwarded: a stand-in for
network round-trip time where the kernel has no netem.
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

FAULTS = ("500", "503", "429", "reset", "truncate", "stall", "wrong_size")
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class Counters:
    requests: int = 0
    gets: int = 0
    body_bytes: int = 0
    authorized: int = 0  # requests that carried an Authorization header
    faults: int = 0
    paths: list[str] = field(default_factory=list)


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self.counters = Counters()
        self.fault_rate = 0.0
        self.faults: tuple[str, ...] = FAULTS
        self.stall_seconds = 120.0
        self.down = False
        self.delay = 0.0
        self.only: str | None = None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset_counters(self) -> None:
        with self._lock:
            self.counters = Counters()

    # -- lifecycle

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await self._session.close()

    # -- requests

    def _draw(self, path: str) -> str | None:
        if self.only is not None and self.only not in path:
            return None
        with self._lock:
            if self.fault_rate and self._rng.random() < self.fault_rate:
                self.counters.faults += 1
                return self._rng.choice(self.faults)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            c = self.counters
            c.requests += 1
            c.gets += request.method == "GET"
            c.authorized += "Authorization" in request.headers
            c.paths.append(request.path_qs)
        if self.down:
            request.transport.close()
            raise ConnectionResetError
        if self.delay:
            await asyncio.sleep(self.delay)
        fault = self._draw(request.path_qs)
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
        if fault in ("500", "503", "429"):
            code = {"500": "InternalError", "503": "ServiceUnavailable", "429": "SlowDown"}[fault]
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
            return web.Response(status=int(fault), text=body, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        data = await request.read()
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=data or None
        ) as up:
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":  # no body, but the object's real length
                resp = web.StreamResponse(status=up.status, headers=out_headers)
                if "Content-Length" in up.headers:
                    resp.headers["Content-Length"] = up.headers["Content-Length"]
                await resp.prepare(request)
                await resp.write_eof()
                return resp
            if fault is None and up.content_length is not None:
                return await self._stream(request, up, out_headers)
            body = await up.read()
        if fault == "wrong_size":
            body += b"\0"
        if fault == "flip" and body and request.path.endswith(".dcm"):  # an object, not a listing
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1 :]
        resp = web.StreamResponse(status=up.status, headers=out_headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        if fault in ("reset", "truncate"):
            await resp.write(body[: len(body) // 2])
            self._count(len(body) // 2)
            request.transport.close()
            return resp
        await resp.write(body)
        await resp.write_eof()
        self._count(len(body))
        return resp

    async def _stream(self, request: web.Request, up: aiohttp.ClientResponse, headers) -> web.StreamResponse:
        """Pass the body on as it arrives, as a network would; a client may hang up part way."""
        resp = web.StreamResponse(status=up.status, headers=headers)
        resp.content_length = up.content_length
        await resp.prepare(request)
        try:
            async for chunk in up.content.iter_chunked(1 << 20):
                await resp.write(chunk)
                self._count(len(chunk))
            await resp.write_eof()
        except (ConnectionError, aiohttp.ClientError):
            if request.transport is not None:
                request.transport.close()
        return resp

    def _count(self, n: int) -> None:
        with self._lock:
            self.counters.body_bytes += n
