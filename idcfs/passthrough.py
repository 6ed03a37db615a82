"""FUSE passthrough: the kernel reads a cached instance from its file itself, and no READ reaches the daemon.

Since Linux 6.9 a FUSE daemon may register an open file as the backing file of an inode (the ioctl
FUSE_DEV_IOC_BACKING_OPEN) and answer OPEN with its id; the kernel then serves that open's reads and mmaps
from the backing file. It needs the pyfuse3 that `make passthrough` builds (libfuse 3.17 and a small patch),
a kernel that offers it, and CAP_SYS_ADMIN. Where any of these is missing the mount serves as before.

The kernel's rules decide the bookkeeping here:
- an inode's opens are all passthrough or all served by the daemon through the page cache: a mix fails
  the open with EIO. So an inode with a daemon-served open stays daemon-served until that open is released,
  and an inode in passthrough stays in it, with the same backing file, until its last open is released;
- one backing file per inode: the id is registered at the first passthrough open, after the cached file was
  checked (length and digest), and closed at the last release. The descriptor is held until then, so an
  eviction that deletes the file does not disturb its readers.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import trio

from .background import failpoint

log = logging.getLogger(__name__)

LIBRARY = hasattr(pyfuse3, "backing_open")  # the patched pyfuse3 of `make passthrough`
_STACKED = ("overlay", "ecryptfs", "aufs")  # file systems that stack on others, as the kernel counts depth


def stacked_filesystem(path: Path) -> bool:
    """path is on overlayfs or the like (a container's root): backing files there need depth 2."""
    best, kind = "", ""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                point, fstype = fields[4], fields[fields.index("-") + 1]
                if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                    best, kind = point, fstype
    except (OSError, ValueError, IndexError):
        return False
    return kind in _STACKED


class _Backing:
    __slots__ = ("id", "fd", "opens")

    def __init__(self, backing_id: int, fd: int):
        self.id, self.fd, self.opens = backing_id, fd, 0


class Passthrough:
    def __init__(self, wanted: bool, why_not: str | None = None):
        """wanted: --passthrough auto; why_not: a reason this mount cannot use it anyway."""
        if not wanted:
            why_not = "--passthrough off"
        elif why_not is None and not LIBRARY:
            why_not = "pyfuse3 without passthrough (build it with `make passthrough`)"
        self.mode = f"off: {why_not}" if why_not else "off: not negotiated yet"
        self.wanted = why_not is None
        self.opens = 0  # opens answered with passthrough
        self._backed: dict[int, _Backing] = {}
        self._served: Counter[int] = Counter()  # inode -> daemon-served opens of it
        self._handles: dict[int, tuple[int, bool]] = {}  # fh -> (inode, passthrough)

    @property
    def on(self) -> bool:
        return self.mode == "on"

    def negotiated(self) -> None:
        """After FUSE init: did the kernel accept passthrough?"""
        if not self.wanted:
            log.info("passthrough %s", self.mode)
            return
        if pyfuse3.passthrough_enabled():
            self.mode = "on"
            log.info("passthrough on: the kernel reads cached instances from their files")
        else:
            self._off("the kernel does not offer FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH)")

    def _off(self, why: str) -> None:
        self.mode = f"off: {why}"
        log.warning("passthrough %s; reads are served by the daemon", self.mode)

    async def choose(self, ino: int, known: Callable[[], int | None], load: Callable[[], int | None]) -> int:
        """The backing id for a new open of inode ino, or 0 to serve it from the daemon. Both callables return
        a descriptor of the checked cached file, or None: known() quickly, on this thread, for a file checked
        before; load() reads and checks it, in a thread."""
        if not self.on:
            return 0
        b = self._backed.get(ino)
        if b is not None:
            return b.id
        if self._served[ino]:
            return 0
        fd = known()
        if fd is None:
            fd = await trio.to_thread.run_sync(load)
        if fd is None:
            return 0
        # Other opens of ino may have been answered while the file was checked.
        b = self._backed.get(ino)
        if b is not None or self._served[ino] or not self.on:
            os.close(fd)
            return b.id if b is not None else 0
        try:
            failpoint("backing")
            backing_id = pyfuse3.backing_open(fd)
        except Exception as e:  # refused: this open and all later ones are served by the daemon
            os.close(fd)
            code = getattr(e, "errno", None)
            why = {
                errno.EPERM: "registering a backing file needs CAP_SYS_ADMIN (EPERM)",
                errno.ELOOP: "the cache directory is on a stacked file system too deep for passthrough (ELOOP)",
            }.get(code, f"the kernel refused a backing file ({os.strerror(code) if code else e})")
            self._off(why)
            return 0
        self._backed[ino] = _Backing(backing_id, fd)
        return backing_id

    def opened(self, fh: int, ino: int, backing_id: int) -> None:
        self._handles[fh] = (ino, bool(backing_id))
        if backing_id:
            self._backed[ino].opens += 1
            self.opens += 1
        else:
            self._served[ino] += 1

    def released(self, fh: int) -> None:
        got = self._handles.pop(fh, None)
        if got is None:
            return
        ino, passthrough = got
        if not passthrough:
            self._served[ino] -= 1
            if not self._served[ino]:
                del self._served[ino]
            return
        b = self._backed[ino]
        b.opens -= 1
        if b.opens:
            return
        del self._backed[ino]
        try:
            pyfuse3.backing_close(b.id)
        except OSError as e:
            log.warning("closing backing file %d: %s", b.id, e)
        finally:
            os.close(b.fd)

    def close(self) -> None:
        for b in self._backed.values():
            os.close(b.fd)
        self._backed.clear()

    def stats(self) -> dict:
        return {"passthrough": self.mode, "passthrough_opens": self.opens, "passthrough_files": len(self._backed)}
