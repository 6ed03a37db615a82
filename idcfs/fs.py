"""The FUSE adapter: pyfuse3 Operations over the namespace, the listings and the read path.

Inode 1 is the root; directory id k is inode k + 1; an instance file's inode,
above all directories', follows from its directory and place in it (Listings.ino),
so it never changes, even when its listing is dropped from memory. Handlers are thin,
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

from .cache import BLOCK_SIZE, WHOLE_FILE
from .engine import Engine, Node
from .errors import errno_of
from .listing import InstanceFile
from .passthrough import Passthrough, stacked_filesystem
from .readpath import OpenFile

log = logging.getLogger(__name__)

XATTR_PREFIX = "user.idc."  # user.idc.stats on the root holds the mount's counters as JSON
# Content under a crdc UUID never changes, so the kernel may cache for long.
TIMEOUT = 3600.0
READDIR_BATCH = 256  # entries taken from the tree per step of a readdir call


def _boundary(fn):
    @functools.wraps(fn)
    async def wrapper(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:  # the errno table idc:// uses too
            number = errno_of(e)
            if number is None:  # not an error the engine raises on purpose: a bug or a failing disk
                log.exception("%s%r failed", fn.__name__, args[:2])
            else:
                log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(number or errno.EIO) from None

    return wrapper


def _erofs(name):
    async def handler(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)

    handler.__name__ = name
    return handler


class IdcOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, engine: Engine, mtime_ns: int, passthrough: bool = True):
        super().__init__()
        self.engine = engine
        files = engine.instance_files
        self.passthrough = Passthrough(passthrough, None if files else "no instance files (--cache-size 0)")
        # Read by the patched pyfuse3 at FUSE init (`make passthrough`); the stock one ignores them.
        self.enable_passthrough = self.passthrough.wanted
        self.passthrough_stacked_over = self.passthrough.wanted and stacked_filesystem(files)
        self.ns = engine.ns
        self.mtime_ns = mtime_ns
        self.uid, self.gid = os.getuid(), os.getgid()
        self._open: dict[int, OpenFile] = {}
        self._next_fh = 1

    def attach(self, nursery: trio.Nursery) -> None:
        """Called by the mount loop: background fetches, cache writes and counter flushes run in nursery."""
        self.engine.attach(nursery)

    def init(self) -> None:
        # Called by pyfuse3 inside FUSE init, where an exception would be lost.
        try:
            self.passthrough.negotiated()
        except Exception:
            log.exception("passthrough negotiation")

    def close(self) -> None:
        self.passthrough.close()
        self.engine.close()

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

    def _node_attr(self, node: Node | None):
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._file_attr(node) if isinstance(node, InstanceFile) else self._dir_attr(node)

    def _dir_id(self, ino: int) -> int | None:
        d = ino - 1
        return d if 0 <= d <= self.ns.num_dirs else None

    async def _file(self, ino: int) -> InstanceFile:
        f = await self.engine.file(ino)
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
        node = await self.engine.child(dir_id, text)
        attr = self._node_attr(node)
        if isinstance(node, InstanceFile):
            self.engine.looked_up(node)
        return attr

    @_boundary
    async def getattr(self, inode, ctx=None):
        dir_id = self._dir_id(inode)
        if dir_id is not None:
            return self._dir_attr(dir_id)
        return self._file_attr(await self._file(inode))

    @_boundary
    async def forget(self, inode_list):
        # Inode numbers never change; what the kernel forgot tells which listings to drop first.
        for ino, n in inode_list:
            self.engine.forget(ino, n)

    @_boundary
    async def opendir(self, inode, ctx):
        if self._dir_id(inode) is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_boundary
    async def readdir(self, fh, start_id, token):
        # The kernel's buffer takes about a hundred entries per call, and a listing is read in many calls:
        # taking entries in batches keeps `ls` of 26,410 patients linear instead of quadratic.
        dir_id = self._dir_id(fh)
        subdir = self._dir_attr(0)  # one for all subdirectories: readdir_reply copies it at once
        while True:
            entries = await self.engine.children(dir_id, start_id, READDIR_BATCH)
            for i, (name, node) in enumerate(entries, start_id):
                if isinstance(node, InstanceFile):
                    if not pyfuse3.readdir_reply(token, name.encode(), self._file_attr(node), i + 1):
                        return
                    self.engine.looked_up(node)  # READDIRPLUS: the kernel now holds a reference to it
                else:
                    subdir.st_ino = node + 1
                    if not pyfuse3.readdir_reply(token, name.encode(), subdir, i + 1):
                        return
            if len(entries) < READDIR_BATCH:
                return
            start_id += len(entries)

    @_boundary
    async def releasedir(self, fh):
        pass

    @_boundary
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 1 << 20
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.ns.num_dirs + self.engine.stats()["files_known"]
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
        f = await self._file(inode)
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self._open[fh] = self.engine.open(f, local=self.passthrough.on)
        # Large instances (slide microscopy) bypass the page cache: the kernel's readahead would turn
        # one tile read into megabytes of GETs. Our own readahead serves sequential readers of them.
        if f.size > WHOLE_FILE:
            return pyfuse3.FileInfo(fh=fh, direct_io=True)
        backing_id = 0
        if self.passthrough.on and self.engine.cached_whole(f):
            quick, checked = (functools.partial(self.engine.open_cached, f, q) for q in (True, False))
            backing_id = await self.passthrough.choose(inode, quick, checked)
        self.passthrough.opened(fh, inode, backing_id)
        if backing_id:  # the kernel reads the cached file itself; the page cache is the backing file's
            return pyfuse3.FileInfo(fh=fh, keep_cache=False, backing_id=backing_id)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_boundary
    async def read(self, fh, off, size):
        of = self._open.get(fh)
        if of is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self.engine.read(of, off, size)

    @_boundary
    async def release(self, fh):
        of = self._open.pop(fh, None)
        self.passthrough.released(fh)
        if of is not None:
            self.engine.release(of)

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

    async def _xattrs(self, inode) -> dict[str, str]:
        dir_id = self._dir_id(inode)
        meta = await self.engine.metadata(await self._file(inode) if dir_id is None else dir_id)
        if dir_id == 0:  # control attributes of the mount itself
            meta["stats"] = json.dumps(
                {**self.engine.stats(), **self.passthrough.stats(), "open_files": len(self._open)}
            )
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
