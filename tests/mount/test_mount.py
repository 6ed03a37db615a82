"""Acceptance: real mounts through the kernel, against the sandbox's real S3 and GCS servers."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from ..conftest import (
    INDEX,
    by_modality,
    files_under,
    idcfs,
    mount_stats,
    origin_files,
    origin_sizes,
    read_all,
    series_dir,
    uuid_of,
)


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_every_file_has_origin_sha256(mount, sandbox, source):
    mnt = mount(source=source)
    want = origin_files(sandbox)
    assert read_all(mnt) == want


def test_stat_size_exact_before_open(mount, sandbox):
    mnt = mount()
    want = origin_sizes(sandbox)
    assert len(want) == len(sandbox.objects)
    assert {f"{uuid_of(p)}/{p.name}": p.stat().st_size for p in files_under(mnt)} == want


def _idc_download(state, dest: Path, template: str | None):
    code = f"""
import json, sys
from idc_index import index
index.aws_endpoint_url = {state.s3_endpoint!r}
c = index.IDCClient()
uids = [s["SeriesInstanceUID"] for s in json.load(open({str(dest) + ".json"!r}))]
kw = {{}} if {template!r} is None else {{"dirTemplate": {template!r}}}
c.download_from_selection(downloadDir={str(dest)!r}, seriesInstanceUID=uids, show_progress_bar=False,
                          use_s5cmd_sync=False, **kw)
