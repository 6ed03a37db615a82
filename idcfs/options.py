"""Options: what a mount, idc://, idcfs.Index and the commands take, with their defaults and checks, and
the wiring they share (build_engine).

Every front end makes one `Options` with `Options.make(...)`: the command line and fstab spell options as
flags (`--cache-size`), Python as keywords (`cache_size`), and a bad value raises `UsageError` (a
ValueError) naming the option the way its caller wrote it. The parts are built here once for all:
`namespace()`, `store()`, `cache()` and `build_engine()`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import KEYWORDS, Spelling, UsageError, as_flag

if TYPE_CHECKING:
    from .cache import CacheDir
    from .engine import Engine
    from .namespace import Namespace
    from .selection import Selection
    from .store import ObjectStore

SOURCES = ("aws", "gcs")
PASSTHROUGH = ("auto", "off")
ENDPOINT_ENV = {"s3_endpoint": "IDCFS_S3_ENDPOINT", "gcs_endpoint": "IDCFS_GCS_ENDPOINT"}
MIN_CACHE_SIZE_MB = 64
MIN_MEMORY_MB = 16
TIMEOUT_RANGE = (1, 600)
DEFAULT_CACHE_SIZE = "10G"  # of a mount and of idc://; `idcfs prefetch` keeps the cap the last mount set
# Groups of Options fields, for callers that take only some.
SELECTION_OPTIONS = ("filter", "manifest", "collections", "licenses", "idc_version")
TREE_OPTIONS = ("template", "layout", "index", "cache_dir")  # the cache directory keeps sorted trees
MOUNT_ONLY_OPTIONS = ("passthrough", "allow_other")
# Options fields given as a repeated flag each (--collection a --collection b): field -> flag's name.
REPEATED = {field: flag for flag, field in KEYWORDS.items()}


def default_cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("IDCFS_CACHE_DIR") or platformdirs.user_cache_dir("idcfs"))


def default_index() -> Path:
    """idc-index-data's index. Found beside the package without importing it where it is installed as files:
    the import (it resolves every file of its distribution) took 80 ms of every mount's start."""
    import importlib.util

    spec = importlib.util.find_spec("idc_index_data")
    for place in (spec.submodule_search_locations or []) if spec else []:
        if (found := Path(place) / "idc_index.parquet").is_file():
            return found
    import idc_index_data

    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


# -- values: seconds and release raise ValueError without the option's name (argparse and make() add it);
# the checks below take the name, spelt as the caller wrote it, and raise UsageError


def seconds(text: str | float) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if not TIMEOUT_RANGE[0] <= value <= TIMEOUT_RANGE[1]:
        raise ValueError(f"{text} is out of range: give {TIMEOUT_RANGE[0]} to {TIMEOUT_RANGE[1]} seconds")
    return value


def release(text: str | int) -> int:
    """An IDC release number: 18 or v18."""
    try:
        value = int(str(text).lower().removeprefix("v"))
    except ValueError:
        raise ValueError(f"{text!r} is not an IDC release number, e.g. 18 or v18") from None
    if value < 1:
        raise ValueError(f"{text} is not an IDC release: releases count from 1")
    return value


def size(name: str, text: str | int, minimum_mb: int, zero_turns_off: str | None = None) -> int:
    """A size option's value in bytes (500M, 10G); 0 only where it turns something off. `name` as spelt."""
    from .cache import parse_size

    try:
        value = parse_size(str(text))
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None
    if value < minimum_mb << 20 and not (value == 0 and zero_turns_off):
        hint = f" (0 turns {zero_turns_off} off)" if zero_turns_off else ""
        raise UsageError(f"{name} {text} is below the minimum of {minimum_mb}M{hint}")
    return value


def check_url(name: str, url: str | None) -> None:
    if url is None:
        return
    from .store import endpoint_problem

    problem = endpoint_problem(url)
    if problem:
        raise UsageError(f"bad {name} {url!r}: {problem} (e.g. http://127.0.0.1:9000)")


