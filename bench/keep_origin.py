"""`python -m bench.keep_origin STATE_FILE [N_SERIES]`: start the benchmark origin and keep it running.

Then `IDCFS_BENCH_ORIGIN=STATE_FILE python -m bench.<workload>` uses it instead of starting its own.
"""

import sys
import time
from pathlib import Path

from .harness import origin

if __name__ == "__main__":
    with origin(int(sys.argv[2]) if len(sys.argv) > 2 else 16) as state:
        state.save(Path(sys.argv[1]))
        print(f"benchmark origin ready: IDCFS_BENCH_ORIGIN={sys.argv[1]}", flush=True)
        while True:
            time.sleep(3600)
