"""bench/results.png: one panel per workload, one bar per tool, from the JSON files the workloads write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .harness import REPO

HERE = REPO / "bench"
COLORS = {"idcfs": "#1f77b4", "local disk": "#7f7f7f", "s5cmd": "#ff7f0e", "rclone mount": "#2ca02c",
          "s3fs-fuse": "#d62728", "origin ceiling": "#bcbd22", "download": "#ff7f0e"}  # fmt: skip


def _load(name: str) -> dict | None:
    p = HERE / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _bars(ax, title, unit, bars: dict[str, tuple[float, float, float]]) -> None:
    """bars: label -> (median, min, max)."""
    labels = list(bars)
    med = [bars[k][0] for k in labels]
    err = [[bars[k][0] - bars[k][1] for k in labels], [bars[k][2] - bars[k][0] for k in labels]]
    colors = [next((c for t, c in COLORS.items() if k.startswith(t)), "#9467bd") for k in labels]
    ax.barh(labels, med, xerr=err, color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit)
    for y, k in enumerate(labels):
        v = bars[k][0]
        ax.text(bars[k][2], y, f"  {v:,.0f}" if v >= 100 else f"  {v:.3g}", va="center", fontsize=8)
    ax.set_xlim(0, max(b[2] for b in bars.values()) * 1.15)


def _mmm(s: dict, scale=1.0, invert=False) -> tuple[float, float, float]:
    if invert:  # a time becomes a rate: the min time is the max rate
        return scale / s["median"], scale / s["max"], scale / s["min"]
    return s["median"] * scale, s["min"] * scale, s["max"] * scale


def main(out: Path = HERE / "results.png") -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if stream := _load("stream"):
        runs = stream["runs"].get("20 ms", {})
        rates = {
            t.replace(" (s5cmd to tmpfs)", ""): _mmm(r["series_MBps"])
            for t, r in runs.items()
            if isinstance(r, dict) and r.get("series_MBps")  # not the CPU figures, nor tools timed for epochs only
        }
        panels.append(("series in order, 20 ms (MB/s, higher is better)", "MB/s", rates))
        epochs = {}
        for lat, tool in (("20 ms", "idcfs"), ("0 ms", "idcfs"), ("0 ms", "local disk")):
            r = stream["runs"].get(lat, {}).get(tool)
            for kind in ("cold", "warm"):
                vals = [e[kind]["files_per_s"] for e in (r or {}).get("epochs", [])]
                if vals:
                    epochs[f"{tool} {kind}, {lat}"] = (sorted(vals)[len(vals) // 2], min(vals), max(vals))
        panels.append(("training epoch, 8 workers (files/s, higher is better)", "files/s", epochs))
    if headers := _load("headers"):
        n = headers["files"]
        runs = headers["runs"].get("20 ms", {})
        panels.append((f"header scan of {n} instances, 20 ms (files/s, higher is better)", "files/s",
                       {t: _mmm(r["seconds"], n, invert=True) for t, r in runs.items()}))  # fmt: skip
    if wsi := _load("wsi"):
        panels.append((f"WSI: time to first of 20 random tiles, {wsi['latency_ms']:g} ms (s, lower is better)", "s",
                       {t: _mmm(r["first_tile_s"]) for t, r in wsi["runs"].items()}))  # fmt: skip
    if not panels:
        print("no bench/*.json results to plot", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 + 1.9 * len(panels)), squeeze=False)
    for ax, (title, unit, bars) in zip(axes[:, 0], panels, strict=True):
        _bars(ax, title, unit, bars)
    fig.suptitle("idcfs against the tools users would otherwise use (same origin, same run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