"""
    Path(str(dest) + ".json").write_text(json.dumps(state.series))
    dest.mkdir()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("template", [None, "%collection_id-%Modality/%PatientID_%SeriesInstanceUID"])
def test_identical_to_idc_download(mount, sandbox, tmp_path, template):
    dl = tmp_path / "download"
    _idc_download(sandbox, dl, template)
    mnt = mount(*(["--template", template] if template else []))
    r = subprocess.run(["diff", "-r", str(dl), str(mnt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(files_under(dl)) == len(sandbox.objects)


def test_pydicom_reads_every_instance(mount, sandbox):
    import pydicom

    mnt = mount()
    n = 0
    for p in files_under(mnt):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        assert ds.SeriesInstanceUID == p.parent.name.split("_", 1)[1]
        assert ds.PatientID == p.parent.parent.parent.name
        n += 1
    assert n == len(sandbox.objects)
    ct = next(files_under(series_dir(mnt, by_modality(sandbox, "CT")["crdc_series_uuid"], sandbox)).__iter__())
    assert pydicom.dcmread(ct).pixel_array.shape == (512, 512)


def test_simpleitk_loads_ct_series(mount, sandbox):
    import SimpleITK as sitk

    mnt = mount()
    d = series_dir(mnt, "3078b660-4db2-4f82-9b2a-afb3b8dd28b4", sandbox)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(d))
    assert len(names) == 122
    reader.SetFileNames(names)
    img = reader.Execute()
    assert img.GetSize() == (512, 512, 122)


def test_dcm2niix_converts_series(mount, sandbox, tmp_path):
    mnt = mount()
    d = series_dir(mnt, "c914e2ce-92a5-4950-a824-addba1744d7a", sandbox)  # MR, PatientID with spaces
    out = tmp_path / "nii"
    out.mkdir()
    r = subprocess.run(["dcm2niix", "-z", "n", "-o", str(out), str(d)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    niis = list(out.glob("*.nii"))
    assert len(niis) == 1 and niis[0].stat().st_size > 70 * 256 * 256 * 2


def test_openslide_reads_the_slide(mount, sandbox):
    import openslide

    from idcfs.store import GCS_MIRROR

    mnt = mount()
    row = by_modality(sandbox, "SM")
    d = series_dir(mnt, row["crdc_series_uuid"], sandbox)
    origin = Path(sandbox.data_dir) / "gcs" / GCS_MIRROR[row["aws_bucket"]] / row["crdc_series_uuid"]
    name = sorted(p.name for p in d.iterdir())[0]  # OpenSlide finds the slide's other files in the directory
    with openslide.OpenSlide(d / name) as remote, openslide.OpenSlide(origin / name) as local:
        assert remote.level_dimensions == local.level_dimensions and remote.level_count >= 1
        w, h = remote.dimensions
        at, size = (w // 3, h // 3), (256, 256)
        assert remote.read_region(at, 0, size).tobytes() == local.read_region(at, 0, size).tobytes()
        assert remote.get_thumbnail((200, 200)).tobytes() == local.get_thumbnail((200, 200)).tobytes()
    slide_bytes = sum(p.stat().st_size for p in d.iterdir())
    assert mount_stats(mnt)["bytes_fetched"] < slide_bytes / 2  # a region and a thumbnail, not the slide


def _readable(value, placeholder: str) -> str:
    """A readable name's part, as the README states it: blanks made one space, cut at 64 characters, % and /
    escaped; blank or missing, the placeholder."""
    tidy = " ".join(str(value or "").split())[:64]
    return tidy.replace("%", "%25").replace("/", "%2F") if tidy else placeholder


def test_readable_layout(mount, sandbox, tmp_path):
    import fsspec

    from idcfs.index import Index
    from idcfs.testing.sandbox import sha256_file

    mnt, default = mount("--layout", "readable"), mount()
    ix = Index(manifest=sandbox.manifest, layout="readable", cache_dir=tmp_path / "ix")
    rows = ix.sql("SELECT * FROM index").to_pylist()
    assert len(rows) == len(sandbox.series)
    for r in rows:
        study = f"{_readable(r['StudyDate'], 'no date')} {_readable(r['StudyDescription'], 'no description')}"
        series = f"{_readable(r['SeriesNumber'], 'no number')} {r['Modality']} "
        series += _readable(r["SeriesDescription"], "no description")
        assert r["path"] == f"{r['collection_id']}/{r['PatientID']}/{study}/{series}", r  # no twins in the cohort
        d, same = mnt / r["path"], series_dir(default, r["crdc_series_uuid"], sandbox)
        assert sorted(os.listdir(d)) == sorted(os.listdir(same))
        first = sorted(d.iterdir())[0]
        assert sha256_file(first) == sandbox.objects[f"{r['aws_bucket']}/{r['crdc_series_uuid']}/{first.name}"]
        # The same xattrs on every layout; the study directory is found by the study's UID.
        xattrs = {k: os.getxattr(d, k) for k in os.listxattr(d)}
        assert xattrs == {k: os.getxattr(same, k) for k in os.listxattr(same)}
        assert xattrs["user.idc.SeriesDescription"].decode() == (r["SeriesDescription"] or "")
        assert ix.path(r["SeriesInstanceUID"]) == r["path"]
        assert ix.path(r["StudyInstanceUID"]) == r["path"].rsplit("/", 1)[0]
        assert ix.metadata(r["path"].rsplit("/", 1)[0])["StudyInstanceUID"] == r["StudyInstanceUID"]
    assert sorted(r["path"] for r in rows) == sorted(
        os.path.relpath(p, mnt) for p, dirs, files in os.walk(mnt) if files
    )
    info = idcfs("info", "--json", mnt / rows[0]["path"])
    described = json.loads(info.stdout)
    assert described["kind"] == "series directory"
    assert described["metadata"]["SeriesInstanceUID"] == rows[0]["SeriesInstanceUID"]
    fs = fsspec.filesystem(
        "idc",
        manifest=str(sandbox.manifest),
        layout="readable",
        s3_endpoint=sandbox.s3_endpoint,
        gcs_endpoint=sandbox.gcs_endpoint,
        cache_dir=str(tmp_path / "fs"),
    )
    assert sorted(fs.find("")) == sorted(os.path.relpath(p, mnt) for p in files_under(mnt))


def test_small_read_of_large_file_is_ranged(mount, sandbox):
    mnt = mount()
    d = series_dir(mnt, by_modality(sandbox, "SM")["crdc_series_uuid"], sandbox)
    biggest = max(d.iterdir(), key=lambda p: p.stat().st_size)
    before = mount_stats(mnt)["bytes_fetched"]
    with open(biggest, "rb") as f:
        f.seek(100 * 2**20)
        assert len(f.read(1024)) == 1024
    assert mount_stats(mnt)["bytes_fetched"] - before < 2 * 2**20  # kernel readahead at most


def test_posix_tools(mount, sandbox, tmp_path):
    mnt = mount()
    for cmd in (["ls", "-R", str(mnt)], ["find", str(mnt)], ["du", "-s", str(mnt)], ["stat", str(mnt)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stderr)
    found = subprocess.run(["find", str(mnt), "-type", "f"], capture_output=True, text=True).stdout.splitlines()
    assert len(found) == len(sandbox.objects)
    du = int(subprocess.run(["du", "-sb", str(mnt)], capture_output=True, text=True).stdout.split()[0])
    total = sum(origin_sizes(sandbox).values())
    assert du >= total
    d = series_dir(mnt, "6f6d4fdb-8d29-4cec-bfa8-6913e5fbacde", sandbox)
    attrs = subprocess.run(["getfattr", "-d", str(d)], capture_output=True, text=True).stdout
    for key in (
        "collection_id",
        "PatientID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "license_short_name",
        "source_DOI",
        "crdc_series_uuid",
        "url",
        "idc_version",
    ):
        assert f"user.idc.{key}=" in attrs, attrs
    f = next(d.iterdir())
    url = os.getxattr(f, "user.idc.url").decode()
    assert url == f"s3://idc-open-data/6f6d4fdb-8d29-4cec-bfa8-6913e5fbacde/{f.name}"
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(mnt), str(copy)], check=True)
    assert subprocess.run(["diff", "-r", str(mnt), str(copy)]).returncode == 0
    # Inode numbers and mtimes are stable.
    st1 = f.stat()
    time.sleep(0.1)
    st2 = f.stat()
    assert (st1.st_ino, st1.st_mtime_ns, st1.st_size) == (st2.st_ino, st2.st_mtime_ns, st2.st_size)


def test_gcs_source_uses_mirror_buckets(mount, sandbox):
    mnt = mount(source="gcs")
    for uuid, bucket in (
        ("01742e03-18ba-42a4-8a21-a6bcb57c3cc4", "idc-open-idc1"),
        ("058a0528-c295-412c-bbcb-4afa3f6f05e0", "idc-open-cr"),
    ):
        f = next(series_dir(mnt, uuid, sandbox).iterdir())
        assert os.getxattr(f, "user.idc.url").decode().startswith(f"gs://{bucket}/{uuid}/")


def test_read_only(mount, sandbox):
    mnt = mount()
    d = series_dir(mnt, "af22bfc6-52aa-4202-a34e-3a65994dc3c7", sandbox)
    f = next(d.iterdir())
    attempts = [
        lambda: open(f, "r+b"),
        lambda: open(d / "new.dcm", "wb"),
        lambda: os.mkdir(d / "x"),
        lambda: os.unlink(f),
        lambda: os.rename(f, d / "y.dcm"),
        lambda: os.setxattr(f, "user.idc.Modality", b"MR"),
        lambda: os.truncate(f, 0),
        lambda: os.chmod(f, 0o777),
        lambda: os.utime(f, (0, 0)),
        lambda: open(f, "ab"),
        lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        lambda: os.open(mnt / "new", os.O_CREAT | os.O_EXCL | os.O_WRONLY),
        lambda: os.mkdir(mnt / "x"),
        lambda: os.rmdir(d),
        lambda: os.rename(d, d.parent / "renamed"),
        lambda: os.symlink(f, d / "link"),
        lambda: os.link(f, d / "hard"),
        lambda: os.mknod(d / "fifo", 0o600 | 0o010000),
        lambda: os.removexattr(f, "user.idc.Modality"),
        lambda: os.chown(f, 1, 1),
        lambda: os.chmod(mnt, 0o700),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, attempt


def test_no_credentials_reach_the_origin(sandbox, tmp_path):
    """A user's AWS and GCP identities, in the environment and in their usual files, are never sent."""
    from idcfs.testing.faultproxy import FaultProxy

    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAIDCFSTEST\naws_secret_access_key = s\n"
    )
    adc = home / ".config" / "gcloud" / "application_default_credentials.json"
    adc.parent.mkdir(parents=True)
    adc.write_text(
        json.dumps({"type": "authorized_user", "client_id": "c", "client_secret": "s", "refresh_token": "r"})
    )
    env = {
        **os.environ,
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "AKIAIDCFSTEST",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_PROFILE": "default",
        "GOOGLE_APPLICATION_CREDENTIALS": str(adc),
    }
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        for source in ("aws", "gcs"):
            mnt = tmp_path / source
            mnt.mkdir()
            args = ["--cache-dir", tmp_path / f"cache-{source}", "--source", source, "--manifest", sandbox.manifest]
            r = idcfs("mount", mnt, *args, "--s3-endpoint", s3.url, "--gcs-endpoint", gcs.url, env=env)
            assert r.returncode == 0, r.stderr
            try:
                d = series_dir(mnt, "af22bfc6-52aa-4202-a34e-3a65994dc3c7", sandbox)
                assert read_all(d) == {k: v for k, v in origin_files(sandbox).items() if k.startswith("af22bfc6")}
            finally:
                idcfs("unmount", mnt)
        assert s3.counters.gets > 0 and gcs.counters.gets > 0
        assert (s3.counters.authorized, gcs.counters.authorized) == (0, 0)


