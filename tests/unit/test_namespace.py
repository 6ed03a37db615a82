"""Unit tests of the namespace: templates, escaping, manifests and selections over a crafted index."""

from __future__ import annotations

import collections
import json
import time

import pytest

from idcfs.namespace import (
    DEFAULT_TEMPLATE,
    LAYOUTS,
    Namespace,
    escape_component,
    escape_value,
    parse_template,
    template_for,
    unescape,
)
from idcfs.selection import Selection, SelectionError, parse_manifest

from ..conftest import INDEX, idcfs


def walk(ns: Namespace, dir_id=0, prefix=()):
    for name, child in ns.subdirs(dir_id):
        path = prefix + (name,)
        yield path, child
        yield from walk(ns, child, path)


def test_escape_round_trip():
    for v in ["abc", "ZZ RIDER MR8 1", "a/b", "50%", "\0", "x%2Fy"]:
        assert unescape(escape_component(escape_value(v))) == v
    assert escape_component(escape_value("..")) == "%2E%2E"
    assert escape_component(escape_value("")) == "%"
    assert escape_value("ZZ RIDER MR8 1") == "ZZ RIDER MR8 1"


def test_template_grammar():
    assert len(parse_template(DEFAULT_TEMPLATE)) == 4
    assert len(parse_template("%collection_id-%Modality/%PatientID_%SeriesInstanceUID")) == 2
    readable = parse_template(LAYOUTS["readable"])
    assert [level.identity for level in readable] == [None, None, "StudyInstanceUID", "SeriesInstanceUID"]
    # Templates of idc-index's attributes alone group as idc download does: nothing is told apart.
    assert not any(level.identity for level in parse_template("%collection_id/%Modality"))
    assert [lv.identity for lv in parse_template("%BodyPartExamined/%SeriesNumber %SeriesInstanceUID")] == [None] * 2
    for bad in ["%Manufacturer", "%collection_id/%PatientID.%Modality", "", " ", "%collection_id//%PatientID", "foo"]:
        with pytest.raises(SelectionError):
            parse_template(bad)
    assert template_for(None, None) == DEFAULT_TEMPLATE == template_for(None, "idc")
    with pytest.raises(SelectionError, match="--template or --layout, not both"):
        template_for("%collection_id", "readable")
    with pytest.raises(SelectionError, match="bad --layout 'nice': use one of idc, readable"):
        template_for(None, "nice")


def _told_apart(name: str, uid: str) -> str | None:
    """The " (<end of uid>)" a readable name carries, if any."""
    if name.endswith(")") and " (" in name:
        tail = name.rsplit(" (", 1)[1][:-1]
        if len(tail) in (6, 12, len(uid)) and uid.endswith(tail):
            return tail
    return None


def test_readable_names_of_real_rows_that_collide(tmp_path):
    """Real index rows whose readable names collide: three studies of one patient on one day with one
    description, four series of one study with one number and description, and two slides whose UIDs end
    alike for 6 characters. Each gets a name of its own, the same in every build."""
    import duckdb

    study = "'2.25.266225223327222238975926995912371654245'"  # two SM series: UIDs ...1768649.4.0, ...0642149.4.0
    where = (
        "PatientID = 'UPENN-GBM-00001' OR StudyInstanceUID IN (" + study + ", "
        "'1.3.6.1.4.1.14519.5.2.1.1620.1225.166602911533426980637905958667')"
    )
    ns = Namespace(INDEX, LAYOUTS["readable"], Selection(filter=where), cache_dir=tmp_path)
    paths = ns.series_paths().to_pylist()
    assert len({p["path"] for p in paths}) == len(paths) == ns.num_series > 10
    uids = {
        u: (study_uid, series_uid)
        for u, study_uid, series_uid in duckdb.execute(
            "SELECT crdc_series_uuid, StudyInstanceUID, SeriesInstanceUID FROM read_parquet(?)", [str(INDEX)]
        ).fetchall()
        if u in {p["crdc_series_uuid"] for p in paths}
    }
    named = [(p["path"].split("/"), *uids[p["crdc_series_uuid"]]) for p in paths]
    same_day = {parts[2] for parts, st, _ in named if parts[2].startswith("2002-02-06 BRAIN^ROUTINE (")}
    assert len(same_day) >= 2
    assert all(len(_told_apart(parts[2], st) or "") == 6 for parts, st, _ in named if parts[2] in same_day)
    mg = [(parts[3], se) for parts, _, se in named if parts[3].startswith("1 MG V-Preview (")]
    assert len(mg) == 4 and len({_told_apart(n, se) for n, se in mg}) == 4, mg
    slides = [(parts[3], se) for parts, _, se in named if parts[3].startswith("1 SM FZ HE T (")]
    assert sorted(_told_apart(n, se) for n, se in slides) == ["51768649.4.0", "60642149.4.0"], slides  # 12
    for level, which in ((2, 1), (3, 2)):  # suffixed exactly when another under the same parent reads the same
        bases = collections.defaultdict(set)
        for row in named:
            parts, uid = row[0], row[which]
            tail = _told_apart(parts[level], uid)
            base = parts[level][: -len(tail) - 3] if tail else parts[level]
            bases[("/".join(parts[:level]), base)].add((uid, tail))
        for (_, base), found in bases.items():
            assert all((tail is not None) == (len(found) > 1) for _, tail in found), (base, found)
    again = Namespace(INDEX, LAYOUTS["readable"], Selection(filter=where), cache_dir=None)
    assert again.series_paths().to_pylist() == paths


