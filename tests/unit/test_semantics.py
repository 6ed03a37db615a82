"""SEMANTICS.md against the code: its Limits and Options tables, and the numbers in its sentences.

The Limits table names each constant (`readpolicy.HEAD`); CONSTANTS below says where it lives. A number
the code writes as a literal (the 5 s connect cap, the 45-character cut) is read off the code's behaviour,
with fakes: no servers, no FUSE. A constant that moves is a one-line change in CONSTANTS or CODE.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import inspect
import math
import os
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEMANTICS = ROOT / "SEMANTICS.md"
README = ROOT / "README.md"

# Limits-table name -> "module:attribute" (or (path, scale) for a constant kept in other units).
CONSTANTS: dict[str, str | tuple[str, float]] = {
    "fs.TIMEOUT": "idcfs.fs:TIMEOUT",
    "cache.WHOLE_FILE": "idcfs.cache:WHOLE_FILE",
    "cache.BLOCK_SIZE": "idcfs.cache:BLOCK_SIZE",
    "cache.DEFAULT_SIZE": "idcfs.cache:DEFAULT_SIZE",
    "readpolicy.HEAD": "idcfs.readpolicy:HEAD",
    "readpolicy.HEADER_STREAK": "idcfs.readpolicy:HEADER_STREAK",
    "readpolicy.READAHEAD_AFTER": "idcfs.readpolicy:READAHEAD_AFTER",
    "readpolicy.FIRST_WINDOW": "idcfs.readpolicy:FIRST_WINDOW",
    "readpolicy.MAX_WINDOW": "idcfs.readpolicy:MAX_WINDOW",
    "store.MAX_GET": "idcfs.store:MAX_GET",
    "readpolicy.REORDER": "idcfs.readpolicy:REORDER",
    "readpath.MEMORY": "idcfs.readpath:MEMORY",
    "readpolicy.PREFETCH_FILES": "idcfs.readpolicy:PREFETCH_FILES",
    "readpolicy.PREFETCH_BUDGET": "idcfs.readpolicy:PREFETCH_BUDGET",
    "readpath.PREFETCH_CONNECTIONS": "idcfs.readpath:PREFETCH_CONNECTIONS",
    "readpolicy.SCATTERED": "idcfs.readpolicy:SCATTERED",
    "readpolicy.WARM_PER_OPEN": "idcfs.readpolicy:WARM_PER_OPEN",
    "readpath.WARM_CONNECTIONS": "idcfs.readpath:WARM_CONNECTIONS",
    "readpath.CLAIM_SECONDS": "idcfs.readpath:CLAIM_SECONDS",
    "readpath.OTHER_FETCH_WAIT": "idcfs.readpath:OTHER_FETCH_WAIT",
    "readpath.OTHER_FETCH_POLL": "idcfs.readpath:OTHER_FETCH_POLL",
    "readpath.STORE_BACKLOG": "idcfs.readpath:STORE_BACKLOG",
    "instancecache.CLAIM_STALE_SECONDS": "idcfs.instancecache:CLAIM_STALE_SECONDS",
    "instancecache.HEADROOM": "idcfs.instancecache:HEADROOM",
    "instancecache.RESCAN_SECONDS": "idcfs.instancecache:RESCAN_SECONDS",
    "instancecache.STALE_TMP_SECONDS": "idcfs.instancecache:STALE_TMP_SECONDS",
    "treecache.TREES_CAP": "idcfs.treecache:TREES_CAP",
    "listing.HELD_FILES": "idcfs.listing:HELD_FILES",
    "listing.SHRINK_TO": "idcfs.listing:SHRINK_TO",
    "listing.INDEX_BITS": "idcfs.listing:INDEX_BITS",
    "store.DEFAULT_TIMEOUT": "idcfs.store:DEFAULT_TIMEOUT",
    "store.ATTEMPTS": "idcfs.store:ATTEMPTS",
    "store.FAIL_THRESHOLD": "idcfs.store:ObjectStore.FAIL_THRESHOLD",
    "store.DOWN_SECONDS": "idcfs.store:ObjectStore.DOWN_SECONDS",
    "namespace.DESCRIPTION_CHARS": "idcfs.namespace:DESCRIPTION_CHARS",
    "namespace.PIECE_BYTES": "idcfs.namespace:PIECE_BYTES",
    "namespace.LONG_NAME_BYTES": "idcfs.namespace:LONG_NAME_BYTES",
    "background.LOGGED_PER_TASK": "idcfs.background:LOGGED_PER_TASK",
    "daemon.READY_TIMEOUT": "idcfs.daemon:READY_TIMEOUT",
    "options.MIN_CACHE_SIZE_MB": ("idcfs.options:MIN_CACHE_SIZE_MB", 1 << 20),
    "options.MIN_MEMORY_MB": ("idcfs.options:MIN_MEMORY_MB", 1 << 20),
    "options.TIMEOUT_RANGE": "idcfs.options:TIMEOUT_RANGE",
    "fsspec.READ_BLOCK": "idcfs.fsspec:READ_BLOCK",
    "fsspec.DRAIN_SECONDS": "idcfs.fsspec:DRAIN_SECONDS",
}

# The code the behaviour checks drive.
CODE = {
    "build_parser": "idcfs.cli:build_parser",
    "parse_size": "idcfs.cache:parse_size",
    "Operations": "idcfs.fs:IdcOperations",
    "Engine": "idcfs.engine:Engine",
    "Reader": "idcfs.readpath:Reader",
    "Readahead": "idcfs.readpolicy:Readahead",
    "SeriesPrefetch": "idcfs.readpolicy:SeriesPrefetch",
    "Provider": "idcfs.store:_Provider",
    "unanswered": "idcfs.store:unanswered",
    "ready_timeout": "idcfs.daemon:ready_timeout",
    "Namespace": "idcfs.namespace:Namespace",
    "LAYOUTS": "idcfs.namespace:LAYOUTS",
    "PLACEHOLDERS": "idcfs.namespace:PLACEHOLDERS",
    "escape_value": "idcfs.namespace:escape_value",
    "escape_component": "idcfs.namespace:escape_component",
}


def lookup(path: str):
    module, _, attributes = path.partition(":")
    obj = importlib.import_module(module)
    for name in attributes.split("."):
        obj = getattr(obj, name)
    return obj


def const(name: str):
    """A Limits-table constant, in the table's units (bytes, seconds)."""
    where = CONSTANTS[name]
    path, scale = (where, 1) if isinstance(where, str) else where
    try:
        value = lookup(path)
    except (ImportError, AttributeError) as e:
        raise AssertionError(f"{name}: {path} is gone ({e}); update CONSTANTS in {__file__}") from None
    return tuple(v * scale for v in value) if isinstance(value, tuple) else value * scale


