"""`python -m bench`: every workload, then bench/results.png. Each also runs alone: `python -m bench.<name>`."""

import argparse
import sys

from . import browse, headers, metadata, plot, releases, stream, wsi

p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
p.add_argument("--repeat", type=int, default=3, help="runs per workload and tool (default 3)")
p.add_argument("--only", nargs="+", choices=["metadata", "releases", "stream", "headers", "wsi", "browse"],
               help="run only these workloads")  # fmt: skip
args = p.parse_args()
r = str(args.repeat)
steps = {
    "metadata": lambda: metadata.main(["--repeat", r]),
    "releases": lambda: releases.main(["--repeat", r]),
    "stream": lambda: stream.main(["--repeat", r]),
    "headers": lambda: headers.main(["--repeat", r]),
    "wsi": lambda: wsi.main(["--repeat", r]),
    "browse": lambda: browse.main([]),
}
for name, step in steps.items():
    if args.only and name not in args.only:
        continue
    print(f"== {name}", flush=True)
    if step():
        sys.exit(1)
sys.exit(plot.main())
