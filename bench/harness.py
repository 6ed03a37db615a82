"""What every workload shares: the benchmark origin, the tools pointed at it, cache dropping, summaries.

The origin is the sandbox (moto S3 and fake-gcs-server) with a benchmark cohort:
CT series of 200–400 real nlst series rows (about 0.5 MB per instance) and one
SM series whose base level is a single instance over 1 GiB. Each tool is a
context manager that mounts (or not) and yields a function from a series UUID
to the directory holding that series' instance files.

Latency: this kernel has no netem qdisc, so round-trip time is added by a proxy
in front of the origin (idcfs.testing.faultproxy) that waits the stated delay before
forwarding each request; every tool goes through the same proxy, which also
counts the body bytes it passes on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("IDCFS_BENCH_DATA", REPO / ".bench"))
CLOSED = "http://127.0.0.1:9"  # an endpoint nothing answers on
SM_SERIES = "00028ccd-2dce-4389-b039-50412b12648b"  # a real ccdi_mci SM series row
SM_BASE = (19200, 19200)  # 75 x 75 tiles of 256 x 256 RGB: 1.1 GB in one instance


def bench_cohort(index: Path, n_series: int):
    import duckdb

    rows = duckdb.execute(
        "SELECT crdc_series_uuid, instanceCount FROM read_parquet(?) WHERE collection_id = 'nlst' "
        "AND Modality = 'CT' AND instanceCount BETWEEN 200 AND 400 ORDER BY crdc_series_uuid LIMIT ?",
        [str(index), n_series],
    ).fetchall()
    ct = tuple((uuid, int(n), "bench CT series") for uuid, n in rows)
    return (*ct, (SM_SERIES, 2, "bench SM slide, base level over 1 GiB", SM_BASE))


@contextlib.contextmanager
def origin(n_series: int = 16):
    """The running benchmark sandbox (files generated on first use, then reused). With IDCFS_BENCH_ORIGIN set
    to the state file of a benchmark origin already running (SandboxState.save), that one: starting one
    loads every object into moto, which takes minutes."""
    import idc_index_data

    from idcfs.testing.sandbox import Sandbox, SandboxState

    if os.environ.get("IDCFS_BENCH_ORIGIN"):
        yield SandboxState.load(Path(os.environ["IDCFS_BENCH_ORIGIN"]))
        return

    cohort = bench_cohort(Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH), n_series)
    with Sandbox(DATA / f"origin-{n_series}", cohort=cohort) as state:
        yield state


@contextlib.contextmanager
def empty_origin():
    """An endpoint that answers every request with 404 and counts them: the mount's endpoint probe passes,
    and a request for an object (which workloads over the tree alone must not make) fails and is counted."""
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            hits.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()


def series_of(state, modality: str) -> list[str]:
    return [s["crdc_series_uuid"] for s in state.series if s["Modality"] == modality]


def origin_dir(state, uuid: str) -> Path:
    from idcfs.store import GCS_MIRROR

    bucket = next(s["aws_bucket"] for s in state.series if s["crdc_series_uuid"] == uuid)
    return Path(state.data_dir) / "gcs" / GCS_MIRROR[bucket] / uuid


def drop_caches(what: int = 3) -> None:
    """3: page cache, dentries and inodes; 1: the page cache only (the kernel keeps FUSE entries it knows)."""
    subprocess.run(["sync"])
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(f"{what}\n")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def wait_mounted(mnt: Path, proc=None, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mnt} did not mount")
        time.sleep(0.1)


def unmount(mnt: Path) -> None:
    run(["fusermount3", "-u", "-z", mnt])


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# -- the tools: each is a context manager yielding a function series_uuid -> directory of its files


@contextlib.contextmanager
def local_disk(state, endpoint=None, work=None):
    yield lambda uuid: origin_dir(state, uuid)


@contextlib.contextmanager
def idcfs_mount(state, endpoint, work: Path, source: str = "aws", extra: tuple = ()):
    """A fresh idcfs mount with an empty cache directory; `source` picks the provider behind `endpoint`;
    `extra`: more `idcfs mount` flags."""
    mnt, cache = work / "idcfs", work / "idcfs-cache"
    shutil.rmtree(cache, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    s3, gcs = (endpoint, CLOSED) if source == "aws" else (CLOSED, endpoint)
    r = run([sys.executable, "-m", "idcfs", "mount", mnt, "--manifest", state.manifest, "--cache-dir", cache,
             "--source", source, "--s3-endpoint", s3, "--gcs-endpoint", gcs, *extra])  # fmt: skip
    if r.returncode:
        raise RuntimeError(r.stderr)
    rows = {s["crdc_series_uuid"]: s for s in state.series}

    def path(uuid):
        s = rows[uuid]
        study = mnt / s["collection_id"] / s["PatientID"] / s["StudyInstanceUID"]
        return study / f"{s['Modality']}_{s['SeriesInstanceUID']}"

    try:
        yield path
    finally:
        unmount(mnt)


@contextlib.contextmanager
def rclone_mount(state, endpoint, work: Path, vfs_cache: str = "off"):
    """rclone mount, read-only, VFS cache off (rclone's default; its docs' choice for read-only streaming),
    or `full` (a local copy of what was read, its choice for repeated reads), in a fresh cache directory."""
    mnt = work / "rclone"
    mnt.mkdir(exist_ok=True)
    cache = work / "rclone-cache"
    shutil.rmtree(cache, ignore_errors=True)
    conf = work / "rclone.conf"
    conf.write_text(f"[idc]\ntype = s3\nprovider = Other\nendpoint = {endpoint}\nforce_path_style = true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        ["rclone", "mount", "idc:idc-open-data", str(mnt), "--config", str(conf), "--read-only",
         "--vfs-cache-mode", vfs_cache, "--cache-dir", str(cache), "--vfs-cache-max-size", "100G",
         "--dir-cache-time", "1h"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_mounted(mnt, proc)
    try:
        yield lambda uuid: mnt / uuid
    finally:
        unmount(mnt)
        proc.wait(10)


@contextlib.contextmanager
def s3fs_mount(state, endpoint, work: Path):
    """s3fs-fuse with public_bucket (unsigned), read-only."""
    mnt = work / "s3fs"
    mnt.mkdir(exist_ok=True)
    r = run(["s3fs", "idc-open-data", mnt, "-o", f"url={endpoint},use_path_request_style,public_bucket=1,ro"])
    if r.returncode:
        raise RuntimeError(r.stderr)
    wait_mounted(mnt)
    try:
        yield lambda uuid: mnt / uuid
    finally:
        unmount(mnt)


MOUNTS = {
    "local disk": local_disk,
    "idcfs": idcfs_mount,
    "idcfs no-passthrough": lambda *a: idcfs_mount(*a, extra=("--passthrough", "off")),
    "rclone mount": rclone_mount,
    "rclone vfs-full": lambda *a: rclone_mount(*a, vfs_cache="full"),
    "s3fs-fuse": s3fs_mount,
}


def daemon_pid(mnt: Path) -> int:
    """The pid of the idcfs daemon serving mnt."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"idcfs" in b" ".join(argv) and b"mount" in argv and str(mnt).encode() in argv:
            return int(proc.name)
    raise RuntimeError(f"no idcfs daemon for {mnt}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mount_stats(mnt: Path) -> dict:
    import json

    r = run([sys.executable, "-m", "idcfs", "stats", "--json", mnt])
    if r.returncode:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)


def s5cmd(endpoint: str, lines: list[str]) -> None:
    """One `s5cmd run` of the given command lines, unsigned, as idc-index runs it."""
    cmds = DATA / "s5cmd.txt"
    cmds.write_text("".join(line + "\n" for line in lines))
    env = dict(os.environ, AWS_REGION="us-east-1")
    r = run(["s5cmd", "--no-sign-request", "--endpoint-url", endpoint, "run", cmds], env=env)
    if r.returncode:
        raise RuntimeError(r.stderr)


def s5cmd_download(endpoint, uuids, dest: Path) -> int:
    """Whole series to dest/<uuid>/, as `idc download` does; returns the bytes on disk."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    s5cmd(endpoint, [f"cp s3://idc-open-data/{u}/* {dest}/{u}/" for u in uuids])
    return sum(p.stat().st_size for p in dest.rglob("*.dcm"))