def check_cache_dir(path: Path, name: str = "--cache-dir") -> Path:
    """The cache directory, absolute, created and shown writable."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A probe of its own: threads of one process may check the same directory at once.
        probe = path / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"x")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cache directory {path} is not usable ({e.strerror or e}): pass a writable {name}") from None
    return path


@dataclass(frozen=True)
class Options:
    """Checked options, as make() leaves them: endpoints taken from the environment where not given, the
    index and manifest shown to be files (paths as given), the cache directory created and writable unless
    the caller only reads trees, sizes in bytes. idc:// keys its engines by normalized() options."""

    source: str = "aws"
    s3_endpoint: str | None = None
    gcs_endpoint: str | None = None
    # the selection
    filter: str | None = None
    manifest: Path | None = None
    collections: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()  # license_short_name values, or "commercial"
    idc_version: int | None = None
    # the tree
    template: str | None = None
    layout: str | None = None
    index: Path | None = None  # None: idc-index-data's
    # the cache and the read path
    cache_dir: Path | None = None  # None: the user cache directory
    cache_size: int | None = None  # bytes; 0: no block cache; None: the cap the directory has (10G if new)
    memory: int = 256 << 20
    timeout: float = 30.0
    # the mount
    passthrough: str = "auto"
    allow_other: bool = False
    # how messages name options: as_flag (--cache-size) or as_keyword (cache_size)
    spell: Spelling = field(default=as_flag, compare=False, repr=False)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "spell"]

    @classmethod
    def make(
        cls,
        spell: Spelling = as_flag,
        *,
        allowed: Iterable[str] | None = None,
        create_cache_dir: bool = True,
        **given: Any,
    ) -> Options:
        """Options from values as a caller gives them (strings for sizes, "v18" for a release, paths as
        str); None means the default. `allowed`: the options this caller takes (default all). UsageError (a
        ValueError) names the first bad one as `spell` does."""
        allowed = list(allowed) if allowed is not None else cls.names()
        unknown = sorted(set(given) - set(allowed))
        if unknown:  # a misspelt option would otherwise select the whole index without a word
            import difflib

            near = difflib.get_close_matches(unknown[0], allowed, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"give one of {', '.join(allowed)}"
            raise UsageError(f"unknown option {unknown[0]!r}: {hint}")
        v = {k: val for k, val in given.items() if val is not None}
        out: dict[str, Any] = {}
        source = v.get("source", "aws")
        if source not in SOURCES:
            raise UsageError(f"bad {spell('source')} {source!r}: give 'aws' or 'gcs'")
        out["source"] = source
        for name, env in ENDPOINT_ENV.items():
            if name not in allowed:
                continue
            url, what = v.get(name), spell(name)
            if url is None and os.environ.get(env):  # an empty variable counts as unset
                url, what = os.environ[env], env
            check_url(what, url)
            out[name] = url
        cache_dir = Path(v["cache_dir"]) if "cache_dir" in v else default_cache_dir()
        out["cache_dir"] = check_cache_dir(cache_dir, spell("cache_dir")) if create_cache_dir else cache_dir
        for name in ("index", "manifest"):
            if name in v:
                if not Path(v[name]).is_file():
                    raise UsageError(f"{spell(name)} {v[name]} is not a file")
                out[name] = Path(v[name])
        if "cache_size" in v:
            out["cache_size"] = size(spell("cache_size"), v["cache_size"], MIN_CACHE_SIZE_MB, "the block cache")
        if "memory" in v:
            out["memory"] = size(spell("memory"), v["memory"], MIN_MEMORY_MB)
        if "timeout" in v:
            out["timeout"] = _value(seconds, spell("timeout"), v["timeout"])
        if "idc_version" in v:
            out["idc_version"] = _value(release, spell("idc_version"), v["idc_version"])
        for name in ("collections", "licenses"):
            if name in v:
                out[name] = (v[name],) if isinstance(v[name], str) else tuple(v[name])
        if v.get("passthrough", "auto") not in PASSTHROUGH:
            raise UsageError(f"bad {spell('passthrough')} {v['passthrough']!r}: give 'auto' or 'off'")
        if not isinstance(v.get("allow_other", False), bool):
            raise UsageError(f"{spell('allow_other')} is a switch: give True or False")
        for name in ("filter", "template", "layout", "passthrough", "allow_other"):
            if name in v:
                out[name] = v[name]
        if out.get("template") is not None and out.get("layout") is not None:
            raise UsageError(f"give {spell('template')} or {spell('layout')}, not both")
        return cls(**out, spell=spell)

    # -- the parts, built the same way by every front end

    def selection(self) -> Selection:
        from .selection import Selection

        return Selection(
            filter=self.filter,
            collections=self.collections,
            manifest=self.manifest,
            licenses=self.licenses,
            idc_version=self.idc_version,
            spell=self.spell,
        )

    def index_file(self) -> Path:
        return self.index or default_index()

    def tree_template(self) -> str:
        """The template of the tree (from template or layout), checked: UsageError if it is bad."""
        from .namespace import parse_template, template_for

        template = template_for(self.template, self.layout, self.spell)
        parse_template(template, self.spell)
        return template

    def normalized(self) -> Options:
        """The same options spelt one way: the index and manifest as resolved paths (the default index named),
        the layout as its template. Options that give the same tree and engine are then equal."""
        manifest = self.manifest.resolve() if self.manifest is not None else None
        return replace(
            self, index=self.index_file().resolve(), manifest=manifest, template=self.tree_template(), layout=None
        )

    def namespace(self) -> Namespace:
        """The selected tree; SelectionError (a UsageError) for a bad selection, template or index."""
        from .namespace import Namespace

        return Namespace(self.index_file(), self.tree_template(), self.selection(), cache_dir=self.cache_dir)

    def store(self) -> ObjectStore:
        """The origins, unsigned: credentials in the environment are dropped first."""
        from .store import ObjectStore, drop_credentials

        drop_credentials()
        return ObjectStore(self.source, self.s3_endpoint, self.gcs_endpoint, timeout=self.timeout)

    def cache(self, lazy: bool = False) -> CacheDir:
        """The cache directory; a cache_size of 0 keeps listings only. lazy: see CacheDir."""
        from .cache import CacheDir

        return CacheDir(self.cache_dir, self.cache_size or None, blocks=self.cache_size != 0, lazy=lazy)

    def to_argv(self) -> list[str]:
        """The `idcfs mount` flags that give these options (the defaults left out)."""
        argv = []
        default = Options()
        for name in self.names():
            value = getattr(self, name)
            if value == getattr(default, name):
                continue
            flag = as_flag(name)
            if isinstance(value, bool):
                argv.append(flag)
            elif name in REPEATED:
                for item in value:
                    argv += [as_flag(REPEATED[name]), item]
            else:
                argv += [flag, str(value)]
        return argv


def _value(parse, name: str, text):
    try:
        return parse(text)
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None


def build_engine(
    options: Options,
    ns: Namespace | None = None,
    store: ObjectStore | None = None,
    cache: CacheDir | None = None,
) -> Engine:
    """The engine of a mount or an idc:// filesystem; parts already built (a forked worker's tree, a mount's
    store probed while the tree loaded) are used as they are."""
    from .engine import Engine

    return Engine(
        ns if ns is not None else options.namespace(),
        store if store is not None else options.store(),
        cache if cache is not None else options.cache(),
        memory=options.memory,
    )