def code(name: str):
    try:
        return lookup(CODE[name])
    except (ImportError, AttributeError) as e:
        raise AssertionError(f"{CODE[name]} is gone ({e}); update CODE in {__file__}") from None


# -- reading SEMANTICS.md


def text(path: Path | None = None) -> str:
    return (path or SEMANTICS).read_text()


def prose(path: Path | None = None) -> str:
    """The file with its line breaks and indents made single spaces, so a sentence reads as one line."""
    return " ".join(text(path).split())


def section(heading: str, path: Path | None = None) -> str:
    """The text under a `## heading` (or `### heading`), up to the next heading of that level or above."""
    lines = text(path).splitlines()
    level = heading.split(" ", 1)[0]
    start = lines.index(heading) + 1
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{len(level)}}} ", lines[i])),
        len(lines),
    )
    return "\n".join(lines[start:end])


def table(heading: str) -> list[dict[str, str]]:
    """The first table under a heading, as rows keyed by its header."""
    rows = [line for line in section(heading).splitlines() if line.startswith("|")]
    assert len(rows) > 2, f"no table under {heading!r}"

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header = cells(rows[0])
    return [dict(zip(header, cells(r), strict=True)) for r in rows[2:]]


UNITS = {
    "": 1,
    "bytes": 1,
    "characters": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "s": 1,
    "ms": 1e-3,
    "%": 1e-2,
}


def number(s: str) -> float:
    return float(s.replace(",", ""))


def quantity(cell: str):
    """'8 MiB' -> 8388608, '90 %' -> 0.9, '131,072' -> 131072, '1–600 s' -> (1, 600)."""
    m = re.fullmatch(r"([\d,.]+)(?:[–-]([\d,.]+))?\s*(\S*)", cell.strip().strip("`"))
    assert m and m[3] in UNITS, f"cannot read {cell!r} as a quantity"
    scale = UNITS[m[3]]
    return (number(m[1]) * scale, number(m[2]) * scale) if m[2] else number(m[1]) * scale


