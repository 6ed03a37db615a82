"""The FUSE adapter: pyfuse3 Operations over the namespace, the listings and the read path.

Inode 1 is the root; directory id k is inode k + 1; instance files get
inodes above all directories as their series are listed. Handlers are thin,
and every one goes through `_boundary`, the single place that turns
exceptions into errno values: anything else escaping would end the mount.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat

import pyfuse3
import trio

from .cache import BLOCK_SIZE, WHOLE_FILE, CacheDir
from .listing import InstanceFile, Listings
from .namespace import Namespace
from .readpath import MEMORY, OpenFile, Reader
from .store import ObjectStore, StoreError

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.idc."  # user.idc.stats on the root holds the mount's counters as JSON
# Content under a crdc UUID never changes, so the kernel may cache for long.
TIMEOUT = 3600.0


def _boundary(fn):
    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except StoreError as e:
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _erofs(name):
    async def handler(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)

    handler.__name__ = name
    return handler


class IdcOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(
        self,
        ns: Namespace,
        store: ObjectStore,
        cache: CacheDir | None,
        mtime_ns: int,
        io_threads: int = 32,
        memory: int = MEMORY,
    ):
        super().__init__()
        self.ns = ns
        self.store = store
        self.cache = cache
        self.mtime_ns = mtime_ns
        self.uid, self.gid = os.getuid(), os.getgid()
        # GETs, LISTs and the local disk each have their own threads: a stalled origin holds only its own.
        meta = cache.meta if cache else None
        self.listings = Listings(ns, store, meta, trio.CapacityLimiter(16), first_ino=ns.num_dirs + 2)
        self.reader = Reader(store, cache.blocks if cache else None, trio.CapacityLimiter(io_threads), memory)
        self._db = trio.CapacityLimiter(1)  # one duckdb connection
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1
        self._flushed: dict[str, int] = {}

    def attach(self, nursery: trio.Nursery) -> None:
        """Called by the mount loop: background fetches, cache writes and counter flushes run in nursery."""
        self.reader.attach(nursery)
        nursery.start_soon(self._flush_counters_every, 10.0)

    def close(self) -> None:
        self.flush_counters()
        if self.cache is not None:
            self.cache.close()

    def _lifetime_counters(self) -> dict[str, int]:
        r = self.reader
        return {
            "hits": r.hits,
            "misses": r.misses,
            "bytes_fetched": r.bytes_fetched,
            "get_requests": r.get_requests,
            "list_requests": self.listings.list_requests,
            "corrupt_blocks": r.cache.corrupt if r.cache else 0,
        }

    def flush_counters(self) -> None:
        """Add what was counted since the last flush to the cache directory's lifetime counters."""
        if self.cache is None:
            return
        now = self._lifetime_counters()
        self.cache.meta.add_counters({k: v - self._flushed.get(k, 0) for k, v in now.items()})
        self._flushed = now

    async def _flush_counters_every(self, seconds: float) -> None:
        while True:
            await trio.sleep(seconds)
            try:
                await trio.to_thread.run_sync(self.flush_counters)
            except Exception as e:
                log.warning("cannot save counters: %s", e)

    # -- attributes

    def _attr(self, ino: int, *, directory: bool, size: int = 0, mtime_ns: int | None = None):
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        if directory:
            a.st_mode = stat.S_IFDIR | 0o555
            a.st_nlink = 1  # "unknown": keeps find(1) from its leaf-directory shortcut
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
        a.st_size = size
        # Buffered readers (Python's open, stdio) read st_blksize at a time. 1 MiB made every header read
        # fetch a whole CT file and a WSI tile four blocks. Small files: a disk's 4 KiB, so a header read
        # asks the kernel for 16 KiB; large ones: one block, the unit fetched anyway.
        a.st_blksize = BLOCK_SIZE if size > WHOLE_FILE else 4096
        a.st_blocks = (size + 511) // 512
        a.st_uid, a.st_gid = self.uid, self.gid
        t = self.mtime_ns if mtime_ns is None or mtime_ns == 0 else mtime_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        return a

    def _dir_attr(self, dir_id: int):
        return self._attr(dir_id + 1, directory=True)

    def _file_attr(self, f: InstanceFile):
        return self._attr(f.ino, directory=False, size=f.size, mtime_ns=f.mtime_ns)

    def _dir_id(self, ino: int) -> int | None:
        d = ino - 1
        return d if 0 <= d <= self.ns.num_dirs else None

    def _file(self, ino: int) -> InstanceFile:
        f = self.listings.files.get(ino)
        if f is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return f

    # -- namespace

    @_boundary
    async def lookup(self, parent_inode, name, ctx=None):
        dir_id = self._dir_id(parent_inode)
        if dir_id is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        try:
            text = name.decode()
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if text == ".":
            return self._dir_attr(dir_id)
        if self.ns.is_leaf(dir_id):
            f = (await self.listings.files_of(dir_id)).get(text)
            if f is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._file_attr(f)
        child = self.ns.lookup(dir_id, text)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._dir_attr(child)

    @_boundary
    async def getattr(self, inode, ctx=None):
        dir_id = self._dir_id(inode)
        if dir_id is not None:
            return self._dir_attr(dir_id)
        return self._file_attr(self._file(inode))

    @_boundary
    async def forget(self, inode_list):
        pass  # inodes are stable for the life of the mount

    @_boundary
    async def opendir(self, inode, ctx):
        if self._dir_id(inode) is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh, start_id, token):
        dir_id = self._dir_id(fh)
        if self.ns.is_leaf(dir_id):
            await self.listings.files_of(dir_id)
            files = self.listings.in_order(dir_id)
            for i in range(start_id, len(files)):
                if not pyfuse3.readdir_reply(token, files[i].name.encode(), self._file_attr(files[i]), i + 1):
                    return
            return
        for i, (name, child) in enumerate(self.ns.subdirs(dir_id, start_id), start_id):
            if not pyfuse3.readdir_reply(token, name.encode(), self._dir_attr(child), i + 1):
                return

    @_boundary
    async def releasedir(self, fh):
        pass

    @_boundary
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 1 << 20
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.ns.num_dirs + len(self.listings.files)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    # -- files

    @_boundary
    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._dir_id(inode) is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        f = self._file(inode)
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._open[fh] = self.reader.open(f, self.listings.in_order(f.dir_id))
        # Large instances (slide microscopy) bypass the page cache: the kernel's readahead would turn
        # one tile read into megabytes of GETs. Our own readahead serves sequential readers of them.
        if f.size > WHOLE_FILE:
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_boundary
    async def read(self, fh, off, size):
        of = self._open.get(fh)
        if of is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.reader.read(of, off, size)

    @_boundary
    async def release(self, fh):
        of = self._open.pop(fh, None)
        if of is not None:
            self.reader.close(of)

    async def flush(self, fh):
        # Nothing to flush on a read-only mount; ENOSYS makes the kernel stop sending flush on close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_boundary
    async def fsync(self, fh, datasync):
        pass

    @_boundary
    async def fsyncdir(self, fh, datasync):
        pass

    @_boundary
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    # -- extended attributes: user.idc.* on leaf directories and files

    def stats(self) -> dict[str, int]:
        r = self.reader
        return {
            **self._lifetime_counters(),
            "in_flight": r.in_flight,
            "memory_hits": r.memory_hits,
            "bytes_read": r.bytes_read,
            "prefetched_files": r.prefetched_files,
            "failovers": self.store.failovers,
            "origin_errors": self.store.errors,
            "open_files": len(self._open),
            "files_known": len(self.listings.files),
        }

    async def _xattrs(self, inode) -> dict[str, str]:
        dir_id = self._dir_id(inode)
        if dir_id == 0:  # control attributes of the mount itself
            return {"stats": json.dumps(self.stats())}
        if dir_id is not None:
            series = self.ns.series_in(dir_id) if self.ns.is_leaf(dir_id) else []
            if len(series) != 1:
                return {}
            s, url = series[0], self.store.url(series[0].aws_bucket, series[0].crdc_series_uuid + "/")
        else:
            f = self._file(inode)
            s, url = f.series, self.store.url(f.series.aws_bucket, f.key)
        meta = await trio.to_thread.run_sync(self.ns.series_metadata, s.crdc_series_uuid, limiter=self._db)
        meta["aws_bucket"] = s.aws_bucket
        meta["url"] = url
        return meta

    @_boundary
    async def listxattr(self, inode, ctx):
        return [(XATTR_PREFIX + k).encode() for k in await self._xattrs(inode)]

    @_boundary
    async def getxattr(self, inode, name, ctx):
        key = name.decode(errors="replace")
        if not key.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = (await self._xattrs(inode)).get(key[len(XATTR_PREFIX) :])
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value.encode()

    # -- read-only: everything that would change the tree

    for _name in (
        "setattr",
        "mknod",
        "mkdir",
        "unlink",
        "rmdir",
        "symlink",
        "rename",
        "link",
        "create",
        "write",
        "setxattr",
        "removexattr",
    ):
        locals()[_name] = _erofs(_name)
    del _name
