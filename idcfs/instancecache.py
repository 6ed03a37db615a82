"""The warm tier: whole instances as plain files, `files/<crdc_series_uuid>/<file name>`, no database.

A header scan's heads (the first 64 KiB of a small instance) are files of this tier too, named
`<file name>.head`, under the same checks, cap and LRU order. They are not fsynced: a head torn by a power
loss fails its check like any damaged entry, and is fetched again.

An instance up to WHOLE_FILE bytes (most CT and MR) is kept as one file holding exactly its bytes, so a
cached read is an open() and a read(), with no SQLite query; the same file can back FUSE passthrough, or be
handed to a DataLoader worker as is. Larger files (slides) stay in the block cache.

What is checked, and when:
- at write: the bytes were checked against the origin's MD5 (whole-object GETs) and their length; they are
  written to a temporary file with an XXH3-128 digest of name and bytes in the extended attribute
  `user.idcfs.xxh3`, fsynced and renamed into place, so a crash (kill -9, power loss) leaves either the
  whole entry or a temporary file that is never read and is removed later;
- at load (once per open by the mount, once per open by idc://, and when an open hands the file to the
  kernel as a FUSE passthrough backing file): the length against the listed size and the bytes against the
  digest. A torn, rotten or swapped entry fails, is deleted and counted, and the
  file is fetched again. Reads of a loaded file are served from memory, with no further check;
- at a passthrough open of a file this process wrote or checked before: that it is still the same file
  (inode number and size), not its bytes again. Damage to a file in place while a mount runs is found by the
  next mount, or the next load that reads it.

Least-recently-used order is each file's mtime: reads are noted in memory and the files touched in one
batch every few seconds. Eviction scans the directory in the background, under a lock file so that one of
the processes sharing the cache directory evicts at a time, and deletes the least recently used files and
blocks (the block cache's access times), in one order, until both together are under the cap, with some
headroom so it runs in batches. A file deleted while another process reads it stays readable to that
process (POSIX), and is refetched by the next.

A file system without user extended attributes, a full disk or a directory that cannot be written turns
the tier off for this process (a warning once); reads go on through the block cache or uncached.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import xxhash

log = logging.getLogger(__name__)

XATTR = "user.idcfs.xxh3"
HEADROOM = 0.9  # eviction goes down to this share of the cap, so it runs in batches
RESCAN_SECONDS = 60.0  # other processes' writes are seen at the latest this long after
STALE_TMP_SECONDS = 600.0
# A claim older than this was left by a process that died or stalled: another process takes it over.
CLAIM_STALE_SECONDS = 10.0
_TMP = ".tmp."
HEAD_SUFFIX = ".head"  # "<file name>.head": the head of an instance (no instance name ends so)


def digest(key: str, data) -> bytes:
    """Of the entry's name and bytes: a file moved to another name fails too."""
    h = xxhash.xxh3_128(key.encode())
    h.update(data)
    return h.digest()