def same(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return math.isclose(a, b, rel_tol=1e-9)


# -- the Limits table


def test_limits_table_names_every_constant_once():
    names = [row["Constant"].strip("`") for row in table("## Limits")]
    assert len(names) == len(set(names)), "a constant is named twice"
    assert set(names) == set(CONSTANTS), (
        f"only in SEMANTICS.md: {sorted(set(names) - set(CONSTANTS))}; only here: {sorted(set(CONSTANTS) - set(names))}"
    )


@pytest.mark.parametrize("row", table("## Limits"), ids=lambda row: row["Constant"].strip("`"))
def test_limit_matches_the_code(row):
    name = row["Constant"].strip("`")
    stated, actual = quantity(row["Value"]), const(name)
    assert same(stated, actual), f"SEMANTICS.md says {name} is {row['Value']}; the code has {actual}"


# -- the Options table, against the command line's parser


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = code("build_parser")()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _action(command: str, flag: str) -> argparse.Action:
    return next(a for a in _subparser(command)._actions if flag in a.option_strings)


# Options whose default is also a constant of the Limits table.
DEFAULT_CONSTANTS = {
    "--cache-size": "cache.DEFAULT_SIZE",
    "--memory": "readpath.MEMORY",
    "--timeout": "store.DEFAULT_TIMEOUT",
}
MINIMUM_CONSTANTS = {"--cache-size": "options.MIN_CACHE_SIZE_MB", "--memory": "options.MIN_MEMORY_MB"}
SIZES = {"--cache-size", "--memory"}


@pytest.mark.parametrize("row", table("## Options"), ids=lambda row: f"{row['Command']} {row['Option'].strip('`')}")
def test_option_default_matches_the_parser(row):
    flag, command = row["Option"].strip("`"), row["Command"]
    default, stated = _action(command, flag).default, row["Default"].strip("`")
    if isinstance(default, bool):
        assert stated == ("on" if default else "off")
    elif flag in SIZES:
        parse_size = code("parse_size")
        assert parse_size(stated) == parse_size(default)
        assert parse_size(stated) == const(DEFAULT_CONSTANTS[flag])
    elif isinstance(default, (int, float)):
        assert number(stated) == default
        if flag in DEFAULT_CONSTANTS:
            assert number(stated) == const(DEFAULT_CONSTANTS[flag])
    else:
        assert stated == default


def _parses(command: str, flag: str, value: str, capsys) -> bool:
    argv = [command, "/m", flag, value] if command == "mount" else [command, flag, value]
    try:
        code("build_parser")().parse_args(argv)
    except SystemExit:
        capsys.readouterr()
        return False
    return True


@pytest.mark.parametrize("row", table("## Options"), ids=lambda row: f"{row['Command']} {row['Option'].strip('`')}")
def test_option_accepted_values_match_the_code(row, capsys):
    flag, command, accepted = row["Option"].strip("`"), row["Command"], row["Accepted"]
    action = _action(command, flag)
    if action.choices:
        assert set(re.findall(r"`([^`]+)`", accepted)) == set(action.choices)
    if m := re.fullmatch(r"([\d.]+)–([\d.]+) s", accepted):
        lo, hi = number(m[1]), number(m[2])
        assert (lo, hi) == const("options.TIMEOUT_RANGE")
        assert _parses(command, flag, m[1], capsys) and _parses(command, flag, m[2], capsys)
        assert not _parses(command, flag, str(lo - 0.01), capsys)
        assert not _parses(command, flag, str(hi + 0.01), capsys)
    if m := re.match(r"at least (\d+)M", accepted):
        assert number(m[1]) * (1 << 20) == const(MINIMUM_CONSTANTS[flag])


# -- numbers the code writes as literals, read off its behaviour with fakes


@functools.cache
def attributes() -> dict:
    """What getattr answers for a small file, a large file and a directory; and statfs."""
    import trio

    ops = object.__new__(code("Operations"))
    ops.uid = ops.gid = 0
    ops.mtime_ns = 7 * 10**9
    ops.ns = SimpleNamespace(num_dirs=3)
    ops.engine = SimpleNamespace(stats=lambda: {"files_known": 4})
    small = ops._attr(10, directory=False, size=1000, mtime_ns=0)
    large = ops._attr(11, directory=False, size=const("cache.WHOLE_FILE") + 1, mtime_ns=5 * 10**9)
    directory = ops._attr(1, directory=True)
    statfs = trio.run(ops.statfs, None)
    return {
        "small_blksize": small.st_blksize,
        "large_blksize": large.st_blksize,
        "block_unit": next(u for u in (256, 512, 1024, 4096) if small.st_blocks == -(-1000 // u)),
        "dir_mode": directory.st_mode & 0o7777,
        "file_mode": small.st_mode & 0o7777,
        "nlink": {small.st_nlink, directory.st_nlink},
        "timeouts": {small.entry_timeout, small.attr_timeout, directory.entry_timeout, directory.attr_timeout},
        "index_mtime_for_unknown": small.st_mtime_ns == 7 * 10**9,
        "namemax": statfs.f_namemax,
        "statfs_free": (statfs.f_blocks, statfs.f_bavail, statfs.f_ffree, statfs.f_files),
    }


def test_attributes_and_statfs():
    a = attributes()
    assert a["nlink"] == {1}
    assert a["timeouts"] == {const("fs.TIMEOUT")}
    assert a["index_mtime_for_unknown"]
    assert a["statfs_free"] == (0, 0, 0, 3 + 4)  # no blocks, no free space or inodes; directories plus files held


class _Recorder:
    """A nursery or Background that only records what it is asked to start."""

    def __init__(self):
        self.started: list[tuple] = []

    def start_soon(self, fn, *args, name=None):
        self.started.append((fn, args))

    def args_of(self, function_name: str) -> tuple:
        found = [args for fn, args in self.started if getattr(fn, "__name__", "") == function_name]
        assert found, f"{function_name} was not started"
        return found[0]


@functools.cache
def engine_numbers() -> dict:
    """Concurrency limits, the readahead cap and the upkeep intervals of an engine over fakes."""
    import trio

    engine = code("Engine")(SimpleNamespace(num_dirs=3), SimpleNamespace(), None)
    nursery = _Recorder()
    engine.attach(nursery)
    # Background starts each task inside its boundary: the nursery sees (boundary, (task, args)).
    flush_args = next(args for _, (fn, args) in nursery.started if fn.__name__ == "_flush_counters_every")
    reader = code("Reader")(SimpleNamespace(), SimpleNamespace(), trio.CapacityLimiter(1))
    background = _Recorder()
    reader.attach(background)
    return {
        "gets": engine.reader.limiter.total_tokens,
        "lists": engine.listings.limiter.total_tokens,
        "disk": engine.reader.disk.total_tokens,
        "listing_disk": engine.listings.disk.total_tokens,
        "prefetch": engine.reader.prefetch_limiter.total_tokens,
        "warm": engine.reader.warm_limiter.total_tokens,
        "max_window": code("Readahead")(const("readpath.MEMORY")).max_window,
        "max_window_32M": code("Readahead")(32 << 20).max_window,
        "flush_seconds": flush_args[0],
        "touch_seconds": background.args_of("_touch_every")[0],
    }


def test_engine_limits():
    n = engine_numbers()
    assert (n["prefetch"], n["warm"]) == (const("readpath.PREFETCH_CONNECTIONS"), const("readpath.WARM_CONNECTIONS"))
    assert n["warm"] < n["gets"]  # "fewer than reads a program waits for"
    assert n["max_window"] == min(const("readpolicy.MAX_WINDOW"), const("readpath.MEMORY") // 4)
    assert n["max_window_32M"] == (32 << 20) // 4  # "or a quarter of --memory if that is less"


@functools.cache
def prefetch_depths() -> dict:
    """How far ahead series prefetch reaches after each in-order open, and the largest gap still in order."""
    SeriesPrefetch = code("SeriesPrefetch")
    files = [SimpleNamespace(index=i, size=1000, dir_id=1, series=None) for i in range(400)]
    policy, ahead, depths = SeriesPrefetch(), [], []
    for f in files[:6]:
        ahead += [fetch.file.index for fetch in policy.opened(f, files)]
        if ahead:
            depths.append(max(ahead) - f.index)
    gaps = []
    for gap in range(1, 10):
        policy = SeriesPrefetch()
        policy.opened(files[0], files)
        if policy.opened(files[gap], files):
            gaps.append(gap)
    return {"depths": depths, "gaps": gaps}


def test_prefetch_ramps_up_by_doubling():
    d = prefetch_depths()
    assert d["depths"][-1] == const("readpolicy.PREFETCH_FILES")
    assert all(
        b == min(2 * a, const("readpolicy.PREFETCH_FILES")) for a, b in zip(d["depths"], d["depths"][1:], strict=False)
    )
    assert d["gaps"] == list(range(1, d["gaps"][-1] + 1))


@functools.cache
def client_options() -> dict:
    """The timeouts and retries the GET client of one provider is built with, for a few --timeout values."""
    import obstore.store

    seen = {}
    for timeout in (3.0, 6.0, 15.0, 30.0, 600.0):
        with mock.patch.dict(os.environ), mock.patch.object(obstore.store, "S3Store") as s3:
            code("Provider")("aws", "http://127.0.0.1:9", timeout)._get_client("bucket")
        kw = s3.call_args.kwargs
        seen[timeout] = {
            "connect": kw["client_options"]["connect_timeout"].total_seconds(),
            "read": kw["client_options"]["read_timeout"].total_seconds(),
            "request": kw["client_options"]["timeout"].total_seconds(),
            "retries": kw["retry_config"]["max_retries"],
            "retry_timeout": kw["retry_config"]["retry_timeout"].total_seconds(),
            "backoff": kw["retry_config"]["backoff"],
        }
    return seen


def test_get_timeouts_follow_t():
    for t, o in client_options().items():
        assert o["connect"] == min(t / 3, client_options()[600.0]["connect"]), t
        assert (o["read"], o["request"], o["retry_timeout"]) == (t / 3, t, t), t
        assert o["backoff"]["base"] == 2


@functools.cache
def readable_names() -> dict:
    """Names the readable layout gives a crafted index: cuts, placeholders, escapes and suffixes."""
    # duckdb writes the index, from SQL literals: pyarrow arrays made from Python lists, and duckdb's query
    # parameters, import pandas, which took a second.
    import duckdb

    def sql_string(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    studies = [  # StudyInstanceUID, StudyDate, StudyDescription, SeriesNumber, SeriesDescription
        ("1.2.3.100001", "2001-01-01", "x" * 100, "1", "é" * 60),
        ("1.2.3.4.111111", "2002-02-02", "six", "1", "a"),
        ("1.2.3.4.222222", "2002-02-02", "six", "1", "a"),
        ("1.2.3.4.11111.999999", "2003-03-03", "twelve", "1", "a"),
        ("1.2.3.4.22222.999999", "2003-03-03", "twelve", "1", "a"),
        ("1.2.3.4.1.777777777777", "2004-04-04", "whole", "1", "a"),
        ("1.2.3.4.2.777777777777", "2004-04-04", "whole", "1", "a"),
        ("1.2.3.5", "ü" * 48, "ü" * 48, "1", "a"),
        ("1.2.3.6", None, "  a\t\n b  ", None, "a*b?[c]"),
    ]
    columns = (
        "collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID, Modality, crdc_series_uuid, aws_bucket, "
        "StudyDate, StudyDescription, SeriesNumber, SeriesDescription"
    )
    rows = [
        ("c", "p", uid, f"{uid}.9", "CT", f"00000000-0000-0000-0000-{i:012d}", "idc-open-data", *rest)
        for i, (uid, *rest) in enumerate(studies)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "idc_index.parquet"
        values = ", ".join("(" + ", ".join("NULL" if v is None else sql_string(v) for v in row) + ")" for row in rows)
        with duckdb.connect() as con:
            con.execute(f"COPY (SELECT * FROM (VALUES {values}) AS t({columns})) TO {sql_string(str(index))}")
        ns = code("Namespace")(index, code("LAYOUTS")["readable"])
        [(_, collection)] = ns.subdirs(0)
        [(_, patient)] = ns.subdirs(collection)
        out = {}
        for study_name, study in ns.subdirs(patient):
            [(series_name, _)] = ns.subdirs(study)
            out[study_name] = series_name
        return out


def _suffix_of(name: str, uid: str) -> str:
    tail = name.rsplit(" (", 1)[1].removesuffix(")")
    assert uid.endswith(tail), (name, uid)
    return tail


def test_readable_names():
    names = readable_names()
    assert len(names) == 9  # twins told apart: every study keeps a directory of its own
    assert names["no date a b"] == "no number CT a%2Ab%3F%5Bc%5D"  # placeholders, blanks tidied, globs escaped
    n = _readable_numbers()
    assert n["cut"] == const("namespace.DESCRIPTION_CHARS")


def _readable_numbers() -> dict:
    names = readable_names()
    long_description = next(n for n in names if n.startswith("2001-01-01 "))
    suffix = {
        date: len(_suffix_of(next(n for n in names if n.startswith(date)), uid))
        for date, uid in (
            ("2002-02-02", "1.2.3.4.111111"),
            ("2003-03-03", "1.2.3.4.11111.999999"),
            ("2004-04-04", "1.2.3.4.1.777777777777"),
        )
    }
    assert suffix["2004-04-04"] == len("1.2.3.4.1.777777777777")  # the whole UID
    long_name = next(n for n in names if n.startswith("ü"))
    assert len(long_name.encode()) <= const("namespace.LONG_NAME_BYTES")
    return {
        "cut": len(long_description.removeprefix("2001-01-01 ")),
        "multibyte_cut": len(names[long_description].removeprefix("1 CT ")),
        "suffix6": suffix["2002-02-02"],
        "suffix12": suffix["2003-03-03"],
        "long_cut": len(long_name),
    }


# -- numbers in sentences: (pattern over SEMANTICS.md, read as one line) -> what the code says


def c(name):
    return lambda: const(name)


PROSE = [
    (r"`T` is the `--timeout` of the mount \(default (\d+) s\)", c("store.DEFAULT_TIMEOUT")),
    (
        r"`--timeout T`: (\d+) s by default, from (\d+) to (\d+) s",
        lambda: (const("store.DEFAULT_TIMEOUT"), *const("options.TIMEOUT_RANGE")),
    ),
    (r"names and attributes for (\d+) s", c("fs.TIMEOUT")),
    (r"[Ff]iles? up to (\d+) MiB", lambda: const("cache.WHOLE_FILE") / (1 << 20)),
    (r"over (\d+) MiB", lambda: const("cache.WHOLE_FILE") / (1 << 20)),
    (r"(\d+) KiB block", lambda: const("cache.BLOCK_SIZE") / 1024),
    (r"`st_blksize` is (\d+) for files up to", lambda: attributes()["small_blksize"]),
    (r"Larger files report the (\d+) KiB block", lambda: attributes()["large_blksize"] / 1024),
    (r"in (\d+)-byte units", lambda: attributes()["block_unit"]),
    (
        r"Directories have mode `(\d+)`, files `(\d+)`",
        lambda: (int(oct(attributes()["dir_mode"])[2:]), int(oct(attributes()["file_mode"])[2:])),
    ),
    (r"`st_nlink` is (\d+) for files and directories", lambda: max(attributes()["nlink"])),
    (r"The longest name it reports is (\d+) bytes", lambda: attributes()["namemax"]),
    (r"within (\d+) bytes \(`NAME_MAX`\)", lambda: attributes()["namemax"]),
    (r"shifted left by (\d+) bits", c("listing.INDEX_BITS")),
    (r"up to 2\^(\d+) files per directory", c("listing.INDEX_BITS")),
    (r"A value is cut at (\d+) characters", c("namespace.DESCRIPTION_CHARS")),
    (
        r"over (\d+) bytes \(multi-byte text\) is cut to (\d+) characters",
        lambda: (const("namespace.PIECE_BYTES"), _readable_numbers()["multibyte_cut"]),
    ),
    (r"the UID's last (\d+) characters", lambda: _readable_numbers()["suffix6"]),
    (
        r"Where (\d+) characters do not tell them apart, the last (\d+)",
        lambda: (_readable_numbers()["suffix6"], _readable_numbers()["suffix12"]),
    ),
    (
        r"is over (\d+) bytes is cut to (\d+) characters first",
        lambda: (const("namespace.LONG_NAME_BYTES"), _readable_numbers()["long_cut"]),
    ),
    (r"\((\d+) attempts in all at each provider\)", c("store.ATTEMPTS")),
    (r"(\d+) attempts in all at each provider\.", c("store.ATTEMPTS")),
    (r"once (\d+) small files in a row", c("readpolicy.HEADER_STREAK")),
    (
        r"within the first (\d+) KiB of a small file over (\d+) KiB fetches only those (\d+) KiB",
        lambda: (const("readpolicy.HEAD") / 1024,) * 3,
    ),
    (r"each open 1 to (\d+) places after the last", lambda: prefetch_depths()["gaps"][-1]),
    (
        r"(\d+) at first, doubling up to (\d+) files ahead",
        lambda: (prefetch_depths()["depths"][0], const("readpolicy.PREFETCH_FILES")),
    ),
    (r"at most (\d+) MiB in flight", lambda: const("readpolicy.PREFETCH_BUDGET") / (1 << 20)),
    (r"once (\d+) files of one directory were opened out of order", c("readpolicy.SCATTERED")),
    (r"in the background, (\d+) files per open", c("readpolicy.WARM_PER_OPEN")),
    (r"reads (\d+) MiB in order gets readahead", lambda: const("readpolicy.READAHEAD_AFTER") / (1 << 20)),
    (r"start within (\d+) MiB of where the last one ended", lambda: const("readpolicy.REORDER") / (1 << 20)),
    (
        r"starts at (\d+) MiB and doubles up to (\d+) MiB",
        lambda: (const("readpolicy.FIRST_WINDOW") / (1 << 20), const("readpolicy.MAX_WINDOW") / (1 << 20)),
    ),
    (r"parallel GETs of at most (\d+) MiB", lambda: const("store.MAX_GET") / (1 << 20)),
    (r"within `--memory` \(default (\d+) MiB\)", lambda: const("readpath.MEMORY") / (1 << 20)),
    (r"At most ([\d,]+) listed files are held", c("listing.HELD_FILES")),
    (r"down to (\d+) % of that bound", lambda: const("listing.SHRINK_TO") * 100),
    (r"down to (\d+) % of the cap", lambda: const("instancecache.HEADROOM") * 100),
    (r"`--cache-size` \(default (\d+)G\)", lambda: const("cache.DEFAULT_SIZE") / (1 << 30)),
    (r"in batches every (\d+) s", lambda: engine_numbers()["touch_seconds"]),
    (r"capped at (\d+) GiB, the least recently mounted", lambda: const("treecache.TREES_CAP") / (1 << 30)),
    (r"every (\d+) s and at unmount", lambda: engine_numbers()["flush_seconds"]),
    (r"counters of the last (\d+) s at most", lambda: engine_numbers()["flush_seconds"]),
    (r"rescans it at least every (\d+) s", c("instancecache.RESCAN_SECONDS")),
    (
        r"polling every (\d+) ms, for up to (\d+) s",
        lambda: (const("readpath.OTHER_FETCH_POLL") * 1000, const("readpath.OTHER_FETCH_WAIT")),
    ),
    (r"A claim older than (\d+) s", c("instancecache.CLAIM_STALE_SECONDS")),
    (r"claims each file for (\d+) s", c("readpath.CLAIM_SECONDS")),
    (r"once they are (\d+) s old", c("instancecache.STALE_TMP_SECONDS")),
    (r"waiting to be written are capped at (\d+) MiB", lambda: const("readpath.STORE_BACKLOG") / (1 << 20)),
    (r"wait T/3 for a connection \(at most (\d+) s\)", lambda: client_options()[600.0]["connect"]),
    (r"retries 5xx answers, resets and timeouts up to (\d+) times", lambda: client_options()[30.0]["retries"]),
    (
        r"backoff from (\d+) ms doubling up to (\d+) s",
        lambda: (
            client_options()[30.0]["backoff"]["init_backoff"].total_seconds() * 1000,
            client_options()[30.0]["backoff"]["max_backoff"].total_seconds(),
        ),
    ),
    (r"up to (\d+) s more for another process", c("readpath.OTHER_FETCH_WAIT")),
    (
        r"fails (\d+) times in a row is skipped for (\d+) s",
        lambda: (const("store.FAIL_THRESHOLD"), const("store.DOWN_SECONDS")),
    ),
    (r"for the first (\d+) of each kind", c("background.LOGGED_PER_TASK")),
    (r"with a (\d+) s timeout", lambda: inspect.signature(code("unanswered")).parameters["timeout"].default),
    (r"waits up to (\d+) s for the daemon", c("daemon.READY_TIMEOUT")),
    (r"make at most (\d+) GETs at once", lambda: engine_numbers()["gets"]),
    (r"Series prefetch has (\d+) connections", lambda: engine_numbers()["prefetch"]),
    (r"shuffled reads has (\d+) connections", lambda: engine_numbers()["warm"]),
    (r"At most (\d+) LISTs run at once", lambda: engine_numbers()["lists"]),
    (
        r"At most (\d+) threads read and write blocks and instance files; (\d+) more",
        lambda: (engine_numbers()["disk"], engine_numbers()["listing_disk"]),
    ),
    (r"reads with (\d+) threads by default", lambda: _action("prefetch", "--jobs").default),
    (r"reading at least (\d+) KiB at a time", lambda: const("fsspec.READ_BLOCK") / 1024),
    (r"waits up to (\d+) s for cache writes", c("fsspec.DRAIN_SECONDS")),
]


@pytest.mark.parametrize("pattern, expected", PROSE, ids=[p for p, _ in PROSE])
def test_number_in_a_sentence(pattern, expected):
    found = re.findall(pattern, prose())
    assert found, f"SEMANTICS.md no longer says {pattern!r}: update PROSE in {__file__}"
    want = expected()
    want = want if isinstance(want, tuple) else (want,)
    for got in found:
        got = tuple(number(g) for g in (got if isinstance(got, tuple) else (got,)))
        assert same(got, want), f"{pattern!r}: SEMANTICS.md says {got}, the code {want}"


def test_ready_timeout_range():
    m = re.search(r"`IDCFS_READY_TIMEOUT`, (\d+) to (\d+) s", prose())
    assert m
    lo, hi = number(m[1]), number(m[2])
    ready_timeout = code("ready_timeout")
    for value, ok in ((lo, True), (hi, True), (lo - 0.5, False), (hi + 1, False)):
        with mock.patch.dict(os.environ, {"IDCFS_READY_TIMEOUT": str(value)}):
            if ok:
                assert ready_timeout() == value
            else:
                with pytest.raises(ValueError):
                    ready_timeout()


def test_placeholders_and_escapes():
    stated = re.search(r"A missing or blank value reads (.*?)\.", prose())[1]
    assert set(re.findall(r"`([^`]+)`", stated)) == set(code("PLACEHOLDERS").values())
    escape_value, escape_component = code("escape_value"), code("escape_component")
    escaping = " ".join(section("### Escaping").split())
    for value, escaped in (("%", "%25"), ("/", "%2F"), ("\0", "%00")):
        assert escape_value(value) == escaped and f"becomes `{escaped}`" in escaping
    for name, escaped in ((".", "%2E"), ("..", "%2E%2E"), ("", "%")):
        assert escape_component(name) == escaped and f"`{escaped}`" in escaping


# -- the Writing section: every write-like call is EROFS


def test_write_like_calls_fail_with_erofs():
    import pyfuse3
    import trio

    ops = object.__new__(code("Operations"))
    ops.ns = SimpleNamespace(num_dirs=3)

    def errno_of(handler, *args):
        try:
            trio.run(handler, *args)
        except pyfuse3.FUSEError as e:
            return e.errno
        return 0

    for name in ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link", "create", "write"):
        assert errno_of(getattr(ops, name)) == errno.EROFS, name
    for name in ("setxattr", "removexattr"):
        assert errno_of(getattr(ops, name)) == errno.EROFS, name
    writing = " ".join(section("## Writing").split())
    flags = re.search(r"Opening with (.*?) fails with `EROFS`", writing)[1]
    for flag in re.findall(r"`(O_\w+)`", flags):
        assert errno_of(ops.open, 10**9, getattr(os, flag), None) == errno.EROFS, flag
    assert errno_of(ops.access, 1, os.W_OK, None) == errno.EROFS
    assert errno_of(ops.fsync, 1, False) == 0 and errno_of(ops.fsyncdir, 1, False) == 0
    assert errno_of(ops.flush, 1) == errno.ENOSYS


# -- README's summary


def test_readme_summary():
    summary = " ".join(section("## Semantics", README).split())
    assert "(SEMANTICS.md)" in summary
    assert "for an hour" in summary and const("fs.TIMEOUT") == 3600
    assert number(re.search(r"every file up to (\d+) MiB", summary)[1]) * (1 << 20) == const("cache.WHOLE_FILE")
    assert number(re.search(r"\(default (\d+) s\)", summary)[1]) == const("store.DEFAULT_TIMEOUT")
    assert "`EROFS`" in summary and "`EIO`" in summary