def test_readable_values_are_tidied_cut_and_escaped(small_index, tmp_path):
    import duckdb

    crafted = tmp_path / "crafted.parquet"
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE t AS SELECT * FROM read_parquet('{small_index}') WHERE collection_id = 'rider_phantom_mri'"
    )
    series = [
        ("x" * 80, "9.9.1"),  # a long description, cut
        ("", "1.2.3.99999999999999"),  # blank: the placeholder; two UIDs alike in their last 12 characters
        ("\t\n", "1.2.4.99999999999999"),  # only blanks: the same placeholder
        ("  T2*\t[ax]?  50% ", "9.9.4"),  # glob characters and % escaped, blanks made one space
        (None, "9.9/5"),  # a UID with a slash, told apart from the two above by its escaped end
    ]
    for i, (description, uid) in enumerate(series):
        con.execute(
            "INSERT INTO t SELECT * REPLACE (?::VARCHAR AS SeriesDescription, ? AS SeriesInstanceUID, "
            "? AS crdc_series_uuid, 'P' AS PatientID, '2.9' AS StudyInstanceUID, NULL AS StudyDate, "
            "'7' AS SeriesNumber, '  CHEST   W/O\tCONTRAST ' AS StudyDescription) "
            "FROM t WHERE collection_id = 'rider_phantom_mri' LIMIT 1",
            [description, uid, f"00000000-0000-0000-0000-00000000001{i}"],
        )
    con.execute(f"COPY (SELECT * FROM t WHERE PatientID = 'P') TO '{crafted}' (FORMAT parquet)")
    ns = Namespace(crafted, LAYOUTS["readable"])
    got = sorted(p["path"].rsplit("/", 1)[1] for p in ns.series_paths().to_pylist())
    parent = {p["path"].rsplit("/", 1)[0] for p in ns.series_paths().to_pylist()}
    assert parent == {"rider_phantom_mri/P/no date CHEST W%2FO CONTRAST"}
    modality = got[0].split(" ")[1]
    assert got == [
        f"7 {modality} T2%2A %5Bax%5D%3F 50%25",
        f"7 {modality} no description (.9%2F5)",  # its last 6 characters, escaped, tell it apart
        f"7 {modality} no description (1.2.3.99999999999999)",  # 6 and 12 characters do not: the whole UID
        f"7 {modality} no description (1.2.4.99999999999999)",
        f"7 {modality} " + "x" * 64,
    ]
    for name in got:
        assert "/" not in name and not any(c in name for c in "*?[]")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_hostile_names_never_escape_the_tree(small_index, layout):
    ns = Namespace(small_index, LAYOUTS[layout])
    names = {p[1] for p, _ in walk(ns) if len(p) == 2 and p[0] == "4d_lung"}
    assert {"%2E%2E", "a%2Fb", "%2E", "%", "x%252Fy", "evil%2F..%2F..%2Fetc"} <= names
    for path, _ in walk(ns):
        for comp in path:
            assert comp not in ("", ".", "..") and "/" not in comp and "\0" not in comp


def test_tree_is_consistent(small_index):
    ns = Namespace(small_index)
    seen = set()
    for path, dir_id in walk(ns):
        assert dir_id not in seen
        seen.add(dir_id)
        parent = 0
        for comp in path:
            parent = ns.lookup(parent, comp)
        assert parent == dir_id
        assert ns.lookup(dir_id if not ns.is_leaf(dir_id) else 0, "no-such-name") is None
    leaves = [d for p, d in walk(ns) if ns.is_leaf(d)]
    assert sum(len(ns.series_in(d)) for d in leaves) == ns.num_series
    assert len(seen) == ns.num_dirs


def test_readdir_offsets(small_index):
    ns = Namespace(small_index)
    whole = ns.subdirs(0)
    assert ns.subdirs(0, 1) == whole[1:]
    assert ns.subdirs(0, len(whole)) == []
    # Windows of a readdir, put together, are the whole listing.
    for count in (1, 2, 3):
        assert [e for start in range(0, len(whole), count) for e in ns.subdirs(0, start, count)] == whole
    assert ns.subdirs(0, len(whole) - 1, 10) == whole[-1:]


