"""Command line: idcfs mount | unmount | sandbox.

Bad input gets one line on stderr and exit status 2, before anything is mounted.
`idcfs mount` without --foreground starts the daemon as a child process and
returns once the child reports the mount ready (or fails, with its message).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from . import __version__

log = logging.getLogger("idcfs")

EXIT_USAGE = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _default_cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("IDCFS_CACHE_DIR") or platformdirs.user_cache_dir("idcfs"))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="idcfs", description="Mount the NCI Imaging Data Commons as a read-only filesystem.")
    p.add_argument("--version", action="version", version=f"idcfs {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    m = sub.add_parser(
        "mount",
        help="mount IDC at MOUNTPOINT",
        description="Mount IDC as collection/patient/study/series/instance files. "
        "Paths match `idc download` with the same template.",
    )
    m.add_argument("mountpoint", type=Path)
    m.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground (default: daemonize)")
    m.add_argument("--source", choices=("aws", "gcs"), default="aws", help="bucket provider to read (default aws)")
    m.add_argument(
        "--s3-endpoint",
        default=os.environ.get("IDCFS_S3_ENDPOINT"),
        metavar="URL",
        help="S3 endpoint (env IDCFS_S3_ENDPOINT; default https://s3.amazonaws.com)",
    )
    m.add_argument(
        "--gcs-endpoint",
        default=os.environ.get("IDCFS_GCS_ENDPOINT"),
        metavar="URL",
        help="GCS endpoint (env IDCFS_GCS_ENDPOINT; default https://storage.googleapis.com)",
    )
    m.add_argument(
        "--template",
        default=None,
        metavar="T",
        help="directory template, as idc-index's dirTemplate "
        "(default %%collection_id/%%PatientID/%%StudyInstanceUID/%%Modality_%%SeriesInstanceUID)",
    )
    m.add_argument("--filter", metavar="SQL", help="WHERE clause over the index columns, e.g. \"Modality='CT'\"")
    m.add_argument("--manifest", type=Path, metavar="FILE", help="s5cmd manifest or list of series UIDs/UUIDs")
    m.add_argument(
        "--collection", action="append", default=[], metavar="ID", help="mount only this collection (repeatable)"
    )
    m.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help="cache directory (default: user cache dir)"
    )
    m.add_argument(
        "--index", type=Path, default=None, metavar="PARQUET", help="index parquet (default: idc-index-data's)"
    )
    m.add_argument("--allow-other", action="store_true", help="let other users see the mount (needs user_allow_other)")
    m.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="default WARNING",
    )
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    u = sub.add_parser("unmount", help="unmount an idcfs mount", description="Unmount an idcfs mount.")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")

    s = sub.add_parser(
        "sandbox",
        help="run local S3 and GCS servers with generated DICOM for real index rows",
        description="Start a moto S3 server and fake-gcs-server on 127.0.0.1 with a generated cohort. "
        "Needs the sandbox extra: pip install 'idcfs[sandbox]'.",
    )
    s.add_argument("--dir", type=Path, default=None, help="where generated data is kept (default: CACHE/sandbox)")
    s.add_argument("--s3-port", type=int, default=0, help="default: a free port")
    s.add_argument("--gcs-port", type=int, default=0, help="default: a free port")
    s.add_argument("--state", type=Path, default=None, help="write endpoints and paths as JSON here when ready")
    return p


# ---------------------------------------------------------------------------
# mount


def _check_url(name: str, url: str | None) -> None:
    if url is None:
        return
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise UsageError(f"bad {name} {url!r}: give an http:// or https:// URL")


def _check_cache_dir(path: Path) -> Path:
    path = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"cache directory {path} is not usable ({e.strerror or e}): pass a writable --cache-dir"
        ) from None
    return path


def _validate_mount_args(args) -> None:
    from .mount import MountError, check_mountpoint

    _check_url("--s3-endpoint", args.s3_endpoint)
    _check_url("--gcs-endpoint", args.gcs_endpoint)
    args.cache_dir = _check_cache_dir(args.cache_dir or _default_cache_dir())
    if args.index is not None and not args.index.is_file():
        raise UsageError(f"--index {args.index} is not a file")
    if args.manifest is not None and not args.manifest.is_file():
        raise UsageError(f"--manifest {args.manifest} is not a file")
    try:
        args.mountpoint = check_mountpoint(args.mountpoint)
    except MountError as e:
        raise UsageError(str(e)) from None


def _daemonize(argv: list[str], args) -> int:
    """Run `idcfs mount --foreground` in a new session; wait until it says ready."""
    read_fd, write_fd = os.pipe()
    log_path = args.cache_dir / "idcfs.log"
    child_argv = [sys.executable, "-m", "idcfs", *argv, "--foreground", "--ready-fd", str(write_fd)]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            child_argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as r:
        message = r.read().strip()
    if message == "ready":
        return 0
    if message.startswith("usage:"):
        print(f"idcfs: error: {message[6:].strip()}", file=sys.stderr)
        proc.wait()
        return EXIT_USAGE
    rc = proc.wait()
    print(f"idcfs: error: {message or f'mount failed (exit {rc})'}; log: {log_path}", file=sys.stderr)
    return 1


def _report(fd: int | None, message: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_mount(args, argv: list[str]) -> int:
    _setup_logging(args.log_level)
    try:
        _validate_mount_args(args)
    except UsageError as e:
        if args.ready_fd is not None:
            _report(args.ready_fd, f"usage: {e}")
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.foreground:
        return _daemonize(argv, args)

    from .namespace import DEFAULT_TEMPLATE, Namespace, Selection, SelectionError

    t0 = time.monotonic()
    try:
        index = args.index or _default_index()
        selection = Selection(filter=args.filter, collections=tuple(args.collection), manifest=args.manifest)
        ns = Namespace(index, args.template or DEFAULT_TEMPLATE, selection, cache_dir=args.cache_dir)
    except SelectionError as e:
        _report(args.ready_fd, f"usage: {e}")
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log.info("namespace: %d series, %d directories in %.2fs", ns.num_series, ns.num_dirs, time.monotonic() - t0)

    from .fs import IdcOperations
    from .mount import serve
    from .store import ObjectStore, drop_credentials

    drop_credentials()
    store = ObjectStore(args.source, args.s3_endpoint, args.gcs_endpoint)
    ops = IdcOperations(ns, store, mtime_ns=int(Path(index).stat().st_mtime) * 1_000_000_000)

    def ready():
        log.info("mounted %s at %s (%.2fs)", index, args.mountpoint, time.monotonic() - t0)
        _report(args.ready_fd, "ready")
        if args.ready_fd is not None:
            os.dup2(os.open(os.devnull, os.O_RDWR), 0)

    try:
        serve(ops, args.mountpoint, on_ready=ready, allow_other=args.allow_other)
    except RuntimeError as e:  # pyfuse3.init failure
        _report(args.ready_fd, f"cannot mount: {e}")
        print(f"idcfs: error: cannot mount {args.mountpoint}: {e}", file=sys.stderr)
        return 1
    return 0


def _default_index() -> Path:
    import idc_index_data

    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def cmd_unmount(args) -> int:
    from .mount import MountError, fusermount_unmount, unmount

    try:
        if args.lazy:
            fusermount_unmount(args.mountpoint, lazy=True)
        else:
            unmount(args.mountpoint)
    except MountError as e:
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def cmd_sandbox(args) -> int:
    _setup_logging("INFO")
    try:
        from .sandbox import run_sandbox
    except ImportError as e:
        print(
            f"idcfs: error: the sandbox needs extra packages ({e.name}): pip install 'idcfs[sandbox]'", file=sys.stderr
        )
        return EXIT_USAGE
    return run_sandbox(args.dir or _default_cache_dir() / "sandbox", args.s3_port, args.gcs_port, args.state)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "mount":
        return cmd_mount(args, argv)
    if args.command == "unmount":
        return cmd_unmount(args)
    if args.command == "sandbox":
        return cmd_sandbox(args)
    return EXIT_USAGE
