"""The directory tree, built with duckdb from the series a selection picks (selection.py).

The selected series are sorted by their path components, so every directory
is a contiguous run of rows. For each template level we keep the start row of
every distinct prefix ("group"); a directory is then (level, group number),
its children are a contiguous range of groups one level down, and a name is
found by binary search. Nothing here does I/O beyond reading the parquet file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import treecache
from .errors import Spelling, as_flag
from .selection import IndexViews, Selection, SelectionError, _one_line, _sql_str

DEFAULT_TEMPLATE = "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID"
# idc-index's dirTemplate attributes: a template of these alone gives `idc download`'s paths, value for value.
TEMPLATE_ATTRIBUTES = ("PatientID", "collection_id", "Modality", "StudyInstanceUID", "SeriesInstanceUID")
# Index columns people read, allowed in templates too. Their values are tidied for names (see _readable_sql).
READABLE_ATTRIBUTES = (
    "StudyDate",
    "StudyDescription",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "instanceCount",
)
ATTRIBUTES = TEMPLATE_ATTRIBUTES + READABLE_ATTRIBUTES
TEMPLATE_SEPARATORS = ("_", "-", "/", " ")
# --layout: named templates. "readable" names studies and series as a viewer's study list does.
LAYOUTS = {
    "idc": DEFAULT_TEMPLATE,
    "readable": "%collection_id/%PatientID/%StudyDate %StudyDescription/%SeriesNumber %Modality %SeriesDescription",
}
DESCRIPTION_CHARS = 64  # readable values are cut here (the longest real description has 65 characters)
PLACEHOLDERS = {  # shown for a missing or blank readable value
    "StudyDate": "no date",
    "StudyDescription": "no description",
    "SeriesNumber": "no number",
    "SeriesDescription": "no description",
    "BodyPartExamined": "no body part",
    "instanceCount": "no count",
}
_STUDY_ATTRIBUTES = {"StudyInstanceUID", "StudyDate", "StudyDescription"}
_SERIES_ATTRIBUTES = {
    "Modality",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "BodyPartExamined",
    "instanceCount",
}
LONG_NAME_BYTES = 180  # a longer readable name is cut to 45 characters: room for a suffix within NAME_MAX (255)


# Columns exposed as user.idc.* extended attributes.
XATTR_COLUMNS = (
    "collection_id",
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    *READABLE_ATTRIBUTES,
    "license_short_name",
    "source_DOI",
    "crdc_series_uuid",
    "series_init_idc_version",
    "series_revised_idc_version",
    "min_idc_version",  # only in a mount that holds earlier releases' versions
    "max_idc_version",
)

# ---------------------------------------------------------------------------
# Name escaping


def escape_value(value: str | None) -> str:
    """Escape one attribute value so it cannot split or escape a path.

    `%`, `/` and NUL become %25, %2F, %00. Real IDC values never contain
    them, so real paths are exactly those of `idc download`.
    """
    if value is None:
        return ""
    return value.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")


def escape_component(name: str) -> str:
    """A whole path component may not be empty, `.` or `..`."""
    if name == "":
        return "%"
    if name in (".", ".."):
        return name.replace(".", "%2E")
    return name


def unescape(name: str) -> str:
    """Inverse of escape_component(escape_value(v)) for a single-value component."""
    if name == "%":
        return ""
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


_SQL_ESCAPE = "replace(replace(replace(coalesce({col}, ''), '%', '%25'), '/', '%2F'), chr(0), '%00')"


def _sql_value(col: str) -> str:
    """escape_value in SQL. The replace chain runs only on values that need it (none in the real index): run on
    every value, it tripled the time of a full-index tree build."""
    c = f'"{col}"'
    special = f"contains({c}, '%') OR contains({c}, '/') OR contains({c}, chr(0))"
    return f"(CASE WHEN {c} IS NULL THEN '' WHEN {special} THEN {_SQL_ESCAPE.format(col=c)} ELSE {c} END)"


def _sql_component(expr: str) -> str:
    e = f"({expr})"
    return f"(CASE WHEN {e} = '' THEN '%' WHEN {e} IN ('.', '..') THEN replace({e}, '.', '%2E') ELSE {e} END)"


def template_for(template: str | None, layout: str | None, spell: Spelling = as_flag) -> str:
    """The template of a --template or a --layout (at most one of them), by default idc download's."""
    if template is not None and layout is not None:
        raise SelectionError(f"give {spell('template')} or {spell('layout')}, not both")
    if layout is not None:
        if layout not in LAYOUTS:
            raise SelectionError(f"bad {spell('layout')} {layout!r}: use one of {', '.join(LAYOUTS)}")
        return LAYOUTS[layout]
    return template or DEFAULT_TEMPLATE


