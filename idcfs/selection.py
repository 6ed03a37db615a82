"""Which series a tree holds: the IDC index as duckdb views, narrowed by a Selection.

`IndexViews` owns the duckdb connection and its views: `current` (the index file), `prior` (earlier
releases' series versions, shipped beside it) and `idx`, the series of the chosen release. Its `where()`
turns a Selection's filter, collections, licenses and manifest into one WHERE clause over `idx`. The
tree (namespace.py) sorts what that clause selects and knows nothing of releases or manifests.

Messages name options through the selection's `spell`: --collection to the command line, collections to
Python.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from .errors import Spelling, UsageError, as_flag
from .store import GCS_MIRROR

log = logging.getLogger(__name__)

# Tables shipped beside idc_index.parquet in idc-index-data.
PRIOR_VERSIONS_FILE = "prior_versions_index.parquet"
VERSIONS_FILE = "version_metadata_index.parquet"
# Columns an IDC index has: idc-index's dirTemplate attributes (the default tree's names) and where a
# series' objects are.
INDEX_COLUMNS = (
    "PatientID",
    "collection_id",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "crdc_series_uuid",
    "aws_bucket",
)

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_MANIFEST_URL = re.compile(rf"^(?:cp\s+)?(s3|gs)://([a-z0-9.-]+)/({_UUID})/\*?(?:\s+\S+)?$")
_UUID_LINE = re.compile(rf"^{_UUID}$")
_DICOM_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")

# --license value: every license that allows commercial use (CC BY and CC0, no NC or ND).
COMMERCIAL = "commercial"
_COMMERCIAL_LICENSE = re.compile(r"^(CC BY( \d+(\.\d+)*)?|CC0( \d+(\.\d+)*)?)$", re.IGNORECASE)


class SelectionError(UsageError):
    """Bad user input for the selection: the message says what to fix."""


@dataclass
class Selection:
    filter: str | None = None
    collections: tuple[str, ...] = ()
    manifest: Path | None = None
    licenses: tuple[str, ...] = ()  # license_short_name values, or COMMERCIAL
    idc_version: int | None = None  # an earlier IDC release; None: the index's own
    # How messages name an option: as_flag for the command line, as_keyword for Python. Selects nothing.
    spell: Spelling = field(default=as_flag, compare=False, repr=False)


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def parse_manifest(path: Path, spell: Spelling = as_flag) -> tuple[list[str], list[str]]:
    """Return (crdc_series_uuids, SeriesInstanceUIDs) named by a manifest file.

    Accepts the IDC Portal's s5cmd manifests (`cp s3://bucket/uuid/* .`), bare
    bucket URLs, and plain lists of crdc_series_uuid or SeriesInstanceUID.
    """
    manifest = spell("manifest")
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SelectionError(f"cannot read {manifest} {path}: {e}") from None
    uuids, uids = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _MANIFEST_URL.match(line)
        if m:
            scheme, bucket, uuid = m.groups()
            known = GCS_MIRROR.values() if scheme == "gs" else GCS_MIRROR.keys()
            if bucket not in known:
                raise SelectionError(f"{manifest} {path} line {n}: {scheme}://{bucket} is not an IDC bucket")
            uuids.append(uuid.lower())
        elif _UUID_LINE.match(line):
            uuids.append(line.lower())
        elif _DICOM_UID.match(line):
            uids.append(line)
        else:
            raise SelectionError(
                f"{manifest} {path} line {n}: {line[:80]!r} is not an s5cmd cp line, "
                "a crdc_series_uuid or a SeriesInstanceUID"
            )
    if not uuids and not uids:
        raise SelectionError(f"{manifest} {path} names no series")
    return uuids, uids


def _validate_filter(con: duckdb.DuckDBPyConnection, where: str, spell: Spelling) -> None:
    probe = f"SELECT 1 FROM idx WHERE ({where})"
    try:
        statements = con.extract_statements(probe)
    except duckdb.Error as e:
        raise SelectionError(f"invalid {spell('filter')} SQL: {_one_line(e)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise SelectionError(f"invalid {spell('filter')}: it must be a single WHERE condition, e.g. \"Modality='CT'\"")


def _sibling(index_path: Path, name: str) -> Path | None:
    path = index_path.parent / name
    return path if path.is_file() else None


_inherited_connections: list = []


class IndexViews:
    """The index of one selection's release as the duckdb view `idx`, on this process's connection."""

    def __init__(self, index_path: Path, selection: Selection):
        self.index_path = Path(index_path)
        self.prior_path = _sibling(self.index_path, PRIOR_VERSIONS_FILE)
        self.selection = selection
        self.spell = selection.spell
        # What `idx` is: the index's own release, or release N from the index plus prior_versions_index.
        # Replayed on a forked child's connection, and part of the tree cache's key.
        self.view_statements = ["CREATE VIEW idx AS SELECT * FROM current"]
        self._connection, self._pid = self._connect(), os.getpid()
        self.current_version = self._current_version()
        self.release = self._choose_release(selection.idc_version)
        self.earlier_versions = 0  # series versions a manifest named from releases before self.release

    @property
    def idc_version(self) -> str:
        """The IDC release `idx` is (v25), or '' when the index does not say."""
        return "" if self.release is None else f"v{self.release}"

    # -- the connection

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(":memory:", config={"threads": 2})
        index_path, index = self.index_path, self.spell("index")
        try:
            con.execute(f"CREATE VIEW current AS SELECT * FROM read_parquet({_sql_str(str(index_path))})")
            columns = [r[0] for r in con.execute("DESCRIBE current").fetchall()]
        except duckdb.Error as e:
            raise SelectionError(f"cannot read {index} {index_path}: {_one_line(e)}") from None
        missing = set(INDEX_COLUMNS) - set(columns)
        if missing:
            raise SelectionError(f"{index} {index_path} is not an IDC index: missing columns {sorted(missing)}")
        allowed = [index_path]
        if self.prior_path is not None:
            con.execute(f"CREATE VIEW prior AS SELECT * FROM read_parquet({_sql_str(str(self.prior_path))})")
            allowed.append(self.prior_path)
        for statement in self.view_statements:
            con.execute(statement)
        self.columns = [r[0] for r in con.execute("DESCRIBE idx").fetchall()]
        # The filter may read nothing but the index, and nothing may change the settings after this.
        paths = ", ".join(_sql_str(str(q)) for p in allowed for q in (p, p.resolve()))
        con.execute(f"SET allowed_paths = [{paths}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """This process's duckdb connection. A forked child (a DataLoader worker) keeps the parent's tree,
        which it shares copy-on-write, but not its connection: duckdb does not survive fork."""
        if self._pid != os.getpid():
            _inherited_connections.append(self._connection)  # never used, closed or collected in the child
            self._connection, self._pid = self._connect(), os.getpid()
        return self._connection

    def reconnect(self) -> None:
        """A fresh connection with the same views. duckdb's allocator keeps what a sort used (500 MB for the
        whole index) until its connection is closed: a fresh one costs milliseconds."""
        self._connection.close()
        self._connection = self._connect()

    def _redefine_idx(self, *statements: str) -> None:
        """Replace the `idx` view (kept, so that a forked child's own connection gets the same one)."""
        self.view_statements = ["DROP VIEW idx", *statements]
        for statement in self.view_statements:
            self.con.execute(statement)
        self.view_statements = list(statements)
        self.columns = [r[0] for r in self.con.execute("DESCRIBE idx").fetchall()]

    # -- releases

    def _current_version(self) -> int | None:
        """The IDC release of the index: version_metadata_index beside it, else its newest revision."""
        versions = _sibling(self.index_path, VERSIONS_FILE)
        if versions is not None:
            try:
                [(v,)] = duckdb.execute(
                    f"SELECT max(idc_version) FROM read_parquet({_sql_str(str(versions))})"
                ).fetchall()
                if v is not None:
                    return int(v)
            except duckdb.Error as e:
                log.warning("ignoring %s: %s", versions, _one_line(e))
        if "series_revised_idc_version" not in self.columns:
            return None
        [(v,)] = self.con.execute("SELECT max(series_revised_idc_version) FROM current").fetchall()
        return None if v is None else int(v)

    def _need_prior(self, why: str) -> None:
        index = f"{self.spell('index')} {self.index_path}"
        if self.prior_path is None:
            raise SelectionError(f"{why} needs {PRIOR_VERSIONS_FILE} beside {index}")
        if "series_revised_idc_version" not in self.columns:
            raise SelectionError(f"{why} needs the column series_revised_idc_version in {index}")

    def _choose_release(self, wanted: int | None) -> int | None:
        if wanted is None or wanted == self.current_version:
            return self.current_version
        asked = f"{self.spell('idc_version')} {wanted}"
        self._need_prior(asked)
        if self.current_version is None or not 1 <= wanted <= self.current_version:
            raise SelectionError(f"{asked} is not an IDC release: give 1 to {self.current_version}")
        # Series of release N: current versions that existed by then, and the versions N had that later
        # releases revised or removed. Those are few (tens of thousands), so they are materialized.
        self._redefine_idx(
            "CREATE TEMP TABLE earlier AS "
            + self._prior_sql(f"min(min_idc_version) <= {wanted} AND max(max_idc_version) >= {wanted}"),
            f"CREATE VIEW idx AS {self._current_sql(f'series_revised_idc_version <= {wanted}')} "
            "UNION ALL BY NAME SELECT * FROM earlier",
        )
        return wanted

    def _current_sql(self, where: str = "TRUE") -> str:
        return (
            f"SELECT *, series_revised_idc_version AS min_idc_version, {self.current_version} AS max_idc_version "
            f"FROM current WHERE {where}"
        )

    def _prior_sql(self, having: str) -> str:
        """One row per earlier series version, shaped like the index.

        A version spans one row per storage bucket it was served from; its objects are read from the latest.
        The index has no license or DOI of an earlier version: those of the series' current version are given
        (IDC keeps license and DOI as current metadata of a series); NULL for series IDC has removed.
        """
        current = [c for c in ("license_short_name", "source_DOI", "analysis_result_id") if c in self.columns]
        picked = "".join(f", c.{c}" for c in current)
        init = (
            ", least(c.init, v.min_idc_version)" if "series_init_idc_version" in self.columns else ", v.min_idc_version"
        )
        return f"""
            SELECT v.*, v.min_idc_version AS series_revised_idc_version{init} AS series_init_idc_version,
                   's3://' || v.aws_bucket || '/' || v.crdc_series_uuid || '/*' AS series_aws_url{picked}
            FROM (
                SELECT crdc_series_uuid,
                       arg_max(collection_id, max_idc_version) AS collection_id,
                       arg_max(PatientID, max_idc_version) AS PatientID,
                       arg_max(StudyInstanceUID, max_idc_version) AS StudyInstanceUID,
                       arg_max(SeriesInstanceUID, max_idc_version) AS SeriesInstanceUID,
                       arg_max(Modality, max_idc_version) AS Modality,
                       arg_max(aws_bucket, max_idc_version) AS aws_bucket,
                       max(series_size_MB) AS series_size_MB,
                       min(min_idc_version) AS min_idc_version,
                       max(max_idc_version) AS max_idc_version
                FROM prior GROUP BY crdc_series_uuid HAVING {having}
            ) v
            LEFT JOIN (
                SELECT SeriesInstanceUID{"".join(f", any_value({c}) AS {c}" for c in current)}
                       {", min(series_init_idc_version) AS init" if "series_init_idc_version" in self.columns else ""}
                FROM current WHERE SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM prior)  -- a third of the time
                GROUP BY SeriesInstanceUID
            ) c USING (SeriesInstanceUID)"""

    # -- the selection

    def where(self) -> tuple[str, list]:
        """The selection as a WHERE condition over `idx`, and its parameters; SelectionError if it is bad.
        Call it once: a manifest naming earlier versions adds them to `idx` first."""
        sel, con, spell = self.selection, self.con, self.spell
        clauses, params = ["TRUE"], []
        if sel.filter is not None:
            if not sel.filter.strip():
                raise SelectionError(f"empty {spell('filter')}: give a WHERE condition such as \"Modality='CT'\"")
            _validate_filter(con, sel.filter, spell)
            try:
                con.execute(f"SELECT count(*) FROM idx WHERE ({sel.filter}) LIMIT 0").fetchall()
            except duckdb.Error as e:
                raise SelectionError(f"invalid {spell('filter')} SQL: {_one_line(e)}") from None
            clauses.append(f"({sel.filter})")
        if sel.collections:
            known = {r[0] for r in con.execute("SELECT DISTINCT collection_id FROM idx").fetchall()}
            for c in sel.collections:
                if c not in known:
                    raise SelectionError(
                        f"unknown {spell('collection')} {c!r}; list them with: ls MOUNTPOINT after a plain mount"
                    )
            clauses.append("collection_id IN (SELECT unnest(?))")
            params.append(list(sel.collections))
        if sel.licenses:
            clauses.append("license_short_name IN (SELECT unnest(?))")
            params.append(self._licenses(sel.licenses))
        if sel.manifest is not None:
            clauses.append(self._manifest_clause(sel.manifest, params))
        return " AND ".join(clauses), params

    def _licenses(self, wanted: tuple[str, ...]) -> list[str]:
        """--license values as license_short_name values; COMMERCIAL stands for every CC BY and CC0 license."""
        spell = self.spell
        if "license_short_name" not in self.columns:
            raise SelectionError(
                f"{spell('license')} needs the column license_short_name in {spell('index')} {self.index_path}"
            )
        known = [r[0] for r in self.con.execute("SELECT DISTINCT license_short_name FROM idx ORDER BY 1").fetchall()]
        known = [k for k in known if k is not None]
        by_lower = {k.lower(): k for k in known}
        names = []
        for w in wanted:
            if w.strip().lower() == COMMERCIAL:
                names += [k for k in known if _COMMERCIAL_LICENSE.match(k)]
            elif w.strip().lower() in by_lower:
                names.append(by_lower[w.strip().lower()])
            else:
                raise SelectionError(
                    f"unknown {spell('license')} {w!r}: give {COMMERCIAL!r} or one of "
                    + ", ".join(repr(k) for k in known)
                )
        return sorted(set(names))

    def _manifest_clause(self, manifest: Path, params: list) -> str:
        """Series a manifest names. A crdc_series_uuid of an earlier version is served as that version (with
        --idc-version N, it must be a version of release N); a SeriesInstanceUID names the release's version."""
        spell = self.spell
        uuids, uids = parse_manifest(manifest, spell)
        named = f"{spell('manifest')} {manifest}"
        con = self.con
        found = con.execute(
            "SELECT crdc_series_uuid, SeriesInstanceUID FROM idx "
            "WHERE crdc_series_uuid IN (SELECT unnest(?)) OR SeriesInstanceUID IN (SELECT unnest(?))",
            [uuids, uids],
        ).fetchall()
        seen = {u for row in found for u in row}
        earlier = [u for u in dict.fromkeys(uuids) if u not in seen]
        if earlier and self.prior_path is not None and "series_revised_idc_version" in self.columns:
            ranges = dict(
                con.execute(
                    "SELECT crdc_series_uuid, min(min_idc_version) || '-' || max(max_idc_version) FROM prior "
                    "WHERE crdc_series_uuid IN (SELECT unnest(?)) GROUP BY 1",
                    [earlier],
                ).fetchall()
            )
            if ranges and self.release != self.current_version:
                u = next(iter(ranges))
                releases = "v" + ranges[u].replace("-", "-v")
                version = spell("idc_version")
                raise SelectionError(
                    f"{named}: series {u} is a version from IDC releases {releases}, "
                    f"not from {version} {self.release}; drop {version} to mount the versions it names"
                )
            if ranges:
                self._redefine_idx(
                    "CREATE TEMP TABLE earlier AS "
                    + self._prior_sql(f"crdc_series_uuid IN ({', '.join(_sql_str(u) for u in ranges)})"),
                    f"CREATE VIEW idx AS {self._current_sql()} UNION ALL BY NAME SELECT * FROM earlier",
                )
                self.earlier_versions = len(ranges)
                seen |= set(ranges)
        unknown = [u for u in uuids + uids if u not in seen]
        if unknown:
            raise SelectionError(
                f"{named}: {len(unknown)} series not in the index"
                + (f" (IDC {self.idc_version})" if self.idc_version else "")
                + f", first {unknown[0]}"
            )
        twice = con.execute(
            "SELECT SeriesInstanceUID, list(crdc_series_uuid ORDER BY crdc_series_uuid) FROM idx "
            "WHERE crdc_series_uuid IN (SELECT unnest(?)) OR SeriesInstanceUID IN (SELECT unnest(?)) "
            "GROUP BY 1 HAVING count(*) > 1 LIMIT 1",
            [uuids, uids],
        ).fetchall()
        if twice:
            [(uid, versions)] = twice
            raise SelectionError(
                f"{named} names {len(versions)} versions of series {uid} "
                f"({', '.join(versions)}): one directory holds one version; keep one of them"
            )
        params += [uuids, uids]
        return "(crdc_series_uuid IN (SELECT unnest(?)) OR SeriesInstanceUID IN (SELECT unnest(?)))"
