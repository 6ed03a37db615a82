"""The selection (idcfs.selection) over small indexes cut from the shipped one: every error in both spellings,
manifests, licenses and earlier releases. Needs only the base install; no servers, no mounts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import idc_index_data
import pytest

from idcfs import namespace
from idcfs.errors import UsageError, as_flag, as_keyword
from idcfs.namespace import LAYOUTS, Namespace, parse_template, template_for
from idcfs.selection import COMMERCIAL, IndexViews, Selection, SelectionError, parse_manifest

INDEX = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
PRIOR = INDEX.with_name("prior_versions_index.parquet")
VERSIONS = INDEX.with_name("version_metadata_index.parquet")
# Small collections: one with versions from IDC v2-v4 in prior_versions_index, one under the NLM's terms, one
# CC BY 3.0 and one CC BY-NC 3.0.
COLLECTIONS = (
    "pseudo_phi_dicom_data",
    "nlm_visible_human_project",
    "rider_phantom_mri",
    "nsclc_radiomics_interobserver1",
)
NOT_IN_INDEX = "00000000-1111-2222-3333-444444444444"


@dataclass
class Files:
    dir: Path
    full: Path  # the cut index with prior_versions_index and version_metadata_index beside it
    bare: Path  # the cut index alone
    stripped: Path  # without series_revised_idc_version, license_short_name and StudyDate; prior beside it
    current: int  # the release version_metadata_index names
    old: str  # a crdc_series_uuid only in prior_versions_index, of a series still in the index
    new: str  # that series' crdc_series_uuid in the index
    lo: int  # the releases that served `old`
    hi: int


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    d = tmp_path_factory.mktemp("selection")
    full, bare, stripped = (d / n / "idc_index.parquet" for n in ("full", "bare", "stripped"))
    for f in (full, bare, stripped):
        f.parent.mkdir()
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE t AS SELECT * FROM read_parquet('{INDEX}') WHERE collection_id IN (SELECT unnest(?))",
        [list(COLLECTIONS)],
    )
    for f in (full, bare):
        con.execute(f"COPY t TO '{f}' (FORMAT parquet)")
    prior = full.with_name(PRIOR.name)
    con.execute(
        f"COPY (SELECT * FROM read_parquet('{PRIOR}') WHERE collection_id IN (SELECT unnest(?)) "
        f"OR SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM t)) TO '{prior}' (FORMAT parquet)",
        [list(COLLECTIONS)],
    )
    full.with_name(VERSIONS.name).symlink_to(VERSIONS)
    con.execute(
        f"COPY (SELECT * EXCLUDE (series_revised_idc_version, license_short_name, StudyDate) FROM t) "
        f"TO '{stripped}' (FORMAT parquet)"
    )
    stripped.with_name(PRIOR.name).symlink_to(prior)
    con.execute(f"COPY (SELECT 1 AS x) TO '{d / 'notidc.parquet'}' (FORMAT parquet)")
    (d / "text.parquet").write_text("not parquet")
    [(current,)] = con.execute(f"SELECT max(idc_version) FROM read_parquet('{VERSIONS}')").fetchall()
    [(old, new, lo, hi)] = con.execute(
        f"""SELECT p.crdc_series_uuid, any_value(t.crdc_series_uuid), min(min_idc_version), max(max_idc_version)
            FROM read_parquet('{prior}') p JOIN t USING (SeriesInstanceUID)
            WHERE p.crdc_series_uuid NOT IN (SELECT crdc_series_uuid FROM t) AND t.collection_id = ?
            GROUP BY 1 ORDER BY 1 LIMIT 1""",
        [COLLECTIONS[0]],
    ).fetchall()
    return Files(d, full, bare, stripped, int(current), old, new, lo, hi)


def _manifest(files: Files, name: str, text: str) -> Path:
    path = files.dir / name
    path.write_text(text)
    return path


def _other_release(f: Files) -> int:
    """A release that did not serve f.old."""
    return f.hi + 1 if f.hi + 1 < f.current else f.lo - 1


# name: (what raises, given a Selection maker and the spelling arguments, message with --flags, with keywords).
# A message ending in "..." is compared up to there: the rest is duckdb's or the OS's.
CASES = {
    "both templates": (
        lambda f, S, *sp: template_for("%collection_id", "readable", *sp),
        "give --template or --layout, not both",
        "give template or layout, not both",
    ),
    "layout": (
        lambda f, S, *sp: template_for(None, "nice", *sp),
        "bad --layout 'nice': use one of idc, readable",
        "bad layout 'nice': use one of idc, readable",
    ),
    "template": (
        lambda f, S, *sp: parse_template("%Manufacturer", *sp),
        "bad --template '%Manufacturer': use only %PatientID, %collection_id, %Modality, %StudyInstanceUID, ...",
        "bad template '%Manufacturer': use only %PatientID, %collection_id, %Modality, %StudyInstanceUID, ...",
    ),
    "template level": (
        lambda f, S, *sp: Namespace(f.full, "%collection_id//%PatientID", S()),
        "bad --template '%collection_id//%PatientID': empty path level (two slashes in a row)",
        "bad template '%collection_id//%PatientID': empty path level (two slashes in a row)",
    ),
    "manifest unreadable": (
        lambda f, S, *sp: parse_manifest(f.dir / "nope.txt", *sp),
        "cannot read --manifest {dir}/nope.txt: [Errno 2] ...",
        "cannot read manifest {dir}/nope.txt: [Errno 2] ...",
    ),
    "manifest bucket": (
        lambda f, S, *sp: parse_manifest(_manifest(f, "m1", f"cp s3://evil/{NOT_IN_INDEX}/* .\n"), *sp),
        "--manifest {dir}/m1 line 1: s3://evil is not an IDC bucket",
        "manifest {dir}/m1 line 1: s3://evil is not an IDC bucket",
    ),
    "manifest line": (
        lambda f, S, *sp: parse_manifest(_manifest(f, "m2", "# a\n\nfoo bar\n"), *sp),
        "--manifest {dir}/m2 line 3: 'foo bar' is not an s5cmd cp line, a crdc_series_uuid or a SeriesInstanceUID",
        "manifest {dir}/m2 line 3: 'foo bar' is not an s5cmd cp line, a crdc_series_uuid or a SeriesInstanceUID",
    ),
    "manifest empty": (
        lambda f, S, *sp: Namespace(f.full, selection=S(manifest=_manifest(f, "m3", "# nothing\n"))),
        "--manifest {dir}/m3 names no series",
        "manifest {dir}/m3 names no series",
    ),
    "filter SQL": (
        lambda f, S, *sp: Namespace(f.full, selection=S(filter="Modality = = 'CT'")),
        "invalid --filter SQL: Parser Error: ...",
        "invalid filter SQL: Parser Error: ...",
    ),
    "filter statements": (
        lambda f, S, *sp: Namespace(f.full, selection=S(filter="TRUE); SELECT (1")),
        "invalid --filter: it must be a single WHERE condition, e.g. \"Modality='CT'\"",
        "invalid filter: it must be a single WHERE condition, e.g. \"Modality='CT'\"",
    ),
    "filter column": (
        lambda f, S, *sp: Namespace(f.full, selection=S(filter="NoSuch = 1")),
        'invalid --filter SQL: Binder Error: Referenced column "NoSuch" not found...',
        'invalid filter SQL: Binder Error: Referenced column "NoSuch" not found...',
    ),
    "filter empty": (
        lambda f, S, *sp: Namespace(f.full, selection=S(filter=" ")),
        "empty --filter: give a WHERE condition such as \"Modality='CT'\"",
        "empty filter: give a WHERE condition such as \"Modality='CT'\"",
    ),
    "collection": (
        lambda f, S, *sp: Namespace(f.full, selection=S(collections=("nope",))),
        "unknown --collection 'nope'; list them with: ls MOUNTPOINT after a plain mount",
        "unknown collections 'nope'; list them with: ls MOUNTPOINT after a plain mount",
    ),
    "license": (
        lambda f, S, *sp: Namespace(f.full, selection=S(licenses=("GPL",))),
        "unknown --license 'GPL': give 'commercial' or one of 'CC BY 3.0', ...",
        "unknown licenses 'GPL': give 'commercial' or one of 'CC BY 3.0', ...",
    ),
    "license column": (
        lambda f, S, *sp: Namespace(f.stripped, selection=S(licenses=(COMMERCIAL,))),
        "--license needs the column license_short_name in --index {dir}/stripped/idc_index.parquet",
        "licenses needs the column license_short_name in index {dir}/stripped/idc_index.parquet",
    ),
    "release after": (
        lambda f, S, *sp: Namespace(f.full, selection=S(idc_version=f.current + 1)),
        "--idc-version {next} is not an IDC release: give 1 to {current}",
        "idc_version {next} is not an IDC release: give 1 to {current}",
    ),
    "release 0": (
        lambda f, S, *sp: Namespace(f.full, selection=S(idc_version=0)),
        "--idc-version 0 is not an IDC release: give 1 to {current}",
        "idc_version 0 is not an IDC release: give 1 to {current}",
    ),
    "release without prior": (
        lambda f, S, *sp: Namespace(f.bare, selection=S(idc_version=3)),
        "--idc-version 3 needs prior_versions_index.parquet beside --index {dir}/bare/idc_index.parquet",
        "idc_version 3 needs prior_versions_index.parquet beside index {dir}/bare/idc_index.parquet",
    ),
    "release column": (
        lambda f, S, *sp: Namespace(f.stripped, selection=S(idc_version=3)),
        "--idc-version 3 needs the column series_revised_idc_version in --index {dir}/stripped/idc_index.parquet",
        "idc_version 3 needs the column series_revised_idc_version in index {dir}/stripped/idc_index.parquet",
    ),
    "index unreadable": (
        lambda f, S, *sp: Namespace(f.dir / "text.parquet", selection=S()),
        "cannot read --index {dir}/text.parquet: ...",
        "cannot read index {dir}/text.parquet: ...",
    ),
    "index not IDC": (
        lambda f, S, *sp: Namespace(f.dir / "notidc.parquet", selection=S()),
        "--index {dir}/notidc.parquet is not an IDC index: missing columns ['Modality', 'PatientID', ...",
        "index {dir}/notidc.parquet is not an IDC index: missing columns ['Modality', 'PatientID', ...",
    ),
    "template column": (
        lambda f, S, *sp: Namespace(f.stripped, LAYOUTS["readable"], S()),
        "--index {dir}/stripped/idc_index.parquet has no column StudyDate, which the template uses",
        "index {dir}/stripped/idc_index.parquet has no column StudyDate, which the template uses",
    ),
    "empty selection": (
        lambda f, S, *sp: Namespace(f.full, selection=S(filter="Modality = 'XX'")),
        "the selection is empty: no series match --filter/--collection/--manifest/--license/--idc-version",
        "the selection is empty: no series match filter/collections/manifest/licenses/idc_version",
    ),
    "manifest of another release": (
        lambda f, S, *sp: Namespace(
            f.full, selection=S(manifest=_manifest(f, "m4", f.old + "\n"), idc_version=_other_release(f))
        ),
        "--manifest {dir}/m4: series {old} is a version from IDC releases v{lo}-v{hi}, not from --idc-version "
        "{other}; drop --idc-version to mount the versions it names",
        "manifest {dir}/m4: series {old} is a version from IDC releases v{lo}-v{hi}, not from idc_version "
        "{other}; drop idc_version to mount the versions it names",
    ),
    "manifest not in index": (
        lambda f, S, *sp: Namespace(f.full, selection=S(manifest=_manifest(f, "m5", NOT_IN_INDEX + "\n"))),
        "--manifest {dir}/m5: 1 series not in the index (IDC v{current}), first " + NOT_IN_INDEX,
        "manifest {dir}/m5: 1 series not in the index (IDC v{current}), first " + NOT_IN_INDEX,
    ),
    "manifest of two versions": (
        lambda f, S, *sp: Namespace(f.full, selection=S(manifest=_manifest(f, "m6", f"{f.new}\n{f.old}\n"))),
        "--manifest {dir}/m6 names 2 versions of series {uid} ({versions}): one directory holds one version; "
        "keep one of them",
        "manifest {dir}/m6 names 2 versions of series {uid} ({versions}): one directory holds one version; "
        "keep one of them",
    ),
}


def _expected(f: Files, template: str) -> str:
    [(uid,)] = duckdb.execute(
        f"SELECT SeriesInstanceUID FROM read_parquet('{f.full}') WHERE crdc_series_uuid = ?", [f.new]
    ).fetchall()
    return template.format(
        dir=f.dir,
        current=f.current,
        next=f.current + 1,
        old=f.old,
        lo=f.lo,
        hi=f.hi,
        other=_other_release(f),
        uid=uid,
        versions=", ".join(sorted([f.old, f.new])),
    )


@pytest.mark.parametrize("spelling", ["default", "keyword"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_name_options_as_the_caller_wrote_them(files, case, spelling):
    """The default spelling gives the command line's messages, byte for byte; as_keyword Python's."""
    run, flag, keyword = CASES[case]
    if spelling == "default":  # nothing passed: the CLI's spelling
        with pytest.raises(SelectionError) as e:
            run(files, Selection)
        want = _expected(files, flag)
    else:
        with pytest.raises(SelectionError) as e:
            run(files, lambda **kw: Selection(spell=as_keyword, **kw), as_keyword)
        want = _expected(files, keyword)
        assert "--" not in str(e.value)
    got = str(e.value)
    if want.endswith("..."):
        assert got.startswith(want[:-3]), got
    else:
        assert got == want


def test_selection_error_is_a_usage_error():
    assert issubclass(SelectionError, UsageError) and issubclass(SelectionError, ValueError)
    assert namespace.SelectionError is SelectionError and namespace.Selection is Selection
    assert Selection().spell is as_flag


def test_manifest_lines(tmp_path):
    m = tmp_path / "m.txt"
    m.write_text(
        "  cp s3://idc-open-data-two/3078B660-4DB2-4F82-9B2A-AFB3B8DD28B4/* ./somewhere  \n"
        "gs://idc-open-cr/058a0528-c295-412c-bbcb-4afa3f6f05e0\n"  # no trailing slash: not a URL line
    )
    with pytest.raises(SelectionError, match="line 2: 'gs://idc-open-cr/058a0528"):
        parse_manifest(m)
    m.write_text("gs://idc-open-data-two/3078b660-4db2-4f82-9b2a-afb3b8dd28b4/*\n")  # an S3 name as a GCS bucket
    with pytest.raises(SelectionError, match=r"line 1: gs://idc-open-data-two is not an IDC bucket$"):
        parse_manifest(m)
    m.write_text(
        "  cp s3://idc-open-data-two/3078B660-4DB2-4F82-9B2A-AFB3B8DD28B4/* ./somewhere  \n"
        "gs://idc-open-cr/058a0528-c295-412c-bbcb-4afa3f6f05e0/*\n"
        "# 1.2.3\n"
        "1.2.840.10008.1\n"
    )
    assert parse_manifest(m) == (
        ["3078b660-4db2-4f82-9b2a-afb3b8dd28b4", "058a0528-c295-412c-bbcb-4afa3f6f05e0"],
        ["1.2.840.10008.1"],
    )
    m.write_text("x" * 200 + "\n")
    with pytest.raises(SelectionError) as e:
        parse_manifest(m)
    assert f"line 1: '{'x' * 80}' is not" in str(e.value)
    m.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SelectionError, match="cannot read --manifest"):
        parse_manifest(m)


def _uuids(ns: Namespace) -> set[str]:
    return set(ns.series_paths().column("crdc_series_uuid").to_pylist())


def test_manifest_selects_series_and_earlier_versions(files):
    [(uid,)] = duckdb.execute(
        f"SELECT SeriesInstanceUID FROM read_parquet('{files.full}') WHERE collection_id = ? ORDER BY 1 LIMIT 1",
        [COLLECTIONS[2]],
    ).fetchall()
    ns = Namespace(files.full, selection=Selection(manifest=_manifest(files, "n1", f"{uid}\n{files.old}\n")))
    [(by_uid,)] = duckdb.execute(
        f"SELECT crdc_series_uuid FROM read_parquet('{files.full}') WHERE SeriesInstanceUID = ?", [uid]
    ).fetchall()
    assert _uuids(ns) == {by_uid, files.old}
    assert ns.earlier_versions == 1 and ns.release == ns.current_version == files.current
    meta = ns.series_metadata(files.old)
    assert (meta["min_idc_version"], meta["max_idc_version"]) == (str(files.lo), str(files.hi))
    assert meta["idc_version"] == f"v{files.current}"
    assert ns.series_metadata(by_uid)["max_idc_version"] == str(files.current)


def test_licenses(files):
    def licenses(*wanted):
        ns = Namespace(files.full, selection=Selection(licenses=wanted))
        return set(json.loads(ns.summary(0)["licenses"]))

    nlm = "National Library of Medicine Terms and Conditions; May 21, 2019"
    everything = {"CC BY 3.0", "CC BY 4.0", "CC BY-NC 3.0", nlm}
    assert licenses(COMMERCIAL) == {"CC BY 3.0", "CC BY 4.0"}  # no NC, and not the NLM's terms
    assert licenses(" Commercial ", "cc by-nc 3.0") == {"CC BY 3.0", "CC BY 4.0", "CC BY-NC 3.0"}
    assert licenses(nlm.upper()) == {nlm}
    with pytest.raises(SelectionError) as e:
        licenses("CC BY-SA 4.0")
    assert str(e.value) == "unknown --license 'CC BY-SA 4.0': give 'commercial' or one of " + ", ".join(
        repr(k) for k in sorted(everything)
    )


def test_earlier_release_holds_what_it_served(files, tmp_path):
    release = files.lo
    [(want,)] = duckdb.execute(
        f"""SELECT list(u) FROM (
              SELECT crdc_series_uuid u FROM read_parquet('{files.full}') WHERE series_revised_idc_version <= $1
              UNION SELECT crdc_series_uuid FROM read_parquet('{files.full.with_name(PRIOR.name)}')
              GROUP BY crdc_series_uuid HAVING min(min_idc_version) <= $1 AND max(max_idc_version) >= $1)""",
        [release],
    ).fetchall()
    ns = Namespace(files.full, selection=Selection(idc_version=release), cache_dir=tmp_path)
    assert _uuids(ns) == set(want) and files.old in want and files.new not in want
    assert (ns.release, ns.current_version, ns.idc_version) == (release, files.current, f"v{release}")
    assert {"min_idc_version", "max_idc_version"} <= set(ns.columns)
    assert ns.series_metadata(files.old)["idc_version"] == f"v{release}"
    # The release is in the tree's cache key (through the view): a rebuild maps the same file, another
    # release gets its own.
    Namespace(files.full, selection=Selection(idc_version=release), cache_dir=tmp_path)
    assert len(list((tmp_path / "trees").glob("*.arrow"))) == 1
    Namespace(files.full, selection=Selection(idc_version=files.current), cache_dir=tmp_path)
    assert len(list((tmp_path / "trees").glob("*.arrow"))) == 2


def test_the_index_release_needs_no_prior_versions(files):
    """Without version_metadata_index, the index's release is its newest revision; asking for it is no error."""
    [(newest,)] = duckdb.execute(f"SELECT max(series_revised_idc_version) FROM read_parquet('{files.bare}')").fetchall()
    views = IndexViews(files.bare, Selection(idc_version=newest))
    assert (views.release, views.current_version, views.prior_path) == (newest, newest, None)
    assert views.view_statements == ["CREATE VIEW idx AS SELECT * FROM current"]
    assert IndexViews(files.stripped, Selection()).idc_version == ""  # no release to tell


def test_where_clause_and_parameters(files):
    views = IndexViews(files.full, Selection(filter="Modality = 'MR'", collections=COLLECTIONS[2:3]))
    where, params = views.where()
    assert where == "TRUE AND (Modality = 'MR') AND collection_id IN (SELECT unnest(?))"
    assert params == [[COLLECTIONS[2]]]
    [(n,)] = views.con.execute(f"SELECT count(*) FROM idx WHERE {where}", params).fetchall()
    assert n == Namespace(files.full, selection=views.selection).num_series > 0


def test_forked_child_gets_its_own_connection(files):
    ns = Namespace(files.full, selection=Selection(collections=COLLECTIONS[:1]))
    uuid = next(iter(_uuids(ns)))
    want = ns.series_metadata(uuid)
    ns._metadata.clear()
    parent = ns._con
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a query must not touch the parent's connection
        try:
            got = ns.series_metadata(uuid) == want and ns._con is not parent
            os.write(w, b"1" if got else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert ns._con is parent and ns.series_metadata(uuid) == want