_TIDY = "idcfs_tidy_"  # prefix of the columns holding tidied readable values, computed once per row
# Beyond escape_value: fsspec takes names holding these for glob patterns (glob.has_magic).
_GLOB_ESCAPE = "replace(replace(replace(replace({v}, '*', '%2A'), '?', '%3F'), '[', '%5B'), ']', '%5D')"
PIECE_BYTES = 96  # a longer readable value (multi-byte text) is cut to 24 characters, so a level fits NAME_MAX


def _tidy_sql(col: str) -> str:
    """A readable value tidied: whitespace runs made one space, trimmed, cut at DESCRIPTION_CHARS ('' if none)."""
    spaced = f"""regexp_replace(coalesce(CAST("{col}" AS VARCHAR), ''), '\\s+', ' ', 'g')"""
    return f"rtrim(left(trim({spaced}), {DESCRIPTION_CHARS}))"


def _readable_sql(col: str) -> str:
    """A readable value as a name, from its tidied column: escaped as any value and for globs; blank, a
    placeholder."""
    t = f'"{_TIDY}{col}"'
    short = f"(CASE WHEN strlen({t}) > {PIECE_BYTES} THEN rtrim(left({t}, 24)) ELSE {t} END)"
    escaped = _GLOB_ESCAPE.format(v=_SQL_ESCAPE.format(col=short))
    return f"(CASE WHEN {t} = '' THEN '{PLACEHOLDERS[col]}' ELSE {escaped} END)"


@dataclass(frozen=True)
class Level:
    """One directory level of a template: its name in SQL, and the UID that tells apart directories that
    would share a name (None where names are unique, or where directories group on purpose)."""

    sql: str
    identity: str | None
    attributes: frozenset[str] = frozenset()

    @property
    def is_study(self) -> bool:
        """Each directory at this level is one study."""
        return self.identity == "StudyInstanceUID" or (
            "StudyInstanceUID" in self.attributes and not self.attributes & _SERIES_ATTRIBUTES
        )


def parse_template(template: str, spell: Spelling = as_flag) -> list[Level]:
    """Split a template (idc-index's dirTemplate, plus READABLE_ATTRIBUTES and spaces) into directory levels."""
    rest = template
    for attr in sorted(ATTRIBUTES, key=len, reverse=True):
        rest = rest.replace("%" + attr, "")
    for sep in TEMPLATE_SEPARATORS:
        rest = rest.replace(sep, "")
    if rest or not template.strip("/ "):
        raise SelectionError(
            f"bad {spell('template')} {template!r}: use only %{', %'.join(ATTRIBUTES)} "
            "and the separators - _ / and space"
        )
    parts = template.strip("/").split("/")
    levels = []
    for depth, part in enumerate(parts):
        if not part:
            raise SelectionError(f"bad {spell('template')} {template!r}: empty path level (two slashes in a row)")
        pieces, used = [], set()
        for i, token in enumerate(re.split("%(" + "|".join(sorted(ATTRIBUTES, key=len, reverse=True)) + ")", part)):
            if i % 2:
                used.add(token)
                pieces.append(_readable_sql(token) if token in READABLE_ATTRIBUTES else _sql_value(token))
            elif token:
                pieces.append("'" + token.replace("'", "''") + "'")
        sql = _sql_component(" || ".join(pieces))
        identity = None
        if used & set(READABLE_ATTRIBUTES):  # names that may repeat: a study's or a series' UID tells them apart
            if used & _SERIES_ATTRIBUTES and "SeriesInstanceUID" not in used and depth == len(parts) - 1:
                identity = "SeriesInstanceUID"
            elif used & _STUDY_ATTRIBUTES and not used & _SERIES_ATTRIBUTES and "StudyInstanceUID" not in used:
                identity = "StudyInstanceUID"
        if identity is not None:  # a cut name that repeats gets its suffix like any other
            sql = f"(CASE WHEN strlen({sql}) > {LONG_NAME_BYTES} THEN left({sql}, 45) ELSE {sql} END)"
        levels.append(Level(sql, identity, frozenset(used)))
    return levels


