"""idcfs.Index: the tree's index in Python. Query it with SQL, map paths to metadata and back.

No I/O beyond the index file: paths are those of a mount or of idc:// with the
same selection and template, relative to the root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from .errors import as_keyword
from .namespace import Namespace
from .options import SELECTION_OPTIONS, TREE_OPTIONS, Options
from .selection import _one_line


class Index:
    """The selected series of the IDC index, laid out as the tree.

        ix = idcfs.Index(filter="collection_id = 'rider_pilot'")
        ix.sql("SELECT Modality, count(*) AS n FROM index GROUP BY Modality").to_pandas()
        ix.sql("SELECT path FROM index WHERE Modality = 'CT'")["path"].to_pylist()
        ix.path("1.3.6.1.4.1.9328.50.1.2")      # SeriesInstanceUID (or crdc_series_uuid, StudyInstanceUID)
        ix.metadata("rider_pilot/RIDER-1129164940/1.3.6.../CT_1.3.6...")

    Options are those of `idcfs mount` that choose the tree (filter, manifest, collections, licenses,
    idc_version, template or layout, index, cache_dir); a bad one raises ValueError naming it.
    Make an Index in the process that uses it: its duckdb connection does not survive fork.
    """

    def __init__(self, *, _namespace: Namespace | None = None, **options: Any):
        if _namespace is None:
            allowed = (*SELECTION_OPTIONS, *TREE_OPTIONS)
            _namespace = Options.make(as_keyword, allowed=allowed, create_cache_dir=False, **options).namespace()
        self.ns = _namespace
        # A connection of its own (a cursor): the engine's may be busy in another thread.
        self._con = _namespace._con.cursor()
        self._con.register("tree", _namespace.series_paths())
        self._con.execute(
            'CREATE TEMP VIEW "index" AS SELECT idx.*, tree.path '
            "FROM idx JOIN tree USING (crdc_series_uuid) ORDER BY tree.tree_row"
        )

    @property
    def columns(self) -> list[str]:
        """The columns of the `index` view: the index's, then `path`."""
        return [*self.ns.columns, "path"]

    def __len__(self) -> int:
        return self.ns.num_series

    def sql(self, query: str, params: Sequence | None = None) -> pa.Table:
        """Run SQL over the view `index` (one row per selected series, with its directory `path`).

        Returns a pyarrow Table (.to_pandas(), .to_pylist()). The SQL can read nothing but the index.
        """
        try:
            relation = self._con.sql(query, params=params or None)
            if relation is None:  # a statement, not a query
                raise ValueError("it returns no rows: give a query, e.g. SELECT * FROM index")
            return relation.to_arrow_table()
        except Exception as e:  # duckdb's errors: syntax, binder, catalog
            raise ValueError(f"invalid SQL: {_one_line(e)}") from None

    def paths(self, where: str = "TRUE", params: Sequence | None = None) -> list[str]:
        """Series directory paths whose index row satisfies a WHERE condition, in tree order."""
        return self.sql(f"SELECT path FROM index WHERE ({where})", params)["path"].to_pylist()

    def path(self, uid: str) -> str:
        """The directory of a series (crdc_series_uuid or SeriesInstanceUID), or the directory holding all series
        of a study (StudyInstanceUID). KeyError if the selection has none."""
        rows = self.sql(
            "SELECT path, ? NOT IN (crdc_series_uuid, SeriesInstanceUID) AS study FROM index "
            "WHERE ? IN (crdc_series_uuid, SeriesInstanceUID, StudyInstanceUID)",
            [uid, uid],
        ).to_pylist()
        if not rows:
            raise KeyError(f"{uid} is not a series or study of this selection")
        paths = [r["path"] for r in rows]
        if not rows[0]["study"]:
            return paths[0]
        level = self.ns.study_level()
        if level is not None:  # the template has a study level
            return "/".join(paths[0].split("/")[: level + 1])
        common = os.path.commonpath(paths)
        if not common:
            raise KeyError(f"{uid}: its series are in different top-level directories")
        return common

    def metadata(self, path: str | os.PathLike) -> dict[str, str]:
        """What the index says about a path: all columns of a series directory or of a file in it, or the
        template attributes that name a directory above; for a directory, also what its subtree holds
        (series_count, and licenses and source_DOIs as JSON of series counts), as the mount's xattrs.

        A file's metadata adds its name and crdc_instance_uuid (the name without .dcm); whether the
        file exists is known only after a LIST, which the Index does not make.
        """
        parts = [p for p in str(path).strip("/").split("/") if p]
        dir_id, extra = 0, {}
        for depth, name in enumerate(parts):
            if self.ns.is_leaf(dir_id) and depth == len(parts) - 1:
                extra = {"file": name, "crdc_instance_uuid": name.removesuffix(".dcm")}
                break
            child = self.ns.lookup(dir_id, name)
            if child is None:
                raise FileNotFoundError(f"{'/'.join(parts[: depth + 1])} is not in this selection")
            dir_id = child
        rows = self.ns.rows_in(dir_id)
        first = self.ns.series_at(rows[0]).crdc_series_uuid
        meta = self.ns.series_metadata(first, self._con)
        if not self.ns.is_leaf(dir_id) or len(rows) > 1:
            level = self.ns.dir_of(dir_id)[0]
            keep = self.ns.attributes_at(level) if level >= 0 else ["idc_version"]
            meta = {k: v for k, v in meta.items() if k in keep}
        if not extra:
            meta |= self.ns.summary(dir_id)
        return {**meta, "path": "/".join(parts[: len(parts) - bool(extra)]), **extra}
