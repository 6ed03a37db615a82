"""The Python API: mount from a notebook or a training script, without a shell."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path


class MountFailed(RuntimeError):
    """`idcfs mount` refused or failed; the message is its one-line error."""


@contextlib.contextmanager
def mounted(
    mountpoint: str | os.PathLike,
    *,
    filter: str | None = None,
    manifest: str | os.PathLike | None = None,
    collections: Sequence[str] = (),
    template: str | None = None,
    layout: str | None = None,
    source: str = "aws",
    s3_endpoint: str | None = None,
    gcs_endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_size: str | None = None,
    timeout: float | None = None,
) -> Iterator[Path]:
    """Mount IDC at `mountpoint` in a background daemon, yield its root, unmount on exit.

    The arguments are those of `idcfs mount` (see `idcfs mount --help`). A missing mountpoint is
    created, and removed again on exit. The daemon is a separate process, so the mount works from a
    notebook and survives forks of the caller (DataLoader workers read it as plain files).

        with idcfs.mounted("/tmp/idc", filter="collection_id = 'rider_pilot'") as root:
            files = sorted(root.rglob("*.dcm"))
    """
    root = Path(os.path.abspath(os.path.expanduser(mountpoint)))
    created = not root.exists()
    if created:
        root.mkdir(parents=True)
    args = [str(root), "--source", source]
    for flag, value in (
        ("--filter", filter),
        ("--manifest", manifest),
        ("--template", template),
        ("--layout", layout),
        ("--s3-endpoint", s3_endpoint),
        ("--gcs-endpoint", gcs_endpoint),
        ("--cache-dir", cache_dir),
        ("--cache-size", cache_size),
        ("--timeout", timeout),
    ):
        if value is not None:
            args += [flag, str(value)]
    for c in collections:
        args += ["--collection", c]
    r = subprocess.run([sys.executable, "-m", "idcfs", "mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        if created:
            root.rmdir()
        raise MountFailed(r.stderr.strip().removeprefix("idcfs: error: ") or f"idcfs mount exited {r.returncode}")
    try:
        yield root
    finally:
        # A reader still holding a file open keeps the mount busy: detach it then, as `umount -l` does.
        r = subprocess.run([sys.executable, "-m", "idcfs", "unmount", str(root)], capture_output=True, text=True)
        if r.returncode != 0:
            subprocess.run([sys.executable, "-m", "idcfs", "unmount", "--lazy", str(root)], capture_output=True)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