def test_hostile_index_names_stay_inside_the_mount(mount, sandbox, small_index):
    mnt = mount("--index", small_index, "--collection", "4d_lung", manifest=False)
    patients = set(os.listdir(mnt / "4d_lung"))
    hostile = {"%2E%2E": "..", "a%2Fb": "a/b", "%2E": ".", "%": "", "x%252Fy": "x%2Fy", "evil%2F..%2F..%2Fetc": None}
    assert set(hostile) <= patients
    hostile["evil%2F..%2F..%2Fetc"] = "evil/../../etc"
    for name, value in hostile.items():
        (study,) = (mnt / "4d_lung" / name).iterdir()
        (series,) = study.iterdir()
        assert series.resolve().parent.parent.parent == (mnt / "4d_lung").resolve()
        assert os.getxattr(series, "user.idc.PatientID").decode() == value


def test_cohort_views(mount, sandbox, tmp_path):
    mnt = mount("--filter", "Modality IN ('SEG', 'SR')")
    assert sorted(p.name for p in mnt.iterdir()) == ["nlst"]
    leaves = [p for p in mnt.rglob("*") if p.is_dir() and p.name[:3] in ("SEG", "SR_")]
    assert sorted(p.name.split("_")[0] for p in leaves) == ["SEG", "SR"]
    mnt2 = mount("--collection", "rider_phantom_mri", "--collection", "cptac_luad")
    assert sorted(p.name for p in mnt2.iterdir()) == ["cptac_luad", "rider_phantom_mri"]
    uid_list = tmp_path / "uids.txt"
    uid_list.write_text(
        "# a plain list\n"
        + by_modality(sandbox, "SM")["SeriesInstanceUID"]
        + "\n"
        + "058a0528-c295-412c-bbcb-4afa3f6f05e0\n"
    )
    mnt3 = mount("--manifest", uid_list, manifest=False)
    assert sorted(p.name for p in mnt3.iterdir()) == ["cptac_luad", "duke_breast_cancer_mri"]


