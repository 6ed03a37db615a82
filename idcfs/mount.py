"""Mount lifecycle: check the mountpoint, run pyfuse3 on trio, unmount on signals.

pyfuse3 and trio are imported where a mount is served: `idcfs mount` itself only checks the mountpoint
before it starts the daemon, and importing them took a tenth of a second of every mount's start.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


class MountError(ValueError):
    """The mountpoint cannot be used: the message says why."""


def is_stale(path: Path) -> bool:
    # stat() may be answered from the kernel's attribute cache; opening the directory reaches the daemon.
    try:
        with os.scandir(path) as it:
            next(it, None)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def fusermount_unmount(path: Path, lazy: bool = False) -> subprocess.CompletedProcess:
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    cmd = [tool, "-u"] + (["-z"] if lazy else []) + [str(path)]
    return subprocess.run(cmd, capture_output=True, text=True)


def check_mountpoint(path: Path) -> Path:
    """Refuse missing, non-directory, busy or non-empty mountpoints; clean up stale ones."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if is_stale(path):
        log.info("cleaning up stale mount at %s", path)
        fusermount_unmount(path, lazy=True)
        if is_stale(path):
            raise MountError(
                f"mountpoint {path} is a stale FUSE mount that could not be cleaned: run fusermount3 -uz {path}"
            )
    if not path.exists():
        raise MountError(f"mountpoint {path} does not exist: create it with mkdir -p {path}")
    if not path.is_dir():
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"mountpoint {path} is already a mount point: unmount it first (idcfs unmount {path})")
    try:
        if any(os.scandir(path)):
            raise MountError(f"mountpoint {path} is not empty: mount on an empty directory")
    except PermissionError:
        raise MountError(f"mountpoint {path} is not readable") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MountError(f"mountpoint {path} is not writable by you, so you cannot mount on it")
    return path


def fuse_options(allow_other: bool = False, fsname: str = "idcfs") -> set[str]:
    import pyfuse3

    opts = set(pyfuse3.default_options)
    opts |= {f"fsname={fsname}", "subtype=idcfs", "ro", "noatime"}
    if allow_other:
        opts.add("allow_other")
    return opts


def serve(ops, mountpoint: Path, on_ready=None, allow_other: bool = False, fsname: str = "idcfs") -> None:
    """Mount, call on_ready(), serve until unmounted or signalled, then unmount.

    ops may have attach(nursery), to run background work in the mount's
    nursery, and close(), called once serving has stopped.
    """
    import pyfuse3
    import trio

    pyfuse3.init(ops, str(mountpoint), fuse_options(allow_other, fsname))
    try:
        if on_ready is not None:
            on_ready()
        trio.run(_main, ops, mountpoint)
    finally:
        pyfuse3.close(unmount=True)
        if hasattr(ops, "close"):
            ops.close()


def notify_systemd(message: str) -> None:
    """Tell systemd (Type=notify units) about the mount: "READY=1", "STOPPING=1". No-op elsewhere.

    The protocol is one datagram to $NOTIFY_SOCKET; '@' names an abstract socket.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    import socket

    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), address)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", address, e)


READ_AHEAD_KB = 1024


def raise_readahead(mountpoint: Path, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel send reads of up to 1 MiB instead of 128 KiB (fewer, larger FUSE requests).

    Needs write access to the mount's /sys/class/bdi entry (root); otherwise nothing changes.
    The device number comes from mountinfo (a stat() here would wait on this daemon). It must run
    after the kernel has processed the INIT reply, which sets the value from the negotiated maximum.
    """
    try:
        with open("/proc/self/mountinfo") as f:
            devs = [line.split()[2] for line in f if line.split()[4] == str(mountpoint)]
        if devs:
            with open(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb", "w") as f:
                f.write(str(kb))
    except OSError as e:
        log.debug("read_ahead_kb stays as it is: %s", e)


async def _main(ops, mountpoint: Path) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(_raise_readahead_after_init, mountpoint)
        if hasattr(ops, "attach"):
            ops.attach(nursery)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _raise_readahead_after_init(mountpoint: Path) -> None:
    import trio

    await trio.sleep(0.5)
    await trio.to_thread.run_sync(raise_readahead, mountpoint)


async def _stop_on_signal(scope) -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for sig in signals:
            log.info("received signal %d, unmounting", sig)
            notify_systemd("STOPPING=1")
            pyfuse3.terminate()
            return


def unmount(path: Path) -> None:
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if is_stale(path):
        fusermount_unmount(path, lazy=True)
        return
    if not os.path.ismount(path):
        raise MountError(f"{path} is not mounted")
    r = fusermount_unmount(path)
    if r.returncode != 0:
        raise MountError(f"cannot unmount {path}: {r.stderr.strip() or 'busy'} (close files using it, or use --lazy)")