def test_selection(small_index, tmp_path):
    ns = Namespace(small_index, selection=Selection(filter="Modality='MR' AND collection_id='rider_phantom_mri'"))
    assert [n for n, _ in ns.subdirs(0)] == ["rider_phantom_mri"]
    ns = Namespace(small_index, selection=Selection(collections=("4d_lung",)))
    assert [n for n, _ in ns.subdirs(0)] == ["4d_lung"]
    with pytest.raises(SelectionError, match="unknown --collection"):
        Namespace(small_index, selection=Selection(collections=("nope",)))
    for bad in [
        "1=1) UNION SELECT 1 --",
        "1=1; DROP TABLE idx",
        "x = (SELECT 1 FROM read_csv('/etc/passwd'))",
        "''=''; COPY idx TO '/tmp/x.csv'",
        "NoSuch = 1",
        "",
    ]:
        with pytest.raises(SelectionError):
            Namespace(small_index, selection=Selection(filter=bad))


def test_manifest_formats(tmp_path):
    m = tmp_path / "m.txt"
    m.write_text(
        "# portal export\n"
        "cp s3://idc-open-data/3078b660-4db2-4f82-9b2a-afb3b8dd28b4/* .\n"
        "cp s3://idc-open-data-cr/058a0528-c295-412c-bbcb-4afa3f6f05e0/* .\n"
        "gs://idc-open-idc1/01742e03-18ba-42a4-8a21-a6bcb57c3cc4/\n"
        "AF22BFC6-52AA-4202-A34E-3A65994DC3C7\n"
        "1.2.840.113654.2.55.123804397497334105778006135262862115094\n\n"
    )
    uuids, uids = parse_manifest(m)
    assert len(uuids) == 4 and uuids[3] == "af22bfc6-52aa-4202-a34e-3a65994dc3c7"
    assert uids == ["1.2.840.113654.2.55.123804397497334105778006135262862115094"]
    m.write_text("cp s3://idc-open-data/not-a-uuid/* .\n")
    with pytest.raises(SelectionError, match="line 1"):
        parse_manifest(m)
    m.write_text("")
    with pytest.raises(SelectionError, match="names no series"):
        parse_manifest(m)


def test_tree_cache_gives_the_same_tree(small_index, tmp_path):
    fresh = list(walk(Namespace(small_index, cache_dir=tmp_path)))
    assert len(list((tmp_path / "trees").glob("*.arrow"))) == 1
    cached = list(walk(Namespace(small_index, cache_dir=tmp_path)))
    assert cached == fresh
    # A different selection is a different cache entry.
    Namespace(small_index, selection=Selection(collections=("4d_lung",)), cache_dir=tmp_path)
    assert len(list((tmp_path / "trees").glob("*.arrow"))) == 2
    # A torn cache file is ignored, not trusted.
    for f in (tmp_path / "trees").glob("*.arrow"):
        f.write_bytes(f.read_bytes()[:100])
    assert list(walk(Namespace(small_index, cache_dir=tmp_path))) == fresh


def test_tree_files_are_capped_least_recently_used_first(small_index, tmp_path, monkeypatch):
    from idcfs import treecache

    trees = tmp_path / "trees"
    kinds = {"a": ("4d_lung",), "b": ("rider_phantom_mri",), "c": ("acrin_contralateral_breast_mr",)}

    def tree(kind):
        before = set(trees.glob("*.arrow"))
        ns = Namespace(small_index, selection=Selection(collections=kinds[kind]), cache_dir=tmp_path)
        new = set(trees.glob("*.arrow")) - before
        return ns, new.pop() if new else None

    sizes = {k: tree(k)[1].stat().st_size for k in kinds}
    assert treecache.clear(trees) == 3 and not list(trees.glob("*.arrow"))
    monkeypatch.setattr(treecache, "TREES_CAP", sizes["a"] + sizes["c"])
    ns_a, a = tree("a")
    _, b = tree("b")
    time.sleep(0.02)
    assert tree("a")[1] is None  # mapped again, not rebuilt: now more recently used than b
    time.sleep(0.02)
    _, c = tree("c")
    assert sorted(trees.glob("*.arrow")) == sorted([a, c])  # b was dropped to stay under the cap
    assert list(walk(ns_a))  # a mount mapping a dropped file keeps reading it; here a is kept anyway
    r = idcfs("cache", "stats", "--json", "--cache-dir", tmp_path)
    stats = json.loads(r.stdout)
    assert (stats["trees"], stats["trees_bytes"]) == (2, sizes["a"] + sizes["c"]), r.stderr
    r = idcfs("cache", "clear", "--trees", "--cache-dir", tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("cleared 2 trees"), r.stderr
    assert json.loads(idcfs("cache", "stats", "--json", "--cache-dir", tmp_path).stdout)["trees"] == 0
