"""The Python API: mount from a notebook or a training script, without a shell."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class MountFailed(RuntimeError):
    """`idcfs mount` refused or failed; the message is its one-line error."""


@contextlib.contextmanager
def mounted(mountpoint: str | os.PathLike, **options: Any) -> Iterator[Path]:
    """Mount IDC at `mountpoint` in a background daemon, yield its root, unmount on exit.

    Options are those of `idcfs mount`, as keywords (see idcfs.options.Options): filter, manifest,
    collections, licenses, idc_version, template or layout, source, s3_endpoint, gcs_endpoint, index,
    cache_dir, cache_size, memory, timeout, passthrough, allow_other. A bad one raises ValueError before
    anything is mounted; a mount that fails raises MountFailed. A missing mountpoint is created, and
    removed again on exit. The daemon is a separate process, so the mount works from a notebook and
    survives forks of the caller (DataLoader workers read it as plain files).

        with idcfs.mounted("/tmp/idc", filter="collection_id = 'rider_pilot'") as root:
            files = sorted(root.rglob("*.dcm"))
    """
    from .errors import as_keyword
    from .options import Options

    checked = Options.make(as_keyword, **options)
    checked.tree_template()  # a bad template or layout is a ValueError here too, not a failed mount
    flags = checked.to_argv()
    root = Path(os.path.abspath(os.path.expanduser(mountpoint)))
    created = not root.exists()
    if created:
        root.mkdir(parents=True)
    args = [str(root), *flags, "--terms", "keywords"]
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