def _told_apart(level: int, identity: str) -> str:
    """Level `level`'s name, with " (<end of the UID>)" where directories of different UIDs under one parent
    would share it: the UID's last 6 characters, or 12, or all, whichever first tells them apart."""
    parent = "".join(f"c{d}, " for d in range(level))
    key = _sql_value(identity)  # escaped as any value: a crafted UID cannot split the name

    def clash(by: str) -> str:
        window = f"PARTITION BY {parent}b{level}{by}"
        return f"min({key}) OVER ({window}) <> max({key}) OVER ({window})"

    suffix = (
        f"CASE WHEN NOT ({clash(f', right({key}, 6)')}) THEN right({key}, 6) "
        f"WHEN NOT ({clash(f', right({key}, 12)')}) THEN right({key}, 12) ELSE {key} END"
    )
    return f"(CASE WHEN {clash('')} THEN b{level} || ' (' || {suffix} || ')' ELSE b{level} END)"


# ---------------------------------------------------------------------------
# The tree

TREE_FORMAT = 5
METADATA_CACHE_SIZE = 4096  # series whose xattr values are kept
_ENUM = "idcfs_enum_"  # prefix of the enum types of per-series columns
LEVELS_KEY = b"idcfs.levels"  # schema metadata of a stored tree: the number of directories at each level


def _numpy(a: pa.Array) -> np.ndarray:
    """An integer array without nulls as a numpy view of its buffer. (Array.to_numpy imports pandas, which
    took 0.2 s of every mount's start.)"""
    dtype = np.dtype(f"{'' if pa.types.is_signed_integer(a.type) else 'u'}int{a.type.bit_width}")
    return np.frombuffer(a.buffers()[1], dtype=dtype, count=len(a), offset=a.offset * dtype.itemsize)


def _int32s(values: np.ndarray) -> pa.Array:
    """The inverse of _numpy for int32 (pa.array of a numpy array imports pandas too)."""
    values = np.ascontiguousarray(values, dtype=np.int32)
    return pa.Array.from_buffers(pa.int32(), len(values), [None, pa.py_buffer(values)])


def _padded(values: pa.Array, n: int) -> pa.Array:
    """values followed by nulls up to length n: every column of a stored tree has one row per series."""
    return values if len(values) == n else pa.concat_arrays([values, pa.nulls(n - len(values), values.type)])


def _tree_batch(rows: pa.Table, depth: int) -> pa.RecordBatch:
    """The tree as stored, from the selection sorted by path (c0..c{depth-1}, crdc_series_uuid, aws_bucket,
    summary columns): for each level d, each directory's first row (start{d}) and name (name{d}); for each
    series, its uuid, bucket and summary values (dictionary-encoded). A mount maps it and computes nothing."""
    n = rows.num_rows
    changed = np.zeros(n, dtype=bool)
    changed[0] = True
    columns, counts = {}, []
    for d in range(depth):
        col = rows.column(f"c{d}").combine_chunks()
        if n > 1:
            differs = pc.indices_nonzero(pc.not_equal(col.slice(1), col.slice(0, n - 1)))
            changed[_numpy(differs.cast(pa.int64())) + 1] = True
        starts = _int32s(np.flatnonzero(changed))
        counts.append(len(starts))
        columns[f"name{d}"] = _padded(col.take(starts), n)
        columns[f"start{d}"] = _padded(starts, n)
    columns["uuid"] = rows.column("crdc_series_uuid").combine_chunks()
    for c in ("aws_bucket", *SUMMARY_COLUMNS):
        values = rows.column(c).combine_chunks()
        columns[c] = values if pa.types.is_dictionary(values.type) else values.dictionary_encode()
    batch = pa.RecordBatch.from_pydict(columns)
    return batch.replace_schema_metadata({LEVELS_KEY: json.dumps(counts).encode()})


@dataclass(frozen=True)
class Series:
    """What the read path needs of one series."""

    row: int
    crdc_series_uuid: str
    aws_bucket: str


# Per-series columns the tree keeps, so a directory can tell what its subtree holds without a query.
SUMMARY_COLUMNS = ("license_short_name", "source_DOI")


