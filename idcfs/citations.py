"""Sources, licenses and citations of IDC data, from the tables idc-index-data ships (no network).

Every series names its source by DOI (`source_DOI`): a collection's original data, or an analysis
result. `collections_index` and `analysis_results_index` give each DOI's title, license and the
citation text (APA, with HTML markup) that TCIA and Zenodo publish. BibTeX is made from that text;
where it cannot be parsed, the entry says what a DOI lookup would add instead of guessing.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import duckdb

COLLECTIONS_FILE = "collections_index.parquet"
ANALYSIS_RESULTS_FILE = "analysis_results_index.parquet"


@dataclass(frozen=True)
class Source:
    doi: str
    title: str
    kind: str  # "original_data" or "analysis_result"
    license_short_name: str | None
    license_long_name: str | None
    license_url: str | None
    citation_html: str | None
    collections: tuple[str, ...]

    @property
    def url(self) -> str:
        return f"https://doi.org/{self.doi}"

    @property
    def citation(self) -> str | None:
        """The published citation as plain text."""
        return _plain(self.citation_html) if self.citation_html else None


# IDC asks publications to cite its platform paper too. The shipped tables do not hold it; its DOI is the
# one idc-index's citations_from_selection() adds to every cohort.
IDC_PAPER = Source(
    doi="10.1148/rg.230180",
    title="The NCI Imaging Data Commons platform paper",
    kind="platform",
    license_short_name=None,
    license_long_name=None,
    license_url=None,
    citation_html=None,
    collections=(),
)


def _plain(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"</?[a-zA-Z][^>]*>", "", text)).split())


def _table(index_path: Path | None, name: str) -> Path | None:
    """A shipped table: beside the index, else in the installed idc-index-data."""
    candidates = [Path(index_path).parent / name] if index_path else []
    try:
        import idc_index_data

        candidates.append(Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent / name)
    except ImportError:
        pass
    return next((c for c in candidates if c.is_file()), None)


def load_sources(index_path: Path | None = None) -> dict[str, Source]:
    """Every source the shipped tables describe, by lower-case DOI."""
    con = duckdb.connect()
    sources: dict[str, Source] = {}
    collections = _table(index_path, COLLECTIONS_FILE)
    if collections is not None:
        rows = con.execute(
            "SELECT s.source_doi, any_value(s.source_title), any_value(s.source_type), any_value(s.license), "
            "any_value(s.citation), list(DISTINCT collection_id ORDER BY collection_id) "
            "FROM (SELECT collection_id, unnest(sources) AS s FROM read_parquet(?)) "
            "WHERE s.source_doi IS NOT NULL GROUP BY s.source_doi",
            [str(collections)],
        ).fetchall()
        for doi, title, kind, lic, citation, colls in rows:
            lic = lic or {}
            sources[doi.lower()] = Source(
                doi.lower(),
                title,
                kind or "original_data",
                lic.get("license_short_name"),
                lic.get("license_long_name"),
                lic.get("license_url"),
                citation,
                tuple(colls),
            )
    results = _table(index_path, ANALYSIS_RESULTS_FILE)
    if results is not None:
        rows = con.execute(
            "SELECT source_DOI, analysis_result_title, license_short_name, license_long_name, license_url, "
            "citation, collections FROM read_parquet(?) WHERE source_DOI IS NOT NULL",
            [str(results)],
        ).fetchall()
        for doi, title, short, long, url, citation, colls in rows:
            known = sources.get(doi.lower())
            sources[doi.lower()] = Source(
                doi.lower(),
                title,
                "analysis_result",
                short,
                long,
                url,
                citation or (known.citation_html if known else None),
                tuple(c.strip() for c in (colls or "").split(",") if c.strip()),
            )
    return sources


# ---------------------------------------------------------------------------
# BibTeX

# Authors (Year). <i>Title</i> (Version V) [Data set]. Publisher. https://doi.org/...
_APA = re.compile(
    r"^(?P<authors>.+?)\s*\((?P<year>\d{4})\)\.\s*<i>(?P<title>.+?)</i>\s*"
    r"(?:\((?P<version>Version [^)]*)\)\s*)?\[Data ?set\]\.\s*(?P<publisher>[^.]+?)\.\s*https?://\S+$",
    re.DOTALL,
)


def parse_citation(citation_html: str) -> dict[str, str] | None:
    """Authors, year, title, version and publisher of an APA data-set citation; None if it is not one."""
    m = _APA.match(" ".join(citation_html.split()))
    if not m:
        return None
    out = {k: _plain(v) for k, v in m.groupdict().items() if v}
    out["authors"] = " and ".join(_authors(out["authors"]))
    if "version" in out:
        out["version"] = out["version"].removeprefix("Version ").strip()
    return out


def _authors(text: str) -> list[str]:
    text = re.sub(r",?\s*&\s*", ", ", text).strip()
    if re.search(r"\.,\s", text):  # APA: "Last, F. M., Last, F."
        return re.split(r"(?<=\.),\s+", text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > 1:  # "First Last, First Last"
        return [p.removesuffix(".") for p in parts]
    return ["{" + text.removesuffix(".") + "}"]  # an organization: braces keep BibTeX from splitting it


def _tex(text: str) -> str:
    return re.sub(r"([&%$#_])", r"\\\1", text)


def _key(fields: dict[str, str] | None, source: Source, taken: set[str]) -> str:
    if fields:
        author = fields["authors"].split(" and ")[0]
        if author.startswith("{"):  # an organization: its first word
            first = author.strip("{}").split()[0]
        else:  # "Last, F." or "First Last"
            first = author.split(",")[0] if "," in author else author.split()[-1]
        word = next((w for w in re.findall(r"[A-Za-z]+", fields["title"]) if len(w) > 3), "data")
        base = f"{first}{fields['year']}{word}"
    else:
        base = "idc_" + re.sub(r"[^a-z0-9]+", "_", source.doi)
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode().lower()
    key, n = base, 0
    while key in taken:
        n += 1
        key = f"{base}{chr(ord('a') + n)}"
    taken.add(key)
    return key


def bibtex(source: Source, taken: set[str]) -> tuple[str, bool]:
    """A @misc entry for a source, and whether it holds everything the shipped citation says (False: the
    authors and year need a DOI lookup, which cannot be made offline)."""
    fields = parse_citation(source.citation_html) if source.citation_html else None
    lines = [f"@misc{{{_key(fields, source, taken)},"]
    if fields:
        lines += [
            f"  author = {{{_tex(fields['authors'])}}},",
            f"  title = {{{{{_tex(fields['title'])}}}}},",
            f"  year = {{{fields['year']}}},",
            f"  publisher = {{{_tex(fields['publisher'])}}},",
        ]
        if "version" in fields:
            lines.append(f"  version = {{{_tex(fields['version'])}}},")
    else:
        lines.append(f"  title = {{{{{_tex(source.title)}}}}},")
    lines += [f"  doi = {{{source.doi}}},", f"  url = {{{source.url}}},"]
    if source.kind != "platform":
        lines.append("  howpublished = {Data set},")
    notes = []
    if source.license_short_name:
        notes.append(f"License: {source.license_short_name}")
    if not fields:
        notes.append("authors and year not in the shipped metadata; resolve the DOI for them")
    if notes:
        lines.append(f"  note = {{{_tex('. '.join(notes))}}},")
    lines.append("}")
    return "\n".join(lines), fields is not None
