"""Object store: unsigned LIST and ranged GET against IDC's S3 buckets or their GCS mirrors.

GETs go through obstore (Rust's object_store) on one asyncio loop in a thread of its own; trio code
awaits them with `aread`, threads block on `read`. LISTs go through s3fs or gcsfs, blocking, from worker
threads. It knows nothing of FUSE or of the directory tree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from .errors import StoreError

# AWS bucket (as named in the index) -> its GCS mirror.
GCS_MIRROR = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-two": "idc-open-idc1",
    "idc-open-data-cr": "idc-open-cr",
}

log = logging.getLogger(__name__)

DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com"

# Environment that could make a client sign requests with the user's identity, or send them elsewhere.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
    "GOOGLE_BASE_URL",
    "CLOUDSDK_CONFIG",
    "GCSFS_DEFAULT_PROJECT",
)


def drop_credentials() -> None:
    """Make sure no cloud identity can be picked up by this process.

    Requests are unsigned anyway (anon clients); this also stops botocore from
    reading profiles or asking the instance metadata service.
    """
    for name in CREDENTIAL_ENV:
        os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["NO_GCE_CHECK"] = "true"
    # gcsfs's default class probes buckets over gRPC, which hangs against emulators.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<name>[^\[\]:]*))(?::(?P<port>.*))?", re.DOTALL)
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def endpoint_problem(url: str) -> str | None:
    """Why `url` cannot be an origin endpoint, or None: http(s)://HOST[:PORT][/PATH], nothing else.

    Checked before anything starts, so that no value reaches a client that would fail on it later.
    """
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        return "it is empty or holds spaces or control characters"
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "give an http:// or https:// URL"
    netloc, _, tail = rest.partition("/")
    if "?" in netloc or "#" in netloc or "?" in tail or "#" in tail:
        return "it holds a query or fragment"
    if "@" in netloc:
        return "it holds a user or password, and idcfs sends only unsigned requests"
    m = _HOST_PORT.fullmatch(netloc)
    if m is None:
        return "its host has a stray [ or ]: write an IPv6 address as [::1]"
    if m["port"] is not None and not (m["port"].isascii() and m["port"].isdigit() and 0 < int(m["port"]) < 65536):
        return f"port {m['port']!r} is not a number from 1 to 65535"
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            return f"[{m['v6']}] is not an IPv6 address"
        return None
    host = m["name"]
    if not host:
        return "it names no host"
    labels = host.removesuffix(".").split(".")
    if all(x.isascii() and x.isdigit() for x in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host} is not an IPv4 address"
        return None
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        return f"{host!r} is not a host name (letters, digits and hyphens; IDNA names as xn--…)"
    return None


def unanswered(endpoint: str, timeout: float = 3.0) -> str | None:
    """None if anything answers HTTP at endpoint (any status), else the reason; one unsigned HEAD."""
    import urllib.error
    import urllib.request

    class _Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):  # a redirect is an answer; do not follow it
            return None

    try:
        with urllib.request.build_opener(_Stay).open(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as e:
        return str(getattr(e.reason, "strerror", None) or e.reason)
    except (OSError, ValueError) as e:
        return str(e) or type(e).__name__
    return None


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # file name inside the series prefix
    size: int
    etag: str
    mtime_ns: int
    md5: str = ""  # hex MD5 of the content, where the origin publishes it (S3 single-part ETag, GCS md5Hash)

    def entry(self) -> tuple:
        """As kept in the listing cache; ObjectInfo(*entry) gives it back (older 4-field entries too)."""
        return (self.name, self.size, self.etag, self.mtime_ns, self.md5)


DEFAULT_TIMEOUT = 30.0
MAX_GET = 8 << 20  # the largest ranged GET: readahead windows and `idcfs prefetch` downloads are cut in these
ATTEMPTS = 3  # per provider, within its deadline: a body that is short, long or differs from its MD5 is fetched again


class _Loop:
    """One asyncio event loop in a daemon thread, where every GET runs (obstore's async API needs asyncio).

    Measured against obstore's blocking API in worker threads and against trio-asyncio, one loop thread
    cost the least CPU per GET (bench/getclient.py), and asyncio.wait_for gives each provider a hard deadline.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._tokio_pid = 0  # the process whose GETs started obstore's tokio runtime
        self._threads: ThreadPoolExecutor | None = None
        self._threads_pid = 0

    # tokio does not survive fork: a child of a process that made an obstore request hangs in its
    # first one (even with a new client). Such a child (a fork-started DataLoader worker, say) GETs
    # through s3fs/gcsfs instead.
    def note_tokio(self) -> None:
        if not self._tokio_pid:
            self._tokio_pid = os.getpid()

    def tokio_inherited(self) -> bool:
        return self._tokio_pid not in (0, os.getpid())

    async def in_thread(self, fn, *args):
        with self._lock:
            if self._threads is None or self._threads_pid != os.getpid():
                self._threads, self._threads_pid = ThreadPoolExecutor(64, thread_name_prefix="idcfs-get"), os.getpid()
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # a forked child has the loop but not its thread
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                threading.Thread(target=self._loop.run_forever, name="idcfs-get", daemon=True).start()
            return self._loop

    def run(self, coro):
        """Block the calling thread (never the loop's own) until coro, run in the loop, is done."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def trio(self, coro):
        """Await coro, run in the loop, from trio: no worker thread, one wake-up through trio's token.
        Cancelled from trio, the coroutine is cancelled too."""
        import trio

        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_):
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        fut.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            fut.cancel()
            raise
        return fut.result()


_LOOP = _Loop()


class _Provider:
    """One bucket provider (AWS S3 or the GCS mirror): GETs through obstore, LISTs through fsspec.

    Every GET, retries included, is cut off after `deadline` seconds; one socket read may take a third
    of it, so a stalled connection leaves time to retry on a fresh one. LIST goes through s3fs or gcsfs
    (imported on the first LIST), which get the same deadline.
    """

    def __init__(self, name: str, endpoint: str, deadline: float = DEFAULT_TIMEOUT):
        self.name = name
        self.endpoint = endpoint
        self.deadline = deadline
        self._fs = None
        self._stores: dict[str, object] = {}
        self._lock = threading.Lock()
        self.failures = 0  # consecutive
        self.down_until = 0.0
        self.corrupt_bodies = 0  # whole-object bodies that did not match the listed MD5

    @property
    def fs(self):
        """The fsspec client, for LIST."""
        with self._lock:
            if self._fs is None:
                self._fs = self._list_client()
        return self._fs

    def _list_client(self):
        drop_credentials()
        attempt = self.deadline / 3
        connect = min(5.0, attempt)
        if self.name == "aws":
            import s3fs

            fs = s3fs.S3FileSystem(
                anon=True,
                use_listings_cache=False,
                skip_instance_cache=True,
                client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                config_kwargs={
                    "max_pool_connections": 64,
                    "connect_timeout": connect,
                    "read_timeout": attempt,
                    "retries": {"max_attempts": 3, "mode": "standard"},
                    # A CRC over every body costs a fifth of the GET path's CPU; lengths and MD5s are checked here.
                    "response_checksum_validation": "when_required",
                    "request_checksum_calculation": "when_required",
                },
            )
            fs.retries = 3  # s3fs's own loop around botocore's: keep the worst case bounded
            return fs
        import aiohttp
        import gcsfs.core

        return gcsfs.core.GCSFileSystem(
            token="anon",
            endpoint_url=self.endpoint,
            use_listings_cache=False,
            skip_instance_cache=True,
            requests_timeout=aiohttp.ClientTimeout(sock_connect=connect, sock_read=attempt),
        )

    def store(self, bucket: str):
        """The obstore client of one bucket, built on first use; unsigned, whatever the environment holds."""
        with self._lock:
            got = self._stores.get(bucket)
            if got is None:
                got = self._stores[bucket] = self._get_client(bucket)
            return got

    def _get_client(self, bucket: str):
        import obstore.store

        drop_credentials()
        attempt = self.deadline / 3
        options = {
            "allow_http": self.endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=min(5.0, attempt)),
            "read_timeout": timedelta(seconds=attempt),  # per socket read: a slow but flowing body goes on
            "timeout": timedelta(seconds=self.deadline),  # per request (its default, 30 s, would cut a long body)
            "pool_idle_timeout": timedelta(seconds=60),
        }
        # obstore retries 5xx, resets and timeouts itself; what it does not (429, wrong lengths) is retried here.
        retry = {
            "max_retries": 3,
            "retry_timeout": timedelta(seconds=self.deadline),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
        }
        if self.name == "aws":
            # Every setting given, so that no AWS_* variable left in the environment changes them.
            return obstore.store.S3Store(
                bucket,
                endpoint=self.endpoint,
                region="us-east-1",
                skip_signature=True,
                virtual_hosted_style_request=False,
                client_options=options,
                retry_config=retry,
            )
        return obstore.store.GCSStore(
            bucket, base_url=self.endpoint, skip_signature=True, client_options=options, retry_config=retry
        )

    def bucket(self, aws_bucket: str) -> str:
        return aws_bucket if self.name == "aws" else GCS_MIRROR.get(aws_bucket, aws_bucket)

    def list_series(self, aws_bucket: str, crdc_series_uuid: str) -> list[ObjectInfo]:
        prefix = f"{self.bucket(aws_bucket)}/{crdc_series_uuid}"
        try:
            entries = self.fs.ls(prefix, detail=True, timeout=self.deadline)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            if e.get("type") != "file":
                continue
            name = e["name"].rsplit("/", 1)[-1]
            out.append(ObjectInfo(name, int(e["size"]), _etag(e), _mtime_ns(e), _md5(e)))
        out.sort(key=lambda o: o.name)
        return out

    async def read(self, aws_bucket: str, key: str, start: int, end: int, at_eof: bool, md5: str = "") -> bytes:
        """Bytes [start, end) exactly, within the deadline; run in the GET loop."""
        if _LOOP.tokio_inherited():
            return await _LOOP.in_thread(self._read_fsspec, aws_bucket, key, start, end, at_eof, md5)
        _LOOP.note_tokio()
        try:
            return await asyncio.wait_for(self._attempts(aws_bucket, key, start, end, at_eof, md5), self.deadline)
        except asyncio.TimeoutError:
            raise StoreError(f"no answer within {self.deadline:g} s") from None

    def _check(self, key: str, data, start: int, end: int, md5: str, attempt: int) -> str:
        """What is wrong with a body for [start, end) (md5: of the whole object, or ""), or ""."""
        if len(data) != end - start:
            return f"{len(data)} bytes instead of {end - start}"
        if md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() != md5:
            with self._lock:
                self.corrupt_bodies += 1
            log.warning("%s: the body of %s differs from its MD5 %s (attempt %d)", self.name, key, md5, attempt + 1)
            return f"the body differs from the origin's MD5 {md5}"
        return ""

    def _read_fsspec(self, aws_bucket: str, key: str, start: int, end: int, at_eof: bool, md5: str) -> bytes:
        """read() through s3fs/gcsfs, blocking: for a process forked after obstore was used (see _Loop)."""
        path = f"{self.bucket(aws_bucket)}/{key}"
        md5 = md5 if start == 0 and at_eof else ""
        t0, problem = time.monotonic(), f"no answer within {self.deadline:g} s"
        for attempt in range(ATTEMPTS):
            left = self.deadline - (time.monotonic() - t0)
            if left <= 0:
                break
            data = self.fs.cat_file(path, start=start, end=end + at_eof, timeout=left)
            if not (problem := self._check(key, data, start, end, md5, attempt)):
                return data
        raise StoreError(problem)

    async def _attempts(self, aws_bucket: str, key: str, start: int, end: int, at_eof: bool, md5: str) -> bytes:
        import obstore
        from obstore.exceptions import BaseError

        store = self.store(self.bucket(aws_bucket))
        md5 = md5 if start == 0 and at_eof else ""  # the MD5 is of the whole object
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.1 * 2**attempt)
            try:
                # Asking one byte past the listed end exposes an object longer than listed.
                data = await obstore.get_range_async(store, key, start=start, end=end + at_eof)
            except FileNotFoundError:
                raise
            except BaseError as e:  # 429 and what obstore's own retries gave up on
                problem = str(e).splitlines()[0] if str(e) else type(e).__name__
                continue
            if not (problem := self._check(key, data, start, end, md5, attempt)):
                return data.to_bytes()
        raise StoreError(problem)


class ObjectStore:
    """Reads IDC objects addressed by (aws_bucket, key), from the preferred provider or the other one.

    GETs are retried with backoff on throttling, 5xx, resets and timeouts. What still fails is
    tried once more at the other provider. After FAIL_THRESHOLD failures in a row a provider is
    skipped for DOWN_SECONDS, so a dead origin costs a few slow requests, not one per read.
    """

    FAIL_THRESHOLD = 3
    DOWN_SECONDS = 30.0

    def __init__(
        self,
        source: str = "aws",
        s3_endpoint: str | None = None,
        gcs_endpoint: str | None = None,
        failover: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if source not in ("aws", "gcs"):
            raise ValueError(f"unknown source {source!r}")
        self.source = source
        self.s3_endpoint = s3_endpoint or DEFAULT_S3_ENDPOINT
        self.gcs_endpoint = gcs_endpoint or DEFAULT_GCS_ENDPOINT
        aws = _Provider("aws", self.s3_endpoint, timeout)
        gcs = _Provider("gcs", self.gcs_endpoint, timeout)
        preferred = [aws, gcs] if source == "aws" else [gcs, aws]
        self.providers = preferred if failover else preferred[:1]
        self.failovers = 0  # requests answered by the other provider
        self.errors = 0  # requests that failed everywhere
        self._lock = threading.Lock()

    def bucket(self, aws_bucket: str) -> str:
        return self.providers[0].bucket(aws_bucket)

    def warm(self) -> None:
        """Start the GET loop and build the preferred provider's GET clients ahead of the first read (no
        request is made). The LIST client is built on the first LIST: most mounts read cached listings."""
        try:
            _LOOP.loop  # noqa: B018
            p = self.providers[0]
            for aws_bucket in GCS_MIRROR:
                p.store(p.bucket(aws_bucket))
        except Exception as e:  # the first real request will report it
            log.debug("building the %s client: %s", self.providers[0].name, e)

    def warm_lists(self) -> None:
        """Build the preferred provider's LIST client now (importing s3fs or gcsfs takes about a second of
        CPU and 70 MB), so that the first listing of a series does not wait for it."""
        try:
            self.providers[0].fs  # noqa: B018
        except Exception as e:  # the first LIST will report it
            log.debug("building the %s LIST client: %s", self.providers[0].name, e)

    def url(self, aws_bucket: str, key: str) -> str:
        scheme = "s3" if self.source == "aws" else "gs"
        return f"{scheme}://{self.bucket(aws_bucket)}/{key}"

    def _order(self) -> list[_Provider]:
        now = time.monotonic()
        up = [p for p in self.providers if p.down_until <= now]
        return up + [p for p in self.providers if p.down_until > now]  # a down one is still a last resort

    def _failed(self, p: _Provider, e: BaseException, errors: list[str]) -> None:
        with self._lock:
            p.failures += not isinstance(e, FileNotFoundError)  # a missing object says nothing of health
            if p.failures >= self.FAIL_THRESHOLD and p.down_until <= time.monotonic():
                p.down_until = time.monotonic() + self.DOWN_SECONDS
                log.warning("%s keeps failing (%s); using the other provider for %ds", p.name, e, self.DOWN_SECONDS)
        errors.append(f"{p.name}: {str(e) or type(e).__name__}")

    def _answered(self, p: _Provider) -> None:
        with self._lock:
            p.failures = 0
            p.down_until = 0.0
            if p is not self.providers[0]:
                self.failovers += 1

    def _gave_up(self, what: str, errors: list[str]) -> StoreError:
        with self._lock:
            self.errors += 1
        return StoreError(f"{what}: " + "; ".join(errors))

    def _call(self, what: str, fn):
        errors: list[str] = []
        for p in self._order():
            try:
                result = fn(p)
            except Exception as e:
                self._failed(p, e, errors)
                continue
            self._answered(p)
            return result
        raise self._gave_up(what, errors)

    def list_series(self, aws_bucket: str, crdc_series_uuid: str) -> list[ObjectInfo]:
        """One LIST of `<bucket>/<uuid>/`: the objects directly under it."""
        return self._call(
            f"LIST {aws_bucket}/{crdc_series_uuid}", lambda p: p.list_series(aws_bucket, crdc_series_uuid)
        )

    async def _read(self, aws_bucket: str, key: str, start: int, end: int, size: int | None, md5: str) -> bytes:
        if end <= start:
            return b""
        at_eof = size is not None and end == size
        errors: list[str] = []
        for p in self._order():
            try:
                data = await p.read(aws_bucket, key, start, end, at_eof, md5)
            except Exception as e:
                self._failed(p, e, errors)
                continue
            self._answered(p)
            return data
        raise self._gave_up(f"GET {aws_bucket}/{key} [{start}, {end})", errors)

    def read(self, aws_bucket: str, key: str, start: int, end: int, size: int | None = None, md5: str = "") -> bytes:
        """Bytes [start, end) of one object, exactly: a ranged GET, retried and failed over. Blocking.

        With the listed `size`, a read that ends there also fails if the object is longer. With the listed
        `md5`, a read of the whole object is checked against it: a body that differs is fetched again, then
        from the other provider, and is never returned.
        """
        return _LOOP.run(self._read(aws_bucket, key, start, end, size, md5))

    async def aread(
        self, aws_bucket: str, key: str, start: int, end: int, size: int | None = None, md5: str = ""
    ) -> bytes:
        """read(), awaited from trio without a worker thread."""
        return await _LOOP.trio(self._read(aws_bucket, key, start, end, size, md5))

    @property
    def corrupt_bodies(self) -> int:
        return sum(p.corrupt_bodies for p in self.providers)


def _md5(entry: dict) -> str:
    """The content's MD5 as the LIST gives it: a single-part S3 object's ETag, or GCS's md5Hash."""
    etag = str(entry.get("ETag") or "").strip('"')
    if re.fullmatch(r"[0-9a-fA-F]{32}", etag):
        return etag.lower()
    try:
        raw = base64.b64decode(entry.get("md5Hash") or "", validate=True)
    except ValueError:
        return ""
    return raw.hex() if len(raw) == 16 else ""


def _etag(entry: dict) -> str:
    for k in ("ETag", "etag", "md5Hash", "crc32c"):
        if entry.get(k):
            return str(entry[k]).strip('"')
    return ""


def _mtime_ns(entry: dict) -> int:
    import datetime as dt

    value = entry.get("LastModified") or entry.get("updated") or entry.get("timeCreated")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp()) * 1_000_000_000
    return 0