def test_full_index_browse(mount, sandbox):
    mnt = mount(manifest=False)
    assert len(os.listdir(mnt)) == 179
    # Many readdir calls, each served in batches: exactly the index's patients, in order, once each.
    [(want,)] = duckdb.execute(
        "SELECT list(DISTINCT PatientID ORDER BY PatientID) FROM read_parquet(?) WHERE collection_id = 'nlst'",
        [str(INDEX)],
    ).fetchall()
    assert len(want) == 26410 and os.listdir(mnt / "nlst") == want
    assert "ZZ RIDER MR8 1" in os.listdir(mnt / "rider_phantom_mri")
    # A series of the sandbox, found through the full tree.
    d = series_dir(mnt, "af22bfc6-52aa-4202-a34e-3a65994dc3c7", sandbox)
    assert len(os.listdir(d)) == 2


def _mount_error(tmp_path, sandbox, *args, mnt=None):
    if mnt is None:
        mnt = tmp_path / "m"
        mnt.mkdir(exist_ok=True)
    r = idcfs("mount", mnt, "--cache-dir", tmp_path / "cache", "--s3-endpoint", sandbox.s3_endpoint, *args)
    assert not os.path.ismount(mnt)
    return r


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--filter", "Modality = = 'CT'"], "invalid --filter"),
        (["--filter", "NoSuchColumn = 1"], "invalid --filter"),
        (["--filter", "1=1; DROP TABLE idx"], "--filter"),
        (["--filter", "Modality='XX'"], "selection is empty"),
        (["--collection", "no_such_collection"], "unknown --collection"),
        (["--template", "%collection_id/%Manufacturer"], "bad --template"),
        (["--layout", "readable", "--template", "%collection_id"], "not allowed with argument"),
        (["--layout", "pretty"], "invalid choice"),
        (["--source", "azure"], "invalid choice"),
        (["--s3-endpoint", "not a url"], "bad --s3-endpoint"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--filter", ""], "empty --filter"),
        (["--filter", "Modality IN (SELECT * FROM read_text('/etc/passwd'))"], "--filter"),
        (["--filter", "1=1; ATTACH '/tmp/idcfs-attack.db' AS x"], "--filter"),
        (["--filter", "1=1; COPY idx TO '/tmp/idcfs-attack.csv'"], "--filter"),
        (["--filter", "1=1; SET enable_external_access = true"], "--filter"),
        (["--cache-size", "lots"], "--cache-size"),
        (["--cache-size", "1M"], "minimum of 64M"),
        (["--memory", "1K"], "minimum of 16M"),
        (["--timeout", "0"], "out of range"),
        (["--timeout", "soon"], "not a number of seconds"),
        (["--log-level", "LOUD"], "invalid choice"),
        (["--s3-endpoint", "http://127.0.0.1:1"], "does not answer"),
        (["--source", "gcs", "--gcs-endpoint", "http://127.0.0.1:1"], "--gcs-endpoint http://127.0.0.1:1 does not"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, sandbox, args, expect):
    r = _mount_error(tmp_path, sandbox, *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert expect in r.stderr


def test_bad_input_leaves_no_trace(tmp_path, sandbox):
    """SQL that would write a file wrote nothing; an endpoint that accepts but never answers is given up on."""
    assert not Path("/tmp/idcfs-attack.db").exists() and not Path("/tmp/idcfs-attack.csv").exists()
    import socket

    with socket.socket() as silent:  # the kernel completes the handshake; nobody ever answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        t = time.monotonic()
        r = _mount_error(tmp_path, sandbox, "--s3-endpoint", f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert r.returncode == 2 and "does not answer (timed out)" in r.stderr, r.stderr
    assert time.monotonic() - t < 15


def test_bad_index_files(tmp_path, sandbox):
    import pyarrow as pa
    import pyarrow.parquet as pq

    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + os.urandom(4096))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), other)
    for index, expect in (
        (garbage, "cannot read --index"),
        (other, "not an IDC index"),
        (tmp_path / "missing.parquet", "is not a file"),
    ):
        r = _mount_error(tmp_path, sandbox, "--index", index)
        assert r.returncode == 2 and expect in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_cache_dir_on_a_full_filesystem(tmp_path, sandbox):
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={full}/fill", "bs=4k"], capture_output=True)
        r = _mount_error(tmp_path, sandbox, "--cache-dir", full / "cache")
        assert r.returncode == 2 and "cache directory" in r.stderr and "No space" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(full)])


