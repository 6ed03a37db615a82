"""Releases, licenses and citations over the full shipped index: what the issue-7 features cost.

- mount → ready for the index's release, an earlier release (--idc-version), a license view, and a
  manifest naming an earlier version; first mount (tree query and sort) and later mounts (tree cached);
- the same selections in idc-index, what users have today: IDCClient() start plus the duckdb query over
  `index` and `prior_versions_index` that gives the release's series (no tree, no files);
- `idcfs info` and `idcfs cite` on a mount, and `cite --manifest` with no mount; idc-index's
  citations_from_selection() beside it, which asks doi.org for every DOI (offline here, so it fails).

No object store is read: the endpoints point at a local server that answers 404 to everything.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import idc_index_data

from .harness import empty_origin

INDEX = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
PRIOR = INDEX.with_name("prior_versions_index.parquet")


def _idcfs(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idcfs", *map(str, args)], capture_output=True, text=True)


def _python(code: str) -> tuple[float, str]:
    """Run code in a fresh interpreter (as a user's script would); its wall time and stdout."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return time.perf_counter() - t, (r.stdout.strip() or r.stderr.strip().splitlines()[-1])


def _mount_times(flags: list, repeat: int, tmp: Path, name: str, endpoint: str) -> tuple[list[float], str]:
    mnt, cache = tmp / f"mnt-{name}", tmp / f"cache-{name}"
    mnt.mkdir()
    times, served = [], ""
    for _ in range(repeat + 1):  # the first is the cold one: no tree file in the cache directory yet
        t = time.perf_counter()
        r = _idcfs("mount", mnt, "--cache-dir", cache, "--s3-endpoint", endpoint, "--gcs-endpoint", endpoint, *flags)
        times.append(time.perf_counter() - t)
        assert r.returncode == 0, r.stderr
        served = r.stderr.strip().splitlines()[-1]
        _idcfs("unmount", mnt)
    return times, served


def _release_query(release: int) -> str:
    return (
        f"SELECT count(*) FROM (SELECT SeriesInstanceUID FROM index WHERE series_revised_idc_version <= {release} "
        f"UNION ALL SELECT DISTINCT crdc_series_uuid FROM prior_versions_index "
        f"WHERE min_idc_version <= {release} AND max_idc_version >= {release})"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.releases", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="warm mounts per selection (default 3)")
    ap.add_argument("--release", type=int, default=18, help="the earlier release to mount (default 18)")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("releases.json"))
    args = ap.parse_args(argv)
    [(earlier,)] = duckdb.execute(
        f"SELECT crdc_series_uuid FROM read_parquet('{PRIOR}') WHERE max_idc_version = {args.release} LIMIT 1"
    ).fetchall()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp, empty_origin() as (endpoint, _hits):
        tmp = Path(tmp)
        manifest = tmp / "paper.txt"
        manifest.write_text(earlier + "\n")
        selections = {
            "index release (v25)": [],
            f"--idc-version {args.release}": ["--idc-version", args.release],
            "--license commercial": ["--license", "commercial"],
            f"--idc-version {args.release} --license commercial": [
                "--idc-version",
                args.release,
                "--license",
                "commercial",
            ],
            "--manifest naming one earlier version": ["--manifest", manifest],
        }
        for name, flags in selections.items():
            times, served = _mount_times(flags, args.repeat, tmp, re.sub(r"\W+", "-", name), endpoint)
            warm = times[1:]
            series = re.search(r"([\d,]+) series", served).group(1)
            results[name] = {"cold_s": times[0], "warm_s": warm, "served": served}
            rows.append(
                (
                    f"idcfs mount {name} → ready ({series} series)",
                    f"{times[0]:.2f}",
                    f"{statistics.median(warm):.2f} ({min(warm):.2f}–{max(warm):.2f})",
                )
            )
        # What idc-index users run for the same question: which series did release N have?
        for query, label in ((_release_query(args.release), f"release {args.release}'s series"),):
            code = (
                "import time; t = time.perf_counter(); from idc_index import IDCClient; c = IDCClient(); "
                "s = time.perf_counter(); "
                f"n = c.sql_query({query!r}).iloc[0, 0]; "
                "print(f'{s - t:.2f} {time.perf_counter() - s:.2f} {n}')"
            )
            runs = [_python(code) for _ in range(args.repeat)]
            parts = [r[1].split() for r in runs]
            total = [r[0] for r in runs]
            results[f"idc-index {label}"] = {"wall_s": total, "client_s": [float(p[0]) for p in parts]}
            rows.append(
                (
                    f"idc-index: IDCClient() + sql_query counting {label} ({int(parts[0][2]):,} series, no tree)",
                    "",
                    f"{statistics.median(total):.2f} ({min(total):.2f}–{max(total):.2f})",
                )
            )
        # info and cite on a mount of the whole index.
        mnt, cache = tmp / "mnt-info", tmp / "cache-index-release-v25-"
        mnt.mkdir()
        r = _idcfs("mount", mnt, "--cache-dir", cache, "--s3-endpoint", endpoint, "--gcs-endpoint", endpoint)
        assert r.returncode == 0, r.stderr
        try:
            for label, cmd in (
                ("idcfs info MOUNT (whole index)", ["info", "--json", mnt]),
                ("idcfs info MOUNT/nlst", ["info", "--json", mnt / "nlst"]),
                ("idcfs cite MOUNT (whole index)", ["cite", mnt]),
                ("idcfs cite --format bibtex MOUNT", ["cite", "--format", "bibtex", mnt]),
                ("idcfs cite MOUNT/nlst", ["cite", mnt / "nlst"]),
                ("idcfs cite --collection nlst (no mount)", ["cite", "--collection", "nlst"]),
            ):
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    out = _idcfs(*cmd)
                    times.append(time.perf_counter() - t)
                    assert out.returncode == 0, out.stderr
                n = len(re.findall(r"^(\[\d+\]|@misc)", out.stdout, re.M))
                what = f"{n} citations" if "cite" in label else f"{json.loads(out.stdout)['series_count']:,} series"
                results[label] = {"s": times, "what": what}
                rows.append(
                    (f"{label}: {what}", "", f"{statistics.median(times):.2f} ({min(times):.2f}–{max(times):.2f})")
                )
        finally:
            _idcfs("unmount", mnt)
        code = (
            "import time; from idc_index import IDCClient; c = IDCClient(); t = time.perf_counter()\n"
            "try:\n    n = len(c.citations_from_selection(collection_id='nlst')); r = f'{n} citations'\n"
            "except Exception as e:\n    r = type(e).__name__\n"
            "print(f'{time.perf_counter() - t:.2f} {r}')"
        )
        wall, out = _python(code)
        results["idc-index citations_from_selection(nlst)"] = {"wall_s": wall, "out": out}
        rows.append(
            (
                f"idc-index: citations_from_selection(collection_id='nlst'), offline: {out.split(' ', 1)[1]}",
                "",
                out.split()[0],
            )
        )
    print("| workload | first run s | later runs s, median (min–max) |")
    print("|---|---|---|")
    for name, cold, warm in rows:
        print(f"| {name} | {cold} | {warm} |")
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
