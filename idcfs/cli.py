"""Command line: idcfs mount | unmount | stats | cache | prefetch | info | cite | sandbox, and mount.idcfs
(mount_helper, the mount(8) helper: see fstab.py).

Bad input gets one line on stderr and exit status 2, before anything is mounted.
`idcfs mount` without --foreground starts the daemon as a child process and
returns once the child reports the mount ready (or fails, with its message).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .errors import UsageError, as_flag, as_keyword
from .options import (
    DEFAULT_CACHE_SIZE,
    PASSTHROUGH,
    REPEATED,
    SELECTION_OPTIONS,
    SOURCES,
    Options,
    build_engine,
    default_cache_dir,
    release,
    seconds,
)

log = logging.getLogger("idcfs")

EXIT_USAGE = 2
WARM_LISTS_UP_TO = 2000  # series; a larger mount (the whole index, browsed) loads the LIST client on its first LIST


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _argument_type(parse):
    """An options value parser as an argparse type: argparse prints only ArgumentTypeError's message."""

    def parsed(text: str):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parsed


_seconds = _argument_type(seconds)
_release = _argument_type(release)


def _add_selection_flags(p: argparse.ArgumentParser, verb: str) -> None:
    """--filter, --manifest, --collection, --idc-version, --license: which series mount, prefetch and cite take."""
    p.add_argument("--filter", metavar="SQL", help="WHERE clause over the index columns, e.g. \"Modality='CT'\"")
    p.add_argument("--manifest", type=Path, metavar="FILE", help="s5cmd manifest or list of series UIDs/UUIDs")
    p.add_argument(
        "--collection", action="append", default=[], metavar="ID", help=f"{verb} only this collection (repeatable)"
    )
    p.add_argument(
        "--idc-version",
        type=_release,
        default=None,
        metavar="N",
        help=f"{verb} the series as IDC release N served them, earlier versions included (default: the index's)",
    )
    p.add_argument(
        "--license",
        action="append",
        default=[],
        metavar="NAME",
        help=f"{verb} only series under this license_short_name, e.g. 'CC BY 4.0'; 'commercial' stands for every "
        "license that allows commercial use (CC BY, CC0) (repeatable)",
    )


def _selection_given(args) -> dict:
    """The selection flags as Options fields (--collection, repeated, gives collections)."""
    return {name: getattr(args, REPEATED.get(name, name)) for name in SELECTION_OPTIONS}


def _has_selection(args) -> bool:
    return any(v is not None and v != [] for v in _selection_given(args).values())


def _options(args, *names: str, create_cache_dir: bool = True) -> Options:
    """The Options of a command: the selection flags, and `names` (other Options fields) where the command
    has them. Endpoints not given are taken from IDCFS_S3_ENDPOINT/IDCFS_GCS_ENDPOINT."""
    spell = as_keyword if getattr(args, "terms", "flags") == "keywords" else as_flag
    given = _selection_given(args) | {name: getattr(args, name) for name in names}
    return Options.make(spell, allowed=(*SELECTION_OPTIONS, *names), create_cache_dir=create_cache_dir, **given)


