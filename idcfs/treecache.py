"""Sorted trees kept between mounts: `CACHE_DIR/trees/<key>.arrow`, one per index and selection.

Building the tree of the whole index takes seconds; a tree file is memory-mapped by every later mount of the
same index and selection, so its pages are shared with the page cache and loaded only where the tree is
walked. A file is written to a temporary name and renamed (concurrent mounts never see a torn one). Files are
capped at TREES_CAP bytes together, least recently mapped dropped first; a mount that still maps a dropped
file keeps reading it (POSIX), and the next mount of that selection builds it again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

TREES_CAP = 1 << 30  # a full-index tree is about 200 MB; a cohort's, kilobytes
SUFFIX = ".arrow"
STALE_TMP_SECONDS = 600.0


def load(path: Path | None) -> pa.RecordBatch | None:
    """The tree stored at path, memory-mapped, or None if there is none or it is unreadable."""
    import pyarrow as pa  # here: `idcfs cache` and `idcfs mount`'s checks use this module without it

    if path is None or not path.exists():
        return None
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        if reader.num_record_batches != 1:
            raise pa.ArrowInvalid(f"{reader.num_record_batches} record batches, not 1")
        batch = reader.get_batch(0)
    except (OSError, pa.ArrowInvalid) as e:
        log.warning("ignoring unreadable tree cache %s: %s", path, e)
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used
    return batch


def save(path: Path | None, batch: pa.RecordBatch, cap: int | None = None) -> Path | None:
    """Store the tree at path atomically, then keep the directory under cap (default TREES_CAP); the path, or
    None if not stored."""
    import pyarrow as pa

    if path is None:
        return None
    cap = TREES_CAP if cap is None else cap
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.warning("cannot cache the tree in %s: %s", path.parent, e)
        return None
    evict(path.parent, cap, keep=path)
    return path


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of the tree files, oldest first; stale temporary files are removed."""
    out, now = [], time.time()
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as it:
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if e.name.endswith(SUFFIX):
                out.append((st.st_mtime, st.st_size, Path(e.path)))
            elif ".tmp" in e.name and now - st.st_mtime > STALE_TMP_SECONDS:  # left by a crash
                with contextlib.suppress(OSError):
                    os.unlink(e.path)
    return sorted(out)


def evict(root: Path, cap: int, keep: Path | None = None) -> int:
    """Delete the least recently used tree files until the rest fit in cap (never `keep`); how many."""
    entries = _entries(root)
    total, dropped = sum(size for _, size, _ in entries), 0
    for _, size, path in entries:
        if total <= cap:
            break
        if path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            dropped += 1
        total -= size
    return dropped


def usage(root: Path) -> tuple[int, int]:
    """(tree files, bytes) under root."""
    entries = _entries(root)
    return len(entries), sum(size for _, size, _ in entries)


def clear(root: Path) -> int:
    """Delete every tree file; how many."""
    return evict(root, -1)
