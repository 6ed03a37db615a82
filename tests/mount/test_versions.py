"""Releases, licenses and citations: --idc-version, manifests of earlier versions, --license, info, cite.

The sandbox holds one MR series in two versions: as IDC v2-v15 served it (a crdc_series_uuid found
only in prior_versions_index) and as revised in v16 (the current index). Expected values come from
duckdb queries over the shipped parquet files, not from idcfs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import fsspec
import idc_index_data
import pytest

from idcfs.citations import load_sources, parse_citation

from ..conftest import files_under, idcfs, licenses_of, read_all, series_dir, uuid_of

INDEX = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
PRIOR = INDEX.with_name("prior_versions_index.parquet")


def _two_versions(sandbox) -> tuple[dict, dict]:
    old = sandbox.earlier_series[0]
    new = next(s for s in sandbox.series if s["SeriesInstanceUID"] == old["SeriesInstanceUID"])
    return old, new


def _objects_of(objects: dict, uuid: str) -> dict[str, str]:
    return {k.split("/", 1)[1]: v for k, v in objects.items() if k.split("/")[1] == uuid}


def _leaves(root: Path) -> list[Path]:
    return sorted(Path(d) for d, _dirs, files in os.walk(root) if files)


def test_earlier_release_mount_shows_and_reads_the_old_version(mount, sandbox):
    old, new = _two_versions(sandbox)
    assert old["crdc_series_uuid"] != new["crdc_series_uuid"]
    [(lo, hi)], [(revised,)] = (
        duckdb.execute(
            "SELECT min(min_idc_version), max(max_idc_version) FROM read_parquet(?) WHERE crdc_series_uuid = ?",
            [str(PRIOR), old["crdc_series_uuid"]],
        ).fetchall(),
        duckdb.execute(
            "SELECT series_revised_idc_version FROM read_parquet(?) WHERE crdc_series_uuid = ?",
            [str(INDEX), new["crdc_series_uuid"]],
        ).fetchall(),
    )
    assert hi + 1 == revised  # the sandbox seeds a series revised between two releases
    only = f"SeriesInstanceUID = '{old['SeriesInstanceUID']}'"
    at_old = mount("--idc-version", str(hi), "--filter", only, manifest=False)
    at_new = mount("--idc-version", str(revised), "--filter", only, manifest=False)
    now = mount("--filter", only, manifest=False)
    # The same path in each tree, holding the version each release served.
    d_old, d_new, d_now = (series_dir(m, new["crdc_series_uuid"], sandbox) for m in (at_old, at_new, now))
    assert d_old.relative_to(at_old) == d_now.relative_to(now)
    assert uuid_of(d_old) == old["crdc_series_uuid"]
    assert uuid_of(d_new) == uuid_of(d_now) == new["crdc_series_uuid"]
    # Read through the kernel from the sandbox origin: exactly the old version's objects.
    assert read_all(at_old) == _objects_of(sandbox.earlier_objects, old["crdc_series_uuid"])
    assert read_all(now) == _objects_of(sandbox.objects, new["crdc_series_uuid"])
    assert len(files_under(at_old)) != len(files_under(now))
    # The release is on the root and on the series; the version's range on the series.
    assert os.getxattr(at_old, "user.idc.idc_version") == f"v{hi}".encode()
    assert os.getxattr(now, "user.idc.idc_version") == b"v25"
    assert os.getxattr(d_old, "user.idc.min_idc_version") == str(lo).encode()
    assert os.getxattr(d_old, "user.idc.max_idc_version") == str(hi).encode()
    assert os.getxattr(d_old, "user.idc.url") == f"s3://{old['aws_bucket']}/{old['crdc_series_uuid']}/".encode()
    # License and DOI of an earlier version are those of the series today.
    assert os.getxattr(d_old, "user.idc.license_short_name") == os.getxattr(d_now, "user.idc.license_short_name")


def test_earlier_release_holds_what_that_release_served(mount, sandbox):
    old, new = _two_versions(sandbox)
    collection = old["collection_id"]
    [(hi,)] = duckdb.execute(
        "SELECT max(max_idc_version) FROM read_parquet(?) WHERE crdc_series_uuid = ?",
        [str(PRIOR), old["crdc_series_uuid"]],
    ).fetchall()
    # Independently: series whose current version existed by release hi, plus versions hi served that
    # later releases revised or removed; laid out as `idc download` would.
    cols = "collection_id || '/' || PatientID || '/' || StudyInstanceUID || '/' || Modality || '_' || SeriesInstanceUID"
    want = duckdb.execute(
        f"""SELECT {cols} FROM read_parquet('{INDEX}') WHERE collection_id = ? AND series_revised_idc_version <= ?
            UNION SELECT {cols} FROM read_parquet('{PRIOR}')
            WHERE collection_id = ? AND min_idc_version <= ? AND max_idc_version >= ?""",
        [collection, hi, collection, hi, hi],
    ).fetchall()
    mnt = mount("--idc-version", f"v{hi}", "--collection", collection, manifest=False)
    got = {  # three readdirs down from the collection; series directories are not listed (no LIST)
        str(d.relative_to(mnt)) for d in Path(mnt, collection).glob("*/*/*")
    }
    assert got == {w for (w,) in want}
    assert uuid_of(series_dir(mnt, new["crdc_series_uuid"], sandbox)) == old["crdc_series_uuid"]
    assert int(os.getxattr(mnt, "user.idc.series_count")) == len(want)


def test_manifest_of_earlier_versions(mount, sandbox, tmp_path):
    old, new = _two_versions(sandbox)
    ct = next(s for s in sandbox.series if s["Modality"] == "CT")
    manifest = tmp_path / "paper.s5cmd"
    manifest.write_text("".join(f"cp s3://{s['aws_bucket']}/{s['crdc_series_uuid']}/* .\n" for s in (old, ct)))
    mnt = tmp_path / "m"
    mnt.mkdir()
    r = idcfs("mount", mnt, "--manifest", manifest, "--cache-dir", tmp_path / "c", "--s3-endpoint", sandbox.s3_endpoint)
    try:
        assert r.returncode == 0, r.stderr
        assert "serving IDC v25, with 1 series version from earlier releases" in r.stderr
        assert read_all(mnt) == {
            **_objects_of(sandbox.earlier_objects, old["crdc_series_uuid"]),
            **_objects_of(sandbox.objects, ct["crdc_series_uuid"]),
        }
    finally:
        idcfs("unmount", mnt)
    # A release that did not serve that version, or two versions of one series: one line, exit 2.
    both = tmp_path / "both.txt"
    both.write_text(f"{old['crdc_series_uuid']}\n{new['crdc_series_uuid']}\n")
    for extra, expect in (
        (["--manifest", manifest, "--idc-version", "16"], "not from --idc-version 16"),
        (["--manifest", both], "names 2 versions of series"),
        (["--idc-version", "26"], "give 1 to 25"),
        (["--idc-version", "x"], "not an IDC release number"),
        (["--license", "CC BY 9.0"], "unknown --license 'CC BY 9.0'"),
    ):
        r = idcfs("mount", mnt, "--cache-dir", tmp_path / "c", "--s3-endpoint", sandbox.s3_endpoint, *extra)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
        assert not os.path.ismount(mnt)


def test_license_filter(mount, sandbox):
    licenses = licenses_of([s["crdc_series_uuid"] for s in sandbox.series])
    assert len(set(licenses.values())) >= 3  # the cohort mixes CC BY 4.0, CC BY 3.0 and CC BY-NC 4.0
    safe = mount("--license", "commercial")
    got = {uuid_of(d): os.getxattr(d, "user.idc.license_short_name").decode() for d in _leaves(safe)}
    assert got == {u: lic for u, lic in licenses.items() if "NC" not in lic}
    nc = mount("--license", "cc by-nc 4.0")  # names match case-insensitively
    assert {uuid_of(d) for d in _leaves(nc)} == {u for u, lic in licenses.items() if lic == "CC BY-NC 4.0"}
    both = mount("--license", "CC BY 3.0", "--license", "CC BY-NC 4.0")
    assert {uuid_of(d) for d in _leaves(both)} == {
        u for u, lic in licenses.items() if lic in ("CC BY 3.0", "CC BY-NC 4.0")
    }
    # idc:// takes the same option.
    fs = fsspec.filesystem(
        "idc",
        manifest=sandbox.manifest,
        licenses="commercial",
        s3_endpoint=sandbox.s3_endpoint,
        cache_dir=str(Path(safe).parent / "fscache"),
        skip_instance_cache=True,
    )
    assert sorted(fs.find("", withdirs=False)) == sorted(str(p.relative_to(safe)) for p in files_under(safe))
    with pytest.raises(ValueError, match="idc_version"):
        fsspec.filesystem("idc", idc_version="nope", skip_instance_cache=True)


def test_info_licenses_and_mixed_license_warning(mount, sandbox, tmp_path):
    mnt = mount()
    licenses = licenses_of([s["crdc_series_uuid"] for s in sandbox.series])
    r = idcfs("info", "--json", mnt)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["kind"] == "mount root" and info["series_count"] == len(sandbox.series)
    assert {lic["license_short_name"]: lic["series"] for lic in info["licenses"]} == {
        lic: list(licenses.values()).count(lic) for lic in set(licenses.values())
    }
    assert all(lic["license_url"].startswith("https://creativecommons.org/") for lic in info["licenses"])
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and f"mixes {len(set(licenses.values()))} licenses" in warning[0], r.stderr
    # One collection under one license: no warning; text output names license and source.
    r = idcfs("info", mnt / "nlst")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    assert re.search(r"^license\s+CC BY 4\.0 — Creative Commons Attribution 4\.0", r.stdout, re.M), r.stdout
    assert "https://doi.org/10.7937/tcia.hmq8-j677" in r.stdout
    # A file: its size, license and the series' metadata.
    ct = next(s for s in sandbox.series if s["Modality"] == "CT")
    f = sorted(series_dir(mnt, ct["crdc_series_uuid"], sandbox).iterdir())[0]
    info = json.loads(idcfs("info", "--json", f).stdout)
    assert info["kind"] == "file" and info["size"] == f.stat().st_size
    assert info["metadata"]["crdc_series_uuid"] == ct["crdc_series_uuid"]
    assert [lic["license_short_name"] for lic in info["licenses"]] == [licenses[ct["crdc_series_uuid"]]]
    # Outside a mount: one line, exit 2.
    r = idcfs("info", tmp_path)
    assert r.returncode == 2 and "not inside an idcfs mount" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cite_sandbox_cohort(mount, sandbox, tmp_path):
    mnt = mount()
    dois = dict(
        duckdb.execute(
            "SELECT source_DOI, count(*) FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?)) GROUP BY 1",
            [str(INDEX), [s["crdc_series_uuid"] for s in sandbox.series]],
        ).fetchall()
    )
    sources = load_sources()
    r = idcfs("cite", mnt)
    assert r.returncode == 0, r.stderr
    entries = re.findall(r"^\[\d+\] (.+)$", r.stdout, re.M)
    assert len(entries) == len(dois) + 1
    for doi in dois:
        assert sources[doi].citation in entries  # the published text, markup removed
        assert sources[doi].citation.lower().endswith(doi)
    # Last, the IDC platform paper (the DOI idc-index cites); its text would need a lookup, and it says so.
    assert entries[-1].endswith("https://doi.org/10.1148/rg.230180")
    assert "IDC platform paper is not in the shipped metadata: it needs a DOI lookup" in r.stderr
    # The same cohort named by the manifest, no mount: the same citations.
    assert idcfs("cite", "--manifest", sandbox.manifest).stdout == r.stdout
    # BibTeX: one entry per source, with its DOI, parsed authors and year.
    r = idcfs("cite", "--format", "bibtex", mnt)
    blocks = [b for b in r.stdout.split("\n\n") if b.strip()]
    assert len(blocks) == len(dois) + 1
    for block in blocks[:-1]:
        assert re.match(r"@misc\{[a-z0-9-]+,", block), block
        doi = re.search(r"doi = \{(.+?)\}", block).group(1)
        assert doi in dois
        assert f"year = {{{parse_citation(sources[doi].citation_html)['year']}}}" in block
    assert "doi = {10.1148/rg.230180}" in blocks[-1] and "author =" not in blocks[-1]
    assert len(set(re.findall(r"@misc\{(.+?),", r.stdout))) == len(blocks)  # unique keys