class _Version(argparse.Action):
    """--version, with the version looked up only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"idcfs {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="idcfs", description="Mount the NCI Imaging Data Commons as a read-only filesystem.")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
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
    m.add_argument("--source", choices=SOURCES, default=Options.source, help="bucket provider to read (default aws)")
    m.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3 endpoint (env IDCFS_S3_ENDPOINT; default https://s3.amazonaws.com)",
    )
    m.add_argument(
        "--gcs-endpoint",
        metavar="URL",
        help="GCS endpoint (env IDCFS_GCS_ENDPOINT; default https://storage.googleapis.com)",
    )
    layout = m.add_mutually_exclusive_group()
    layout.add_argument(
        "--template",
        default=None,
        metavar="T",
        help="directory template, as idc-index's dirTemplate "
        "(default %%collection_id/%%PatientID/%%StudyInstanceUID/%%Modality_%%SeriesInstanceUID); also "
        "%%StudyDate, %%StudyDescription, %%SeriesNumber, %%SeriesDescription, %%BodyPartExamined, %%instanceCount "
        "and spaces",
    )
    layout.add_argument(
        "--layout",
        choices=("idc", "readable"),
        default=None,
        help="a named template instead of --template: idc (idc download's, the default) or readable "
        "(%%collection_id/%%PatientID/%%StudyDate %%StudyDescription/%%SeriesNumber %%Modality %%SeriesDescription)",
    )
    _add_selection_flags(m, "mount")
    m.add_argument(
        "--cache-dir", type=Path, default=None, metavar="DIR", help="cache directory (default: user cache dir)"
    )
    m.add_argument(
        "--cache-size",
        default=DEFAULT_CACHE_SIZE,
        metavar="SIZE",
        help="cap of the block cache, e.g. 500M, 10G, 2T; 0 turns it off (default 10G)",
    )
    m.add_argument(
        "--memory",
        default=f"{Options.memory >> 20}M",
        metavar="SIZE",
        help="daemon memory for recently read blocks, at least 16M; large-file readahead uses up to a quarter "
        "(default 256M)",
    )
    m.add_argument(
        "--index", type=Path, default=None, metavar="PARQUET", help="index parquet (default: idc-index-data's)"
    )
    m.add_argument(
        "--timeout",
        type=_seconds,
        default=Options.timeout,
        metavar="SECONDS",
        help="longest wait for one origin, retries included; a read fails with EIO after at most twice this, "
        "once per provider (default 30)",
    )
    m.add_argument(
        "--passthrough",
        choices=PASSTHROUGH,
        default=Options.passthrough,
        help="auto: the kernel reads cached instances from their files itself (FUSE passthrough), where the "
        "kernel, the pyfuse3 build (make passthrough) and root allow it; off: the daemon serves every read "
        "(default auto)",
    )
    m.add_argument(
        "--allow-other",
        action="store_true",
        help="let other users read the mount: any local user can then read what it serves and make it fetch "
        "(needs user_allow_other in /etc/fuse.conf; default off)",
    )
    m.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="default WARNING",
    )
    m.add_argument(
        "--log-file", type=Path, default=None, metavar="FILE", help="daemon log (default: CACHE_DIR/idcfs.log)"
    )
    m.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    m.add_argument("--fsname", default="idcfs", help=argparse.SUPPRESS)  # the source in /proc/mounts (mount.idcfs)
    # idcfs.mounted: messages name options as Python keywords, as its caller wrote them
    m.add_argument("--terms", choices=("flags", "keywords"), default="flags", help=argparse.SUPPRESS)

    u = sub.add_parser("unmount", help="unmount an idcfs mount", description="Unmount an idcfs mount.")
    u.add_argument("mountpoint", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")

    st = sub.add_parser(
        "stats",
        help="live counters of a running mount",
        description="Print the counters of a running mount: requests, bytes, cache hits, GETs in flight.",
    )
    st.add_argument("mountpoint", type=Path)
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("-w", "--watch", type=float, default=None, metavar="SECONDS", help="print again every SECONDS")

    c = sub.add_parser("cache", help="inspect or clear the cache directory", description="The persistent cache.")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser)
    csub.required = True
    for name, text in (("stats", "size, entries, hit rate and bytes fetched"), ("clear", "delete everything cached")):
        a = csub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        a.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="default: user cache dir")
        if name == "stats":
            a.add_argument("--json", action="store_true", help="print JSON")
        else:
            a.add_argument("--trees", action="store_true", help="delete only the sorted trees kept for later mounts")

    pf = sub.add_parser(
        "prefetch",
        help="warm the cache for paths in a mount, or for a selection",
        description="Warm the cache before a training run. Give paths inside a running mount (their files are "
        "read through it), or a selection with --manifest/--filter/--collection (downloaded straight into "
        "--cache-dir, no mount needed).",
    )
    pf.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    pf.add_argument("-j", "--jobs", type=int, default=32, help="parallel reads (default 32)")
    _add_selection_flags(pf, "warm")
    pf.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="default: user cache dir")
    pf.add_argument("--source", choices=SOURCES, default=Options.source, help="bucket provider (default aws)")
    pf.add_argument("--s3-endpoint", metavar="URL", help="as for mount")
    pf.add_argument("--gcs-endpoint", metavar="URL", help="as for mount")
    pf.add_argument("--index", type=Path, default=None, metavar="PARQUET")
    pf.add_argument(
        "--timeout", type=_seconds, default=Options.timeout, metavar="SECONDS", help="as for mount (default 30)"
    )
    pf.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser(
        "info",
        help="metadata, licenses and sources of paths in a mount",
        description="Print what the index says about files or directories in a mount: metadata, the "
        "licenses and source DOIs of the series under them, and a warning when they mix licenses. Offline.",
    )
    i.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    i.add_argument("--json", action="store_true", help="print one JSON object per path")

    ci = sub.add_parser(
        "cite",
        help="citations for the data under paths in a mount, or a selection",
        description="Print the citations of the collections and analysis results under PATHs in a mount, "
        "or of a selection (--manifest/--filter/--collection), from the metadata idc-index-data ships. "
        "Offline: where a citation needs a DOI lookup, it says so.",
    )
    ci.add_argument("paths", nargs="*", type=Path, metavar="PATH")
    ci.add_argument("--format", choices=("text", "bibtex"), default="text", help="default text")
    _add_selection_flags(ci, "cite")
    ci.add_argument("--index", type=Path, default=None, metavar="PARQUET")

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


# Origins and cache: what mount and prefetch take besides the selection.
_ORIGIN = ("source", "s3_endpoint", "gcs_endpoint", "index", "cache_dir", "timeout")
_MOUNT = (*_ORIGIN, "template", "layout", "cache_size", "memory", "passthrough", "allow_other")


def _validate_mount_args(args) -> Options:
    """The mount's Options, and its own flags checked (log file, name, mountpoint)."""
    from .mount import MountError, check_mountpoint

    options = _options(args, *_MOUNT)
    args.cache_dir = options.cache_dir
    if args.log_file is not None:
        args.log_file = Path(os.path.abspath(os.path.expanduser(args.log_file)))
        try:
            with open(args.log_file, "ab"):
                pass
        except OSError as e:
            raise UsageError(f"--log-file {args.log_file}: {e.strerror}") from None
    if not args.fsname or "," in args.fsname or any(c.isspace() for c in args.fsname):
        raise UsageError(f"mount name {args.fsname!r} must be one word without commas, e.g. idc")
    try:
        args.mountpoint = check_mountpoint(args.mountpoint)
    except MountError as e:
        raise UsageError(str(e)) from None
    return options