def test_bad_manifest_and_mountpoints(tmp_path, sandbox):
    bad = tmp_path / "bad.txt"
    bad.write_text("cp s3://idc-open-data/3078b660-4db2-4f82-9b2a-afb3b8dd28b4/* .\nhello world\n")
    r = _mount_error(tmp_path, sandbox, "--manifest", bad)
    assert r.returncode == 2 and "line 2" in r.stderr
    bad.write_text("cp s3://some-other-bucket/3078b660-4db2-4f82-9b2a-afb3b8dd28b4/* .\n")
    r = _mount_error(tmp_path, sandbox, "--manifest", bad)
    assert r.returncode == 2 and "not an IDC bucket" in r.stderr
    bad.write_text("1.2.3.4.5.6.7\n")
    r = _mount_error(tmp_path, sandbox, "--manifest", bad)
    assert r.returncode == 2 and "not in the index" in r.stderr
    r = _mount_error(tmp_path, sandbox, mnt=tmp_path / "missing")
    assert r.returncode == 2 and "does not exist" in r.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = _mount_error(tmp_path, sandbox, mnt=full)
    assert r.returncode == 2 and "not empty" in r.stderr
    r = _mount_error(tmp_path, sandbox, mnt=full / "x")
    assert r.returncode == 2 and "not a directory" in r.stderr
    bad.write_text("# nothing but comments\n\n")
    r = _mount_error(tmp_path, sandbox, "--manifest", bad)
    assert r.returncode == 2 and "names no series" in r.stderr
    r = _mount_error(tmp_path, sandbox, "--manifest", tmp_path / "no-such-manifest.txt")
    assert r.returncode == 2 and "is not a file" in r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = idcfs("mount", tmp_path / "m2", "--cache-dir", ro / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        assert r.returncode == 2 and "cache directory" in r.stderr
    r = idcfs("mount", tmp_path / "m3", "--cache-dir", "/proc/idcfs-cache")
    assert r.returncode == 2 and "cache directory" in r.stderr
    r = idcfs("mount", tmp_path, "--cache-dir", "/proc/x")
    assert len(r.stderr.strip().splitlines()) == 1


def test_signals_and_stale_mount(tmp_path, sandbox, cache_root):
    mnt = tmp_path / "m"
    mnt.mkdir()
    base = [
        "-m",
        "idcfs",
        "mount",
        str(mnt),
        "--foreground",
        "--cache-dir",
        str(cache_root),
        "--manifest",
        sandbox.manifest,
        "--s3-endpoint",
        sandbox.s3_endpoint,
    ]
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = subprocess.Popen([sys.executable, *base])
        _wait_mounted(mnt)
        p.send_signal(sig)
        assert p.wait(30) == 0
        assert not os.path.ismount(mnt)
    # kill -9 leaves "Transport endpoint is not connected"; the next mount cleans it up.
    p = subprocess.Popen([sys.executable, *base])
    _wait_mounted(mnt)
    p.kill()
    p.wait()
    with pytest.raises(OSError) as e:
        os.listdir(mnt)
    assert e.value.errno == errno.ENOTCONN
    r = idcfs(
        "mount", mnt, "--cache-dir", cache_root, "--manifest", sandbox.manifest, "--s3-endpoint", sandbox.s3_endpoint
    )
    assert r.returncode == 0, r.stderr
    assert "nlst" in os.listdir(mnt)
    assert idcfs("unmount", mnt).returncode == 0
    assert not os.path.ismount(mnt)
    r = idcfs("unmount", mnt)
    assert r.returncode == 2 and "not mounted" in r.stderr


def _wait_mounted(mnt: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        assert time.monotonic() < deadline, "mount did not come up"
        time.sleep(0.05)


def test_mounted_context_manager(sandbox, tmp_path):
    import idcfs

    root = tmp_path / "new" / "idc"  # created, and removed again on exit
    ends = {"s3_endpoint": sandbox.s3_endpoint, "gcs_endpoint": sandbox.gcs_endpoint, "cache_dir": tmp_path / "c"}
    with idcfs.mounted(root, filter="Modality = 'CT'", manifest=sandbox.manifest, **ends) as mnt:
        assert mnt == root and os.path.ismount(root)
        files = files_under(mnt)
        assert files and {os.getxattr(p.parent, "user.idc.Modality") for p in files} == {b"CT"}
        got, origin = read_all(mnt), origin_files(sandbox)
        assert got and all(origin[k] == v for k, v in got.items())
        held = open(files[0], "rb")  # an open file must not make the exit fail
    held.close()
    assert not root.exists()
    with pytest.raises(idcfs.MountFailed, match="invalid filter SQL"):
        with idcfs.mounted(root, filter="Modality = = 'CT'", **ends):
            pass
    assert not root.exists()
