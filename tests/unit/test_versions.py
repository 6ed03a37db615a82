"""Citations from the shipped metadata alone: `idcfs cite` without a mount, and the parsing of citation texts."""

from __future__ import annotations

import duckdb

from idcfs.citations import bibtex, load_sources, parse_citation

from ..conftest import INDEX, idcfs


def test_cite_says_when_a_doi_lookup_is_needed(tmp_path):
    # A shipped citation that is not in APA form: BibTeX keeps to title and DOI, and says what is missing.
    r = idcfs("cite", "--format", "bibtex", "--filter", "source_DOI = '10.7937/k4qv-hh78'")
    assert r.returncode == 0, r.stderr
    assert "doi = {10.7937/k4qv-hh78}" in r.stdout and "author =" not in r.stdout
    assert "authors and year need a DOI lookup (https://doi.org/10.7937/k4qv-hh78)" in r.stderr
    # A DOI no shipped table describes (an index of our own): no citation is invented.
    index = tmp_path / "idx.parquet"
    duckdb.execute(
        f"COPY (SELECT * REPLACE ('10.9999/not-shipped' AS source_DOI) FROM read_parquet('{INDEX}') "
        f"WHERE collection_id = 'rider_pilot') TO '{index}' (FORMAT parquet)"
    )
    r = idcfs("cite", "--index", index, "--collection", "rider_pilot")
    assert r.returncode == 0 and r.stdout == "", r.stdout
    assert "no citation for 10.9999/not-shipped" in r.stderr and "DOI lookup" in r.stderr


def test_citation_parsing():
    apa = (
        "Newitt, D., &amp; Hylton, N. (2016). <i>Single site breast DCE-MRI data &amp; more</i> (Version 2) "
        "[Data set]. The Cancer Imaging Archive.\nhttps://doi.org/10.7937/K9/TCIA.2016.QHSYHJKY"
    )
    assert parse_citation(apa) == {
        "authors": "Newitt, D. and Hylton, N.",
        "year": "2016",
        "title": "Single site breast DCE-MRI data & more",
        "version": "2",
        "publisher": "The Cancer Imaging Archive",
    }
    org = "National Lung Screening Trial Research Team. (2013). <i>Data from NLST</i> [Data set]. TCIA. https://x"
    assert parse_citation(org)["authors"] == "{National Lung Screening Trial Research Team}"
    names = "Deepa Krishnaswamy, Hugo Aerts, &amp; Andrey Fedorov. (2023). <i>T</i> [Data set]. Zenodo. https://x"
    assert parse_citation(names)["authors"] == "Deepa Krishnaswamy and Hugo Aerts and Andrey Fedorov"
    assert parse_citation("Someone (2020) Title. Publisher. https://x") is None
    src = next(iter(load_sources().values()))
    taken: set[str] = set()
    first, second = bibtex(src, taken)[0], bibtex(src, taken)[0]
    assert first.split(",")[0] != second.split(",")[0]  # keys stay unique
    assert "\\&" in bibtex(src.__class__(**{**src.__dict__, "citation_html": apa}), taken)[0]