class Namespace:
    """Directories at `levels` depths over the sorted selection of series."""

    def __init__(
        self,
        index_path: Path,
        template: str = DEFAULT_TEMPLATE,
        selection: Selection | None = None,
        cache_dir: Path | None = None,
    ):
        selection = selection or Selection()
        spell = selection.spell
        self.template = template
        self.levels = levels = parse_template(template, spell)
        self.depth = len(levels)
        self._metadata: dict[str, dict[str, str]] = {}
        self._summaries: dict[int, dict[str, str]] = {}
        self.views = IndexViews(index_path, selection)
        absent = [a for a in READABLE_ATTRIBUTES if "%" + a in template and a not in self.columns]
        if absent:
            raise SelectionError(
                f"{spell('index')} {self.index_path} has no column {absent[0]}, which the template uses"
            )
        where, params = self.views.where()
        con = self._con
        # Few distinct values: sorted as enum codes (dictionary arrays in Arrow), not strings.
        per_series = ("aws_bucket", *SUMMARY_COLUMNS)
        coded = [c for c in per_series if c in self.columns]
        picked = ", ".join(f"{c}::{_ENUM}{c} AS {c}" if c in coded else f"NULL::VARCHAR AS {c}" for c in per_series)
        order = ", ".join(f"c{i}" for i in range(self.depth))
        readable = [a for a in READABLE_ATTRIBUTES if any(a in level.attributes for level in levels)]
        if not readable:  # idc-index's attributes alone: idc download's names
            cols = ", ".join(f"{level.sql} AS c{i}" for i, level in enumerate(levels))
            query = f"""
            SELECT {cols}, crdc_series_uuid, {picked}
            FROM idx WHERE {where} ORDER BY {order}, crdc_series_uuid"""
        else:  # readable values tidied once per row; names that may repeat told apart level by level
            tidied = ", ".join(f'{_tidy_sql(a)} AS "{_TIDY}{a}"' for a in readable)
            tidy_rows = f"SELECT *, {tidied} FROM idx WHERE {where}"
            cols = ", ".join(f"{level.sql} AS b{i}" for i, level in enumerate(levels))
            named = f"SELECT {cols}, crdc_series_uuid, {picked}, StudyInstanceUID, SeriesInstanceUID FROM ({tidy_rows})"
            for d, level in enumerate(levels):
                name = _told_apart(d, level.identity) if level.identity else f"b{d}"
                named = f"SELECT *, {name} AS c{d} FROM ({named})"
            query = f"""
            SELECT {order}, crdc_series_uuid, {", ".join(per_series)}
            FROM ({named}) ORDER BY {order}, crdc_series_uuid"""
        cached = self._tree_cache_path(cache_dir, query, params)
        tree = treecache.load(cached)
        if tree is None:
            try:
                for c in coded:
                    values = con.execute(f"SELECT DISTINCT {c} FROM idx WHERE {c} IS NOT NULL").fetchall()
                    con.execute(
                        f"CREATE OR REPLACE TYPE {_ENUM}{c} AS ENUM ({', '.join(_sql_str(v) for (v,) in values)})"
                    )
                rows = con.sql(query, params=params).to_arrow_table()
            except duckdb.Error as e:
                raise SelectionError(f"invalid selection: {_one_line(e)}") from None
            if rows.num_rows == 0:
                options = ("filter", "collection", "manifest", "license", "idc_version")
                raise SelectionError(f"the selection is empty: no series match {'/'.join(map(spell, options))}")
            tree = _tree_batch(rows, self.depth)
            del rows
            # Mapped from the file once stored: its pages are then shared with the page cache, not this
            # process's own memory, which Arrow's allocator is asked to give back.
            if treecache.save(cached, tree) is not None and (mapped := treecache.load(cached)) is not None:
                tree = mapped
                pa.default_memory_pool().release_unused()
            self.views.reconnect()  # gives back what the sort used
        self._build(tree)

    # -- what the selection gave (see IndexViews)

    @property
    def index_path(self) -> Path:
        return self.views.index_path

    @property
    def columns(self) -> list[str]:
        """The columns of the `idx` view."""
        return self.views.columns

    @property
    def current_version(self) -> int | None:
        return self.views.current_version

    @property
    def release(self) -> int | None:
        return self.views.release

    @property
    def earlier_versions(self) -> int:
        return self.views.earlier_versions

    @property
    def idc_version(self) -> str:
        """The IDC release this tree is (v25), or '' when the index does not say."""
        return self.views.idc_version

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        """This process's duckdb connection, with the view `idx` (made again in a forked child)."""
        return self.views.con

    def _tree_cache_path(self, cache_dir: Path | None, query: str, params: list) -> Path | None:
        """The sorted selection depends only on the index files, the view, the query and its parameters."""
        if cache_dir is None:
            return None
        views = self.views
        files = [views.index_path] + ([views.prior_path] if views.prior_path else [])
        stamps = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        key = json.dumps([TREE_FORMAT, stamps, views.view_statements, query, params])
        return Path(cache_dir) / "trees" / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".arrow")

    def _build(self, tree: pa.RecordBatch) -> None:
        """Views into the stored tree (see _tree_batch); nothing is copied, so a mapped tree costs memory only
        where it is walked."""
        counts = json.loads(tree.schema.metadata[LEVELS_KEY])
        self.num_series = tree.num_rows
        self._tree = tree
        self._uuid = tree.column("uuid")
        buckets = tree.column("aws_bucket")
        self._bucket_names = buckets.dictionary.to_pylist()
        self._bucket_idx = _numpy(buckets.indices)
        # starts[d]: first row of each directory at level d; names[d]: its name. Sorted within each parent.
        self.starts = [_numpy(tree.column(f"start{d}").slice(0, k)) for d, k in enumerate(counts)]
        self.names = [tree.column(f"name{d}").slice(0, k) for d, k in enumerate(counts)]
        self._offsets = np.cumsum([0] + counts)
        self.num_dirs = int(self._offsets[-1])
        self._summary: dict[str, tuple[list, np.ndarray]] = {}  # summary column -> (values, codes); on first use

    # -- directory ids: 0 is the root, then the groups of each level in order.

    def dir_id(self, level: int, group: int) -> int:
        return int(self._offsets[level]) + group + 1

    def dir_of(self, dir_id: int) -> tuple[int, int]:
        """(level, group) of a directory id; level -1 is the root."""
        if dir_id == 0:
            return -1, 0
        k = dir_id - 1
        level = int(np.searchsorted(self._offsets, k, side="right")) - 1
        return level, k - int(self._offsets[level])

    def is_leaf(self, dir_id: int) -> bool:
        return self.dir_of(dir_id)[0] == self.depth - 1

    def _children_range(self, level: int, group: int) -> tuple[int, int]:
        """The groups one level down that a directory holds: those whose first rows fall in its rows."""
        if level == -1:
            return 0, len(self.starts[0])
        rows, below = self._group_rows(level, group), self.starts[level + 1]
        # Searched with int32 keys: a Python int would make numpy convert the whole (mapped) array first.
        return int(below.searchsorted(np.int32(rows.start))), int(below.searchsorted(np.int32(rows.stop)))

    def _group_rows(self, level: int, group: int) -> range:
        starts = self.starts[level]
        return range(int(starts[group]), int(starts[group + 1]) if group + 1 < len(starts) else self.num_series)

    def subdirs(self, dir_id: int, start: int = 0, count: int | None = None) -> list[tuple[str, int]]:
        """(name, dir_id) of the subdirectories, from the start-th on (at most count of them)."""
        level, group = self.dir_of(dir_id)
        if level == self.depth - 1:
            return []
        lo, hi = self._children_range(level, group)
        lo = min(lo + start, hi)
        if count is not None:
            hi = min(hi, lo + count)
        names = self.names[level + 1].slice(lo, hi - lo).to_pylist()
        base = self.dir_id(level + 1, lo)
        return [(name, base + i) for i, name in enumerate(names)]

    def lookup(self, dir_id: int, name: str) -> int | None:
        level, group = self.dir_of(dir_id)
        if level == self.depth - 1:
            return None
        lo, end = self._children_range(level, group)
        names, hi = self.names[level + 1], end
        while lo < hi:  # names within one parent are sorted (code point order == duckdb's byte order)
            mid = (lo + hi) // 2
            if names[mid].as_py() < name:
                lo = mid + 1
            else:
                hi = mid
        if lo < end and names[lo].as_py() == name:
            return self.dir_id(level + 1, lo)
        return None

    def series_in(self, dir_id: int) -> list[Series]:
        """The series whose files a leaf directory holds (usually exactly one)."""
        if not self.is_leaf(dir_id):
            return []
        return [self.series_at(r) for r in self.rows_in(dir_id)]

    def series_at(self, row: int) -> Series:
        return Series(row, self._uuid[row].as_py(), self._bucket_names[self._bucket_idx[row]])

    def rows_in(self, dir_id: int) -> range:
        """The series rows under a directory."""
        level, group = self.dir_of(dir_id)
        return range(self.num_series) if level == -1 else self._group_rows(level, group)

    def series_paths(self) -> pa.Table:
        """Each series' directory path, in tree order (columns crdc_series_uuid, path, tree_row). Tree order is
        not the paths' string order where names hold characters below '/', such as spaces."""
        rows = np.arange(self.num_series, dtype=np.int32)
        parts = [
            self.names[d].take(_int32s(np.searchsorted(self.starts[d], rows, side="right") - 1))
            for d in range(self.depth)
        ]
        paths = pc.binary_join_element_wise(*parts, "/")
        return pa.table({"crdc_series_uuid": self._uuid, "path": paths, "tree_row": _int32s(rows)})

    def attributes_at(self, level: int) -> list[str]:
        """The template attributes that name the directories down to `level` (constant below it)."""
        parts = self.template.strip("/").split("/")[: level + 1]
        found = [a for a in ATTRIBUTES if any("%" + a in p for p in parts)]
        if "StudyInstanceUID" not in found and any(lv.is_study for lv in self.levels[: level + 1]):
            found.append("StudyInstanceUID")  # its directories are told apart by study (_told_apart)
        return found

    def study_level(self) -> int | None:
        """The level whose directories are studies (the first named by a study attribute), if above the
        series; None when the template has no such level."""
        return next((d for d, level in enumerate(self.levels[:-1]) if level.is_study), None)

    def all_series(self) -> list[Series]:
        return [self.series_at(r) for r in range(self.num_series)]

    def counts(self, dir_id: int, column: str) -> dict[str | None, int]:
        """How many series under a directory have each value of a summary column (None: not given),
        most frequent first."""
        if column not in self._summary:  # codes with -1 for NULL, so a subtree's counts are one bincount
            enc = self._tree.column(column)
            codes = _numpy(enc.indices.cast(pa.int32()).fill_null(-1))
            self._summary[column] = (enc.dictionary.to_pylist(), codes)
        names, codes = self._summary[column]
        rows = self.rows_in(dir_id)
        tally = np.bincount(codes[rows.start : rows.stop] + 1, minlength=len(names) + 1)
        found = {([None] + names)[i]: int(k) for i, k in enumerate(tally) if k}
        return dict(sorted(found.items(), key=lambda kv: (-kv[1], kv[0] or "")))

    def summary(self, dir_id: int) -> dict[str, str]:
        """What a directory's subtree holds: series, licenses and source DOIs with their series counts (JSON;
        a missing value is counted under "")."""
        # Kept: counting the root's million rows takes about 13 ms on the mount's one trio thread, and every
        # getxattr of a directory (each name of a `getfattr -d`, each `idcfs stats`) asks again.
        out = self._summaries.get(dir_id)
        if out is None:
            out = {"series_count": str(len(self.rows_in(dir_id)))}
            for column, key in (("license_short_name", "licenses"), ("source_DOI", "source_DOIs")):
                out[key] = json.dumps({k or "": v for k, v in self.counts(dir_id, column).items()})
            if len(self._summaries) >= METADATA_CACHE_SIZE:
                self._summaries.clear()
            self._summaries[dir_id] = out
        return dict(out)  # a fresh dict the caller may extend

    def series_metadata(self, crdc_series_uuid: str, con: duckdb.DuckDBPyConnection | None = None) -> dict[str, str]:
        """Index columns of one series, for the user.idc.* xattrs (a fresh dict the caller may extend).

        Cached, because `getfattr -d` asks once per attribute and each query scans the index. A caller
        in another thread passes its own cursor (`con`): a duckdb connection serves one thread at a time.
        """
        meta = self._metadata.get(crdc_series_uuid)
        if meta is None:
            cols = [c for c in XATTR_COLUMNS if c in self.columns]
            rows = (
                (con or self._con)
                .execute(f"SELECT {', '.join(cols)} FROM idx WHERE crdc_series_uuid = ? LIMIT 1", [crdc_series_uuid])
                .fetchall()
            )
            if not rows:
                return {}
            (row,) = rows
            meta = {c: "" if v is None else str(v) for c, v in zip(cols, row, strict=True)}
            meta["idc_version"] = self.idc_version
            if len(self._metadata) >= METADATA_CACHE_SIZE:
                self._metadata.clear()
            self._metadata[crdc_series_uuid] = meta
        return dict(meta)
