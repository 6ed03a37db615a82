"""The floor of a pyfuse3 daemon in passthrough: daemon CPU per open+read+close of one file.

A file system with one 0.5 MiB file whose OPEN returns a backing id registered once, and nothing else: what
is left is pyfuse3's dispatch of OPEN and RELEASE on trio. Needs the build of `make passthrough` and root.
`python -m bench.passthrough_floor [--cycles N]`
"""

from __future__ import annotations

import argparse
import errno
import multiprocessing
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

SIZE = 512 << 10


def _serve(mnt: str, backing: str, ready) -> None:
    import pyfuse3
    import trio

    class Floor(pyfuse3.Operations):
        enable_passthrough = True

        def __init__(self):
            super().__init__()
            self.fd = os.open(backing, os.O_RDONLY)
            self.backing_id = 0

        async def getattr(self, ino, ctx=None):
            a = pyfuse3.EntryAttributes()
            a.st_ino, a.attr_timeout, a.entry_timeout = ino, 3600, 3600
            a.st_mode = stat.S_IFDIR | 0o555 if ino == pyfuse3.ROOT_INODE else stat.S_IFREG | 0o444
            a.st_size = 0 if ino == pyfuse3.ROOT_INODE else SIZE
            return a

        async def lookup(self, parent, name, ctx=None):
            if name != b"f":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(2)

        async def open(self, ino, flags, ctx):
            if not self.backing_id:
                self.backing_id = pyfuse3.backing_open(self.fd)
            return pyfuse3.FileInfo(fh=ino, keep_cache=False, backing_id=self.backing_id)

        async def release(self, fh):
            pass

    pyfuse3.init(Floor(), mnt, {"fsname=floor", "ro"})
    ready.set()
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.passthrough_floor", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=5000)
    args = p.parse_args(argv)
    import pyfuse3

    if not hasattr(pyfuse3, "backing_open"):
        print("needs the pyfuse3 of `make passthrough`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        backing, mnt = Path(tmp) / "backing", Path(tmp) / "mnt"
        backing.write_bytes(os.urandom(SIZE))
        mnt.mkdir()
        ready = multiprocessing.Event()
        proc = multiprocessing.Process(target=_serve, args=(str(mnt), str(backing), ready))
        proc.start()
        ready.wait(10)
        time.sleep(0.5)
        f = mnt / "f"
        try:
            f.read_bytes()
            u0, s0 = _cpu(proc.pid)
            t = time.perf_counter()
            for _ in range(args.cycles):
                with open(f, "rb") as fh:
                    fh.read()
            wall = time.perf_counter() - t
            u1, s1 = _cpu(proc.pid)
        finally:
            os.system(f"fusermount3 -u {mnt}")
            proc.join(10)
        n = args.cycles
        user, system = (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6
        print(f"{n} open+read+close of a 0.5 MiB file in passthrough: {wall / n * 1e6:.0f} µs each; "
              f"daemon CPU {user:.0f} µs user + {system:.0f} µs system per file")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