class InstanceCache:
    def __init__(
        self,
        root: Path,
        size_limit: int,
        blocks=None,
        warn: Callable[[str, Exception], None] | None = None,
    ):
        self.root = Path(root)
        self._root = str(self.root)
        self.size_limit = size_limit
        self.blocks = blocks  # the block cache beside it (cache.BlockCache), under the same cap and LRU order
        self.corrupt = 0
        self.usable = True
        self._lock = threading.Lock()
        self._present: set[str] = set()  # "<series>/<name>", as far as this process knows
        # Entries this process wrote (their bytes checked against the origin) or checked, by inode number and
        # size: a later open of the same file needs no second pass over its bytes.
        self._checked_files: dict[str, tuple[int, int]] = {}
        self._touched: list[str] = []
        self._volume = 0  # bytes, as of the last scan plus what this process wrote since
        self._written_since_scan = 0
        self._scanned_at = 0.0
        self._blocks_seen = 0  # the block cache's footprint at the last upkeep
        self._warned: set[str] = set()
        self._warn = warn or self._warn_once
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._off("create", e)

    def _off(self, what: str, err: OSError) -> None:
        if err.errno in (errno.ENOTSUP, errno.EROFS, errno.EACCES, errno.EPERM) or what == "create":
            self.usable = False
        self._warn(what, err)

    def _warn_once(self, what: str, err: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("instance cache %s failed in %s (%s); reads go on uncached", what, self.root, err)

    def path(self, series_uuid: str, name: str) -> Path:
        return self.root / series_uuid / name

    # -- the read side

    def has(self, series_uuid: str, name: str) -> bool:
        key = f"{series_uuid}/{name}"
        return key in self._present or os.path.exists(f"{self._root}/{key}")

    # -- claims: one process of those sharing the directory fetches an instance; the others wait for its file

    def _claim_path(self, series_uuid: str, name: str) -> str:
        return f"{self._root}/{series_uuid}/{_TMP}{name}.claim"

    def claim(self, series_uuid: str, name: str) -> bool:
        """Take the fetch of an instance, unless another process holds it: a file created exclusively beside
        the instance (a syscall, not a database write: this runs before every GET of a small file)."""
        if not self.usable:
            return True
        path = self._claim_path(series_uuid, name)
        for _ in range(3):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                return True
            except FileExistsError:
                try:
                    if time.time() - os.stat(path).st_mtime < CLAIM_STALE_SECONDS:
                        return False
                    os.unlink(path)  # stale: its owner is gone
                except FileNotFoundError:
                    pass
            except FileNotFoundError:  # the series has no directory yet
                with contextlib.suppress(FileExistsError):
                    os.mkdir(f"{self._root}/{series_uuid}")
            except OSError:
                return True  # claims are an economy: without one, fetch
        return True

    def claimed(self, series_uuid: str, name: str) -> bool:
        return os.path.exists(self._claim_path(series_uuid, name))

    def release(self, series_uuid: str, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._claim_path(series_uuid, name))

    def get(self, series_uuid: str, name: str, size: int) -> bytes | None:
        """The instance's bytes if the entry is whole and intact, else None (a damaged entry is deleted)."""
        got = self._checked(series_uuid, name, size, keep_open=False)
        return None if got is None else got[1]

    def open_checked(self, series_uuid: str, name: str, size: int) -> int | None:
        """A read-only descriptor of the entry, once its bytes were checked (a FUSE passthrough backing file),
        or None. The caller closes it."""
        got = self._checked(series_uuid, name, size, keep_open=True)
        return None if got is None else got[0]

    def open_known(self, series_uuid: str, name: str, size: int) -> int | None:
        """Like open_checked, without reading the bytes, for an entry this process wrote or checked before and
        that is still the same file (inode number and size); None otherwise. Quick enough for the event loop
        when the file's metadata is in memory: an open and an fstat."""
        key = f"{series_uuid}/{name}"
        known = self._checked_files.get(key)
        if known is None or known[1] != size or not self.usable:
            return None
        try:
            fd = os.open(self.root / key, os.O_RDONLY)
        except OSError:
            self._checked_files.pop(key, None)
            return None
        try:
            st = os.fstat(fd)
        except OSError:
            st = None
        if st is None or (st.st_ino, st.st_size) != known:
            os.close(fd)
            self._checked_files.pop(key, None)
            return None
        self._touched.append(key)
        return fd

    def _checked(self, series_uuid: str, name: str, size: int, keep_open: bool) -> tuple[int, bytes] | None:
        if not self.usable:
            return None
        key = f"{series_uuid}/{name}"
        path = f"{self._root}/{key}"  # a str, not a Path: this runs for every cached open
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
        except PermissionError:  # O_NOATIME needs the file's owner
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._present.discard(key)
            return None
        except OSError as e:
            self._off("read", e)
            return None
        good = False
        try:
            st = os.fstat(fd)  # before `good`: an error here must still close fd
            chunks, n = [], 0
            while n < size and st.st_size == size:  # a longer or shorter entry is not read at all
                chunk = os.read(fd, size - n)
                if not chunk:
                    break
                chunks.append(chunk)
                n += len(chunk)
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            try:
                stored = os.getxattr(fd, XATTR)
            except OSError:
                stored = b""
            ino = st.st_ino
            good = st.st_size == size and len(data) == size and stored == digest(key, data)
        except OSError as e:
            self._off("read", e)
            return None
        finally:
            if not (good and keep_open):
                os.close(fd)
        if not good:
            self.corrupt += 1
            log.warning("cached instance %s is damaged; dropped and refetched", key)
            with contextlib.suppress(OSError):
                os.unlink(self.root / key)
            self._present.discard(key)
            return None
        self._present.add(key)
        self._touched.append(key)
        self._checked_files[key] = (ino, size)
        return fd, data

    # -- the write side

    def put(self, series_uuid: str, name: str, data, sync: bool = True) -> None:
        """Store an entry atomically: temporary file, digest, fsync (if `sync`), rename."""
        if not self.usable:
            return
        key = f"{series_uuid}/{name}"
        directory = self.root / series_uuid
        tmp = directory / f"{_TMP}{name}.{os.getpid()}.{threading.get_ident()}"
        try:
            directory.mkdir(exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.setxattr(fd, XATTR, digest(key, data))
                if sync:
                    os.fsync(fd)
                ino = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            os.rename(tmp, directory / name)
            self._checked_files[key] = (ino, len(data))
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            self._off("write", e)
            return
        with self._lock:
            if key not in self._present:
                self._present.add(key)
                self._volume += len(data)
                self._written_since_scan += len(data)
            over = self._volume + self._blocks_seen > self.size_limit
        if over:  # in this writer's thread, off the read path: the cap is not overshot until the next upkeep
            self.evict()

    def discard(self, series_uuid: str, name: str) -> None:
        """Delete an entry this process knows of (no syscall for one it does not)."""
        key = f"{series_uuid}/{name}"
        if key in self._present:
            with contextlib.suppress(OSError):
                os.unlink(f"{self._root}/{key}")
            self._present.discard(key)
            self._checked_files.pop(key, None)

    # -- upkeep, in the background

    def keep(self, final: bool = False) -> None:
        """Note the files read since the last call as recently used; evict if the cap is exceeded. `final`
        (at close): if this process wrote since its last scan, wait for another eviction in progress, then
        scan, so what it wrote is counted. A process that only read (a DataLoader worker) skips that scan."""
        keys, self._touched = self._touched, []
        for key in dict.fromkeys(keys):
            with contextlib.suppress(OSError):
                os.utime(self.root / key)
        if final and not self._written_since_scan and not getattr(self.blocks, "opened", False):
            return  # this process only read instance files: it cannot have put the cache over its cap
        now = time.monotonic()
        over = self._volume + self._blocks_footprint() > self.size_limit
        stale = self._written_since_scan and now - self._scanned_at > RESCAN_SECONDS
        if final and not self._written_since_scan and not over:
            return
        if final or over or stale or not self._scanned_at:
            self.evict(wait=final)

    def evict(self, wait: bool = False) -> int:
        """Scan the tier and delete the least recently used files beyond the cap; the bytes deleted."""
        if not self.usable:
            return 0
        try:
            lock = os.open(self.root / ".evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self._off("evict", e)
            return 0
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:  # another process or thread is evicting: take its result at the next scan
                return 0
            entries, total = self._scan()
            held = total + self._blocks_footprint()
            freed = 0
            if held > self.size_limit:
                freed = self._free(sorted(entries), held - self.size_limit * HEADROOM)
            with self._lock:
                self._volume = total - freed
                self._written_since_scan = 0
                self._scanned_at = time.monotonic()
            return freed
        finally:
            os.close(lock)

    def _blocks_footprint(self) -> int:
        self._blocks_seen = self.blocks.footprint() if self.blocks is not None else 0
        return self._blocks_seen

    def _free(self, files: list[tuple[float, int, str]], need: float) -> int:
        """Delete the least recently used files and blocks, merged in one order, until `need` bytes are
        freed; the bytes of files deleted."""
        page, offset, blocks = [], 0, []
        i = freed = files_freed = 0
        while freed < need:
            if not page and self.blocks is not None:
                page = self.blocks.lru_page(offset, 1000)[::-1]
                offset += len(page)
            if i < len(files) and (not page or files[i][0] <= page[-1][0]):
                _, size, key = files[i]
                i += 1
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.root / key)
                    freed += size
                    files_freed += size
                self._present.discard(key)
                self._checked_files.pop(key, None)
            elif page:
                _, size, key = page.pop()
                blocks.append(key)
                freed += size
            else:
                break
        if blocks:
            self.blocks.delete_keys(blocks)
        return files_freed

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        entries, total, now = [], 0, time.time()
        present = set()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as series:
            for d in series:
                if not d.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(d.path) as files:
                    for f in files:
                        try:
                            st = f.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        if f.name.startswith(_TMP):  # left by a crash, or being written now
                            if now - st.st_mtime > STALE_TMP_SECONDS:
                                with contextlib.suppress(OSError):
                                    os.unlink(f.path)
                            continue
                        key = f"{d.name}/{f.name}"
                        entries.append((st.st_mtime, st.st_size, key))
                        present.add(key)
                        total += st.st_size
        self._present = present
        for key in [k for k in self._checked_files if k not in present]:
            self._checked_files.pop(key, None)
        return entries, total

    # -- for stats and `idcfs cache clear`

    def volume(self) -> int:
        if not self._scanned_at:
            _, self._volume = self._scan()
            self._scanned_at = time.monotonic()
        return self._volume

    def __len__(self) -> int:
        """Instances held (heads are not counted)."""
        self.volume()
        return sum(not key.endswith(HEAD_SUFFIX) for key in self._present)

    def heads(self) -> int:
        self.volume()
        return sum(key.endswith(HEAD_SUFFIX) for key in self._present)

    def clear(self) -> int:
        entries, _ = self._scan()
        for _, _, key in entries:
            with contextlib.suppress(OSError):
                os.unlink(self.root / key)
        with self._lock:
            self._present.clear()
            self._checked_files.clear()
            self._volume = 0
        return len(entries)
