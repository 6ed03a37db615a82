"""The fsspec protocol `idc://`: the mount's tree, read path and cache, without FUSE.

    import fsspec, pydicom
    fs = fsspec.filesystem("idc", filter="collection_id = 'rider_pilot'")
    with fs.open(fs.find("rider_pilot")[0]) as f:
        ds = pydicom.dcmread(f)

Storage options are those of `idcfs mount`. Reads go through the same engine
as the mount, in a trio run on a background thread, and the same cache
directory (default: the user cache dir), so a file read by either is warm for
the other. Filesystems with equal options in one process share one engine
(fsspec makes an instance per thread). A forked process (a DataLoader worker)
starts its own engine on first use; the parent's is left untouched.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import datetime
import errno
import io
import logging
import multiprocessing.util
import os
import threading

import trio
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from .engine import Engine, Node
from .errors import IsADirectory, as_keyword, as_oserror
from .listing import InstanceFile
from .options import DEFAULT_CACHE_SIZE, MOUNT_ONLY_OPTIONS, Options, build_engine

READ_BLOCK = 16 << 10  # buffered reads fetch at least this much, as the mount's st_blksize does
DRAIN_SECONDS = 10.0
NOTE_SECONDS = 0.02  # opens served in the caller's thread reach the engine this late at most
KNOWN_PATHS = 1 << 17  # paths remembered per process; beyond that the memo starts again

log = logging.getLogger(__name__)


class _Loop:
    """One Engine served to synchronous callers by a trio run on a daemon thread."""

    def __init__(self, build):
        self.engine: Engine | None = None
        self.index = None  # an idcfs.Index over the engine's tree, made on first use
        self._build = build
        self._token = None
        self._error: BaseException | None = None
        self._closed = False
        self._files: dict[str, InstanceFile] = {}  # path -> file, for known_file()
        self._dirs: dict[str, int] = {}  # directory path -> its id, for known_file()
        self._opened: collections.deque[InstanceFile] = collections.deque()
        self._noting = False
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="idcfs-engine", daemon=True)
        self._thread.start()
        started.wait()
        if self._error is not None:
            raise self._error
        # multiprocessing workers (DataLoader's too) leave through os._exit, which skips atexit: this runs there.
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    def _run(self, started: threading.Event) -> None:
        try:
            trio.run(self._main, started)
        except BaseException as e:
            self._error = e
        finally:
            started.set()

    async def _main(self, started: threading.Event) -> None:
        self.engine = self._build()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.engine.attach(nursery)
            self._token = trio.lowlevel.current_trio_token()
            started.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, afn, *args):
        try:
            return trio.from_thread.run(afn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise OSError(errno.EIO, "the idc:// engine has stopped") from None
        except Exception as e:  # by the errno table the mount uses too
            error = as_oserror(e)
            if error is e:
                raise
            raise error from None

    def call_sync(self, fn, *args):
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    def call_soon(self, fn, *args) -> None:
        """Run fn in the engine's thread without waiting; nothing if the engine has stopped."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def known_file(self, path: str, parts: list[str]) -> InstanceFile | None:
        """The listed instance file at path, from memory, in the caller's thread; None if that needs the engine."""
        f = self._files.get(path)
        if f is None:
            # A fresh process (a DataLoader worker, each epoch) meets each path once: its directory, shared
            # by a series' files, is resolved once, not once per file.
            directory = path.rpartition("/")[0]
            dir_id = self._dirs.get(directory)
            if dir_id is None:
                dir_id = self.engine.resolve_known(parts[:-1])
                if not isinstance(dir_id, int) or not parts:
                    return None
                if len(self._dirs) >= KNOWN_PATHS:
                    self._dirs.clear()
                self._dirs[directory] = dir_id
            f = self.engine.resolve_known(parts[-1:], dir_id)
            if not isinstance(f, InstanceFile):
                return None
            if len(self._files) >= KNOWN_PATHS:
                self._files.clear()
            self._files[path] = f
        return f

    def note_open(self, f: InstanceFile) -> None:
        """Tell the engine's series prefetch and warming that f was opened here. Notes are queued and taken
        in batches, NOTE_SECONDS apart at most: waking the engine's thread costs more than a cached read."""
        self._opened.append(f)
        if not self._noting:
            self._noting = True
            self.call_soon(self._notes_later)

    def _notes_later(self) -> None:
        self.engine.background.start_soon(self._take_notes_after, NOTE_SECONDS)

    async def _take_notes_after(self, seconds: float) -> None:
        await trio.sleep(seconds)
        self.take_notes()

    def take_notes(self) -> None:
        """In the engine's thread: pass the queued opens on, in order."""
        self._noting = False  # first: a note queued from now on schedules another batch
        while self._opened:
            self.engine.note_open(self._opened.popleft())

    async def open_file(self, parts: list[str], local: bool = False):
        self.take_notes()  # opens noted before this one come first, as the series prefetch expects
        return await _open_file(self.engine, parts, local)

    def close(self) -> None:
        """Finish the cache writes (up to DRAIN_SECONDS), stop the thread, save the counters."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._thread.is_alive():
                trio.from_thread.run(self._drain, trio_token=self._token)
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
                self._thread.join(30)
            if self.engine is not None:
                self.engine.close()
        except Exception as e:  # at exit: a cache directory deleted under us must not print a traceback
            log.warning("the idc:// engine did not close cleanly: %s", e)

    async def _drain(self) -> None:
        with trio.move_on_after(DRAIN_SECONDS):
            await self.engine.stored()


_lock = threading.Lock()
_loops: dict[tuple, _Loop] = {}  # (pid, options) -> the engine of this process for those options
_inherited: dict[tuple, _Loop] = {}  # a parent's engines by options: never run or closed in a child


def _after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _inherited.update({options: loop for (_, options), loop in _loops.items()})
    _loops.clear()


def _close_all() -> None:
    for loop in list(_loops.values()):
        loop.close()
    _loops.clear()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_close_all)  # daemon threads still run during atexit: counters are flushed


def _to_read_only(*_, **__):
    raise OSError(errno.EROFS, "idc:// is read-only")


# Options fsspec's own machinery passes to every filesystem.
FSSPEC_OPTIONS = {"use_listings_cache", "listings_expiry_time", "max_paths", "asynchronous", "loop"}


class IdcFileSystem(AbstractFileSystem):
    """IDC as an fsspec filesystem: collection/patient/study/series/instance, read-only.

    Options (all keyword, as the `idcfs mount` flags; see idcfs.options.Options): source ("aws" or "gcs"),
    s3_endpoint, gcs_endpoint (default: the env vars IDCFS_S3_ENDPOINT/IDCFS_GCS_ENDPOINT, then the public
    buckets), filter (SQL WHERE over the index), manifest, collections, licenses (license_short_name
    values or "commercial"), idc_version (an earlier release), template or layout ("idc", "readable"),
    index (parquet), cache_dir, cache_size ("10G"; "0" turns the block cache off), memory ("256M"),
    timeout (30 s). Bad options raise ValueError naming the option as given here.
    """

    protocol = "idc"
    root_marker = ""

    def __init__(self, **options):
        ours = {k: v for k, v in options.items() if k not in FSSPEC_OPTIONS}
        super().__init__(**{k: v for k, v in options.items() if k in FSSPEC_OPTIONS})
        if ours.get("cache_size") is None:
            ours["cache_size"] = DEFAULT_CACHE_SIZE
        for name in ("s3_endpoint", "gcs_endpoint"):  # an empty value counts as unset, as in the environment
            if ours.get(name) == "":
                ours[name] = None
        allowed = [name for name in Options.names() if name not in MOUNT_ONLY_OPTIONS]
        # Normalized: options spelt differently that give the same tree share one engine.
        self._options = Options.make(as_keyword, allowed=allowed, **ours).normalized()
        self._loop()  # build now: a bad filter or manifest fails here, not on first read

    def _build(self) -> Engine:
        parent = _inherited.get(self._options)
        if parent is not None and parent.engine is not None:
            # A forked worker reuses the parent's tree (copy-on-write), not its threads, and the paths the
            # parent listed resolve with no hop. The parent opened the cache directory's stores, so they are
            # sound: the worker opens them when it needs them, not before its first read.
            cache = self._options.cache(lazy=True)
            return build_engine(self._options, parent.engine.ns, cache=cache).adopting(parent.engine)
        return build_engine(self._options)

    def _loop(self) -> _Loop:
        key = (os.getpid(), self._options)
        loop = _loops.get(key)
        if loop is None:
            with _lock:
                loop = _loops.get(key)
                if loop is None:
                    loop = _loops[key] = _Loop(self._build)
        return loop

    @property
    def engine(self) -> Engine:
        return self._loop().engine

    @property
    def index(self):
        """The selection's idcfs.Index: SQL over the index, paths to metadata and back."""
        loop = self._loop()
        if loop.index is None:
            from .index import Index

            loop.index = Index(_namespace=loop.engine.ns)
        return loop.index

    # -- paths

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("idc://"):
            path = path[len("idc://") :]
        return path.strip("/")

    def unstrip_protocol(self, name: str) -> str:
        return "idc://" + name

    def _parts(self, path: str) -> list[str]:
        return [p for p in self._strip_protocol(path).split("/") if p]

    def _node(self, path: str) -> Node:
        return self._loop().call(self.engine.resolve, self._parts(path))

    def _entry(self, path: str, node: Node) -> dict:
        if isinstance(node, InstanceFile):
            return {
                "name": path,
                "size": node.size,
                "type": "file",
                "mtime": node.mtime_ns / 1e9,
                "ETag": node.etag,
                "crdc_series_uuid": node.series.crdc_series_uuid,
            }
        return {"name": path, "size": 0, "type": "directory"}

    # -- reading the tree

    def info(self, path, **kwargs):
        path = self._strip_protocol(path)
        return self._entry(path, self._node(path))

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path)
        node = self._node(path)
        if isinstance(node, InstanceFile):
            entries = [self._entry(path, node)]
        else:
            loop = self._loop()
            prefix = path + "/" if path else ""
            entries = [self._entry(prefix + name, n) for name, n in loop.call(loop.engine.children, node)]
        return entries if detail else [e["name"] for e in entries]

    def exists(self, path, **kwargs):
        try:
            self._node(path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def ukey(self, path):
        return self.info(path).get("ETag") or self._strip_protocol(path)

    def modified(self, path):
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(path)
        return datetime.datetime.fromtimestamp(info["mtime"], tz=datetime.timezone.utc)

    created = modified

    def metadata(self, path) -> dict[str, str]:
        """The index columns of the series a file or series directory belongs to ({} above that level)."""
        loop = self._loop()
        return loop.call(loop.engine.metadata, self._node(path))

    def stats(self) -> dict[str, int]:
        """Counters of this process's engine: GETs, bytes fetched, cache hits and misses."""
        loop = self._loop()
        return loop.call_sync(loop.engine.stats)

    # -- reading files

    def cat_file(self, path, start=None, end=None, **kwargs):
        loop = self._loop()
        return loop.call(_cat, loop.engine, self._parts(path), start, end)

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise OSError(errno.EROFS, "idc:// is read-only", self._strip_protocol(path))
        loop, stripped = self._loop(), self._strip_protocol(path)
        parts = self._parts(stripped)
        engine = loop.engine
        f = loop.known_file(stripped, parts)
        if f is not None and engine.cached_whole(f):  # no hop to the engine's thread at all
            data = engine.read_cached(f)
            if data is not None:
                loop.note_open(f)
                return LocalFile(data, stripped)
        f, of = loop.call(loop.open_file, parts, True)  # one hop to the engine, not two
        if of is None:  # cached whole: read here, not through the engine's thread
            data = loop.engine.read_cached(f)
            if data is not None:
                return LocalFile(data, stripped)
            f, of = loop.call(loop.open_file, parts, False)  # damaged or evicted meanwhile
        return IdcFile(self, path, f, of, block_size=block_size, cache_options=cache_options, **kwargs)

    # -- read-only: everything that would change the tree

    def makedirs(self, path, exist_ok=False):
        if exist_ok and self.isdir(path):
            return
        _to_read_only()

    mkdir = rmdir = rm_file = _rm = rm = cp_file = put_file = pipe_file = touch = mv = _to_read_only


def _clip(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """fsspec's range convention: None is the start or end, negatives count from the end."""
    start = 0 if start is None else (max(0, size + start) if start < 0 else min(start, size))
    end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
    return start, end


async def _file(engine: Engine, parts: list[str]) -> InstanceFile:
    node = await engine.resolve(parts)
    if not isinstance(node, InstanceFile):
        raise IsADirectory(errno.EISDIR, "is a directory", "/".join(parts))
    return node


async def _open_file(engine: Engine, parts: list[str], local: bool = False):
    """The file and its open state; with `local`, (file, None) if the cache holds it whole. The open is
    noted either way, so series prefetch and warming see every file a reader opens."""
    f = await _file(engine, parts)
    of = engine.open(f, local)
    if local and engine.cached_whole(f):
        engine.release(of)
        return f, None
    return f, of


async def _cat(engine: Engine, parts: list[str], start: int | None, end: int | None) -> bytes:
    f, of = await _open_file(engine, parts)
    try:
        start, end = _clip(f.size, start, end)
        return bytes(await engine.read(of, start, end - start)) if start < end else b""
    finally:
        engine.release(of)


class LocalFile(io.BytesIO):
    """A cached instance, checked and read whole at open: its reads are local and need no engine. Safe to
    use after fork."""

    def __init__(self, data: bytes, path: str):
        super().__init__(data)
        self.path = self.name = path
        self.size = len(data)

    def readable(self) -> bool:
        return True


class IdcFile(AbstractBufferedFile):
    """An instance file opened for reading; reads go to the engine's read path."""

    def __init__(self, fs: IdcFileSystem, path: str, f: InstanceFile, of, block_size=None, cache_type=None, **kwargs):
        super().__init__(
            fs,
            fs._strip_protocol(path),
            mode="rb",
            block_size=block_size or READ_BLOCK,
            cache_type=cache_type or "readahead",
            size=f.size,
            **kwargs,
        )
        self._loop = fs._loop()
        self._pid = os.getpid()
        self._of = of

    def _fetch_range(self, start: int, end: int) -> bytes:
        if os.getpid() != self._pid:
            raise OSError(errno.EBADF, "an idc:// file opened before fork cannot be read after it: open it again")
        return self._loop.call(_read, self._loop.engine, self._of, start, end)

    def close(self) -> None:
        if not self.closed and os.getpid() == self._pid:
            self._loop.call_soon(self._loop.engine.release, self._of)  # nothing to wait for
        super().close()


async def _read(engine: Engine, of, start: int, end: int) -> bytes:
    return bytes(await engine.read(of, start, end - start))
