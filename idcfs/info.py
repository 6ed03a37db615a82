"""`idcfs info` and `idcfs cite`: what a path in a mount holds, under which licenses, and how to cite it.

Both read the mount's user.idc.* xattrs (a directory's carry its subtree's license and source DOI
counts) and the tables idc-index-data ships beside the index. Neither makes a network request.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .citations import IDC_PAPER, Source, bibtex, load_sources
from .errors import UsageError
from .options import Options

PREFIX = "user.idc."


class NotInMount(ValueError):
    pass


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path)
    except OSError:
        return {}
    out = {}
    for name in names:
        if name.startswith(PREFIX) and name != PREFIX + "stats":
            try:
                out[name[len(PREFIX) :]] = os.getxattr(path, name).decode()
            except OSError:
                pass
    return out


def mount_root(path: Path) -> Path:
    """The root of the idcfs mount holding path (it alone has user.idc.index)."""
    p = Path(os.path.abspath(os.path.expanduser(path)))
    if not p.exists():
        raise NotInMount(f"no such path: {path}")
    for candidate in (p, *p.parents):
        try:
            os.getxattr(candidate, PREFIX + "index")
            return candidate
        except OSError:
            continue
    raise NotInMount(f"{path} is not inside an idcfs mount")


def describe(path: Path) -> dict:
    """What the index says about a path in a mount, with licenses and sources spelled out."""
    root = mount_root(path)
    p = Path(os.path.abspath(os.path.expanduser(path)))
    meta, top = _xattrs(p), _xattrs(root)
    rel = p.relative_to(root)
    info: dict = {"path": str(p), "idc_version": top.get("idc_version", ""), "index": top.get("index", "")}
    if p.is_file():
        info["kind"] = "file"
        info["size"] = p.stat().st_size
        licenses = {meta.get("license_short_name", ""): 1}
        dois = {meta.get("source_DOI", ""): 1}
    else:
        info["kind"] = "mount root" if not rel.parts else "directory"
        if "SeriesInstanceUID" in meta:
            info["kind"] = "series directory"
        info["series_count"] = int(meta.get("series_count", "0"))
        licenses = json.loads(meta.get("licenses", "{}"))
        dois = json.loads(meta.get("source_DOIs", "{}"))
    sources = load_sources(Path(info["index"]) if info["index"] else None)
    by_name = {s.license_short_name: s for s in sources.values() if s.license_short_name}
    info["licenses"] = [
        {
            "license_short_name": name or None,
            "series": n,
            "license_long_name": by_name[name].license_long_name if name in by_name else None,
            "license_url": by_name[name].license_url if name in by_name else None,
        }
        for name, n in licenses.items()
    ]
    info["sources"] = [
        {
            "source_DOI": doi or None,
            "series": n,
            "url": f"https://doi.org/{doi}" if doi else None,
            "title": sources[doi.lower()].title if doi and doi.lower() in sources else None,
            "kind": sources[doi.lower()].kind if doi and doi.lower() in sources else None,
        }
        for doi, n in dois.items()
    ]
    info["metadata"] = {
        k: v for k, v in meta.items() if k not in ("licenses", "source_DOIs", "series_count", "index", "idc_version")
    }
    info["warnings"] = _warnings(info)
    return info


def _warnings(info: dict) -> list[str]:
    out = []
    named = [lic for lic in info["licenses"] if lic["license_short_name"]]
    if len(named) > 1:
        listed = ", ".join(f"{lic['license_short_name']} ({lic['series']} series)" for lic in named)
        out.append(
            f"{info['path']} mixes {len(named)} licenses: {listed}. Each series carries its own "
            "(user.idc.license_short_name); mount with --license to keep one"
        )
    unknown = sum(lic["series"] for lic in info["licenses"] if not lic["license_short_name"])
    if unknown:
        out.append(
            f"{unknown} series under {info['path']} have no license in the index (versions of series IDC has "
            "removed): check their collection's license before use"
        )
    return out


def print_info(info: dict) -> None:
    rows = [("path", info["path"]), ("kind", info["kind"])]
    if "size" in info:
        rows.append(("size", f"{info['size']:,} bytes"))
    if "series_count" in info:
        rows.append(("series", f"{info['series_count']:,}"))
    rows.append(("IDC release", info["idc_version"] or "unknown"))
    for lic in info["licenses"]:
        name = lic["license_short_name"] or "unknown"
        detail = f" — {lic['license_long_name']} <{lic['license_url']}>" if lic["license_long_name"] else ""
        rows.append(("license", f"{name}{detail}" + (f" ({lic['series']:,} series)" if "series_count" in info else "")))
    for src in info["sources"][:20]:
        text = f"{src['url'] or 'unknown'}"
        if src["title"]:
            text += f" — {src['title']}" + (" (analysis result)" if src["kind"] == "analysis_result" else "")
        rows.append(("source", text + (f" ({src['series']:,} series)" if "series_count" in info else "")))
    if len(info["sources"]) > 20:
        rows.append(("source", f"... and {len(info['sources']) - 20} more (idcfs cite {info['path']})"))
    rows += sorted(info["metadata"].items())
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def print_paths(paths: list[Path], as_json: bool = False) -> int:
    """`idcfs info`: each path's description on stdout (JSON lines with as_json), warnings on stderr."""
    status = 0
    for path in paths:
        try:
            info = describe(path)
        except NotInMount as e:
            print(f"idcfs: error: {e}", file=sys.stderr)
            status = 2
            continue
        if as_json:
            print(json.dumps(info))
        else:
            if len(paths) > 1:
                print()
            print_info(info)
        for w in info["warnings"]:
            print(f"idcfs: warning: {w}", file=sys.stderr)
    return status