def _daemonize(argv: list[str], args) -> int:
    """Run `idcfs mount --foreground` in a new session; wait, bounded, until it says ready."""
    from .daemon import ready_timeout, start

    try:
        timeout = ready_timeout()
    except ValueError as e:
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    started = start(argv, args.log_file or args.cache_dir / "idcfs.log", args.mountpoint, timeout)
    print(started.line, file=sys.stderr)
    return started.status


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_mount(args, argv: list[str]) -> int:
    from .daemon import Pipe

    _setup_logging(args.log_level)
    pipe = Pipe(args.ready_fd)
    try:
        options = _validate_mount_args(args)
    except UsageError as e:
        pipe.usage(str(e))
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not args.foreground:
        return _daemonize(argv, args)
    try:
        return _serve_mount(options, args, pipe)
    except Exception as e:  # the cause goes to `idcfs mount` in one line, the traceback to the log
        log.exception("mount failed")
        cause = f"{type(e).__name__}: {' '.join(str(e).split())}"
        pipe.failed(cause)
        print(f"idcfs: error: mount failed: {cause}", file=sys.stderr)
        return 1


def _serve_mount(options: Options, args, pipe) -> int:
    t0 = time.monotonic()
    store = options.store()
    probes = _probe_origins(store)
    # The GET clients are built while the tree loads, not on the first read.
    threading.Thread(target=store.warm, name="warm-store", daemon=True).start()
    pipe.phase("loading the tree from the index")
    try:
        index = options.index_file()
        ns = options.namespace()
    except UsageError as e:
        pipe.usage(str(e))
        print(f"idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    log.info("namespace: %d series, %d directories in %.2fs", ns.num_series, ns.num_dirs, time.monotonic() - t0)

    from .fs import IdcOperations
    from .mount import notify_systemd, serve

    pipe.phase(f"opening the cache directory {options.cache_dir}")
    try:
        cache = options.cache()
    except Exception as e:  # a damaged SQLite file, a full disk at start
        msg = (
            f"cache directory {options.cache_dir} is not usable ({e}): "
            f"pass another {options.spell('cache_dir')} or delete it"
        )
        pipe.usage(msg)
        print(f"idcfs: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    pipe.phase("waiting for the origins to answer")
    problem = _origin_problem(store, probes, options)
    if problem and cache.meta.has_listings():  # offline use: what was listed before is served from the cache
        log.warning("%s; serving what the cache holds", problem)
    elif problem:
        cache.close()
        pipe.usage(problem)
        print(f"idcfs: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    mtime_ns = int(Path(index).stat().st_mtime) * 1_000_000_000
    engine = build_engine(options, ns, store, cache)
    ops = IdcOperations(engine, mtime_ns=mtime_ns, passthrough=options.passthrough == "auto")

    def warm_lists():  # a cohort with series never listed: load the LIST client now, not on the first `ls`
        if engine.will_list(WARM_LISTS_UP_TO):
            store.warm_lists()

    threading.Thread(target=warm_lists, name="warm-lists", daemon=True).start()

    served = _served(ns)

    def ready():
        log.info("mounted %s at %s (%.2fs): %s", index, args.mountpoint, time.monotonic() - t0, served)
        if args.ready_fd is None:
            print(f"idcfs: {served}", file=sys.stderr, flush=True)
            notify_systemd(f"READY=1\nSTATUS={served} at {args.mountpoint}")
        else:
            pipe.ready(served)
            os.dup2(os.open(os.devnull, os.O_RDWR), 0)

    pipe.phase(f"mounting {args.mountpoint} with FUSE")
    try:
        serve(ops, args.mountpoint, on_ready=ready, allow_other=options.allow_other, fsname=args.fsname)
    except RuntimeError as e:  # pyfuse3.init failure
        pipe.failed(f"cannot mount {args.mountpoint}: {e}")
        print(f"idcfs: error: cannot mount {args.mountpoint}: {e}", file=sys.stderr)
        return 1
    return 0


def _served(ns) -> str:
    """One line on what a mount serves: the IDC release, how many series, and earlier versions it holds."""
    what = f"IDC {ns.idc_version}" if ns.idc_version else "an index without a release number"
    if ns.release is not None and ns.release != ns.current_version:
        what += f" (an earlier release; the index is v{ns.current_version})"
    if ns.earlier_versions:
        n = ns.earlier_versions
        what += f", with {n} series version{'s' if n > 1 else ''} from earlier releases named by the manifest"
    return f"serving {what}: {ns.num_series:,} series"


def _probe_origins(store) -> dict:
    """Ask each provider's endpoint for any HTTP answer, in threads, while the tree loads."""
    from concurrent.futures import ThreadPoolExecutor

    from .store import unanswered

    pool = ThreadPoolExecutor(len(store.providers), thread_name_prefix="probe")
    probes = {p.name: pool.submit(unanswered, p.endpoint) for p in store.providers}
    pool.shutdown(wait=False)
    return probes


def _origin_problem(store, probes: dict, options: Options) -> str | None:
    """Why the origins cannot serve this mount: the endpoint given for --source does not answer, or none does.

    The other provider is only a fallback: an endpoint given for it that does not answer is logged.
    """
    explicit = {"aws": options.s3_endpoint, "gcs": options.gcs_endpoint}
    flags = {"aws": options.spell("s3_endpoint"), "gcs": options.spell("gcs_endpoint")}
    preferred, *others = store.providers
    if explicit.get(preferred.name):
        reason = probes[preferred.name].result()
        if reason:
            return (
                f"{flags[preferred.name]} {preferred.endpoint} does not answer ({reason}): "
                "check the URL and that the server is up"
            )
        for p in others:
            if explicit.get(p.name) and (reason := probes[p.name].result()):
                log.warning("%s %s does not answer (%s): no fallback to %s", flags[p.name], p.endpoint, reason, p.name)
        return None
    reasons = {p.name: probes[p.name].result() for p in store.providers}
    if all(reasons.values()):
        tried = "; ".join(f"{p.endpoint}: {reasons[p.name]}" for p in store.providers)
        return f"no origin answers ({tried}): check the network, or pass {flags['aws']}/{flags['gcs']}"
    return None


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


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _print_table(d: dict) -> None:
    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, int) and "bytes" in k:
            v = f"{_fmt_bytes(v)} ({v})"
        elif k == "hit_rate" and v is not None:
            v = f"{v:.1%}"
        print(f"{k:<{width}}  {v}")


def cmd_stats(args) -> int:
    import json

    path = Path(os.path.abspath(os.path.expanduser(args.mountpoint)))
    while True:
        try:
            stats = json.loads(os.getxattr(path, "user.idc.stats"))
        except OSError as e:
            print(f"idcfs: error: {path} is not a running idcfs mount ({e.strerror})", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            print(json.dumps(stats), flush=True)
        else:
            _print_table(stats)
        if not args.watch:
            return 0
        time.sleep(args.watch)
        if not args.json:
            print()


def cmd_cache(args) -> int:
    import json

    from .cache import CacheDir

    root = Path(os.path.abspath(os.path.expanduser(args.cache_dir or default_cache_dir())))
    if not root.is_dir():
        print(f"idcfs: error: no cache directory at {root} (pass --cache-dir)", file=sys.stderr)
        return EXIT_USAGE
    cache = CacheDir(root)
    try:
        if args.cache_command == "clear" and args.trees:
            before = cache.stats()["trees_bytes"]
            n = cache.clear_trees()
            print(f"cleared {n} trees from {root} ({_fmt_bytes(before)})")
        elif args.cache_command == "clear":
            before = cache.stats()["size_bytes"]
            cache.clear()
            print(f"cleared {root} ({_fmt_bytes(before)} of blocks)")
        elif args.json:
            print(json.dumps(cache.stats()))
        else:
            _print_table(cache.stats())
    finally:
        cache.close()
    return 0


def cmd_prefetch(args) -> int:
    _setup_logging("WARNING")
    from .prefetch import warm_paths, warm_selection

    if bool(args.paths) == _has_selection(args):
        what = ", not both" if args.paths else " (--manifest/--filter/--collection/--license/--idc-version)"
        print(f"idcfs: error: give paths inside a mount or a selection{what}", file=sys.stderr)
        return EXIT_USAGE
    if args.jobs < 1:
        print("idcfs: error: --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.monotonic()
    if args.paths:
        missing = [str(p) for p in args.paths if not p.exists()]
        if missing:
            print(f"idcfs: error: no such path: {missing[0]}", file=sys.stderr)
            return EXIT_USAGE
        summary = warm_paths(args.paths, args.jobs, progress=not args.quiet)
    else:
        try:
            summary = warm_selection(_options(args, *_ORIGIN), args.jobs, progress=not args.quiet)
        except UsageError as e:
            print(f"idcfs: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    dt = time.monotonic() - t0
    print(
        f"prefetched {summary.files} files, {_fmt_bytes(summary.bytes)} in {dt:.1f}s "
        f"({_fmt_bytes(summary.bytes / dt if dt else 0)}/s); {summary.already_cached} already cached; "
        f"{summary.failed} failed"
    )
    return 1 if summary.failed else 0


def cmd_sandbox(args) -> int:
    _setup_logging("INFO")
    try:
        from .testing.sandbox import run_sandbox
    except ImportError as e:
        print(
            f"idcfs: error: the sandbox needs extra packages ({e.name}): pip install 'idcfs[sandbox]'", file=sys.stderr
        )
        return EXIT_USAGE
    return run_sandbox(args.dir or default_cache_dir() / "sandbox", args.s3_port, args.gcs_port, args.state)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "mount":
        return cmd_mount(args, argv)
    if args.command == "unmount":
        return cmd_unmount(args)
    if args.command == "stats":
        return cmd_stats(args)
    if args.command == "cache":
        return cmd_cache(args)
    if args.command == "prefetch":
        return cmd_prefetch(args)
    if args.command == "sandbox":
        return cmd_sandbox(args)
    if args.command == "info":
        from .info import print_paths

        return print_paths(args.paths, as_json=args.json)
    if args.command == "cite":
        return cmd_cite(args)
    return EXIT_USAGE


def cmd_cite(args) -> int:
    from .info import cite

    options = None
    if _has_selection(args):
        try:  # the sorted selection is kept in the cache directory, as mounts keep it
            options = _options(args, "index", create_cache_dir=False)
        except UsageError as e:
            print(f"idcfs: error: {e}", file=sys.stderr)
            return EXIT_USAGE
    return cite(args.paths, options, args.format)


def mount_helper(argv: list[str] | None = None) -> int:
    """mount.idcfs and mount.fuse.idcfs, the mount(8) helpers (see fstab.py)."""
    from .fstab import OptionError, mount_argv
    from .fstab import build_parser as helper_parser

    parser = helper_parser()
    parser.error = lambda message: parser.exit(EXIT_USAGE, f"mount.idcfs: error: {message}\n")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.namespace is not None:
        print("mount.idcfs: error: -N (mount in another namespace) is not supported", file=sys.stderr)
        return EXIT_USAGE
    try:
        command = mount_argv(args.spec, args.mountpoint, args.options, sloppy=args.sloppy)
    except OptionError as e:
        print(f"mount.idcfs: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.fake:
        build_parser().parse_args(command)  # exits 2 on a bad value, as the mount would
    if args.verbose or args.fake:
        import shlex

        print("idcfs " + shlex.join(command), file=sys.stderr)
    return 0 if args.fake else main(command)