# ---------------------------------------------------------------------------
# cite


def _dois_of(path: Path) -> tuple[dict[str, int], str]:
    """Series counts by source DOI under a path, and the index the mount serves."""
    root = mount_root(path)
    index = _xattrs(root).get("index", "")
    meta = _xattrs(Path(os.path.abspath(os.path.expanduser(path))))
    if "source_DOIs" in meta:
        return json.loads(meta["source_DOIs"]), index
    return {meta.get("source_DOI", ""): 1}, index


def _dois_of_selection(options: Options) -> tuple[dict[str, int], str]:
    # The sorted selection is kept in the cache directory, as mounts keep it: the next cite or mount of it is quick.
    ns = options.namespace()
    return {k or "": v for k, v in ns.counts(0, "source_DOI").items()}, str(options.index_file())


def cite(paths: list[Path], options: Options | None = None, fmt: str = "text") -> int:
    """`idcfs cite`: the citations of the data under paths in a mount, and of a selection (options)."""
    counts: dict[str, int] = {}
    index = ""
    try:
        found = [_dois_of(p) for p in paths]
        if options is not None:
            found.append(_dois_of_selection(options))
    except (NotInMount, UsageError) as e:
        print(f"idcfs: error: {e}", file=sys.stderr)
        return 2
    if not found:
        print(
            "idcfs: error: give paths inside a mount, or a selection (--manifest/--filter/--collection)",
            file=sys.stderr,
        )
        return 2
    for dois, idx in found:
        index = index or idx
        for doi, n in dois.items():
            counts[doi] = counts.get(doi, 0) + n
    sources = load_sources(Path(index) if index else None)
    notes = []
    cited: list[tuple[Source, int]] = []
    for doi, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if not doi:
            notes.append(f"{n} series have no source DOI in the index (versions of series IDC has removed)")
        elif doi.lower() not in sources or not sources[doi.lower()].citation_html:
            notes.append(
                f"no citation for {doi} ({n} series) ships with the index: it needs a DOI lookup "
                f"(https://doi.org/{doi}), which idcfs does not make offline"
            )
            if doi.lower() in sources:
                cited.append((sources[doi.lower()], n))
        else:
            cited.append((sources[doi.lower()], n))
    cited.sort(key=lambda sn: (sn[0].kind != "original_data", -sn[1]))
    if cited:
        cited.append((IDC_PAPER, sum(counts.values())))
    taken: set[str] = set()
    for i, (src, n) in enumerate(cited, 1):
        if fmt == "bibtex":
            entry, complete = bibtex(src, taken)
            print(entry + "\n")
            if not complete:
                notes.append(
                    f"the BibTeX entry for {src.doi} has its title and DOI only: authors and year need a DOI "
                    f"lookup (https://doi.org/{src.doi}), which idcfs does not make offline"
                )
        else:
            print(f"[{i}] {src.citation or src.title + '. ' + src.url}")
            if src is IDC_PAPER:
                print("    IDC asks every publication using its data to cite it\n")
                notes.append(
                    f"the full citation of the IDC platform paper is not in the shipped metadata: it needs a DOI "
                    f"lookup ({src.url}), which idcfs does not make offline"
                )
                continue
            what = "analysis result" if src.kind == "analysis_result" else f"data of {', '.join(src.collections)}"
            print(f"    {what}; {n:,} series here; {src.license_short_name or 'license unknown'}\n")
    for note in notes:
        print(f"idcfs: note: {note}", file=sys.stderr)
    return 0
