"""Deployment: the mount(8) helper with real `mount -a` on a scratch fstab, and the systemd unit run as systemd
would run it, READY=1 included. Option parsing and `systemd-analyze verify`: tests/unit/test_deploy.py."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import by_modality, licenses_of, origin_files, read_all, uuid_of
from ..unit.test_deploy import BIN, _unit_for_this_checkout

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) helpers and fstab mounts need root")


# ---------------------------------------------------------------------------
# Real mounts through mount(8)


@pytest.fixture
def helpers():
    """/sbin/mount.fuse.idcfs and /sbin/mount.idcfs linked to this checkout's helper, for the test only."""
    made = []
    for name in ("mount.fuse.idcfs", "mount.idcfs"):
        link, target = Path("/sbin") / name, BIN / name
        old = os.readlink(link) if link.is_symlink() else None
        if old is None and link.exists():
            pytest.skip(f"{link} exists and is not a link")
        if old != str(target):
            link.unlink(missing_ok=True)
            link.symlink_to(target)
        made.append((link, old))
    yield
    for link, old in made:
        link.unlink(missing_ok=True)
        if old is not None:
            link.symlink_to(old)


def _proc_mounts() -> dict[str, tuple[str, str]]:
    out = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target, fstype, *_ = line.split()
        out[target] = (source, fstype)
    return out


def _umount(path: Path) -> None:
    r = subprocess.run(["umount", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for _ in range(100):  # the daemon exits once the kernel has ended the session
        if not os.path.ismount(path):
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} still mounted")


@root_only
def test_mount_a_on_scratch_fstab(helpers, sandbox, tmp_path):
    mnt_a, mnt_b, mnt_c = (tmp_path / n for n in ("a", "b", "c"))
    for m in (mnt_a, mnt_b, mnt_c):
        m.mkdir()
    ct, mr = by_modality(sandbox, "CT"), by_modality(sandbox, "MR")
    common = f"s3_endpoint={sandbox.s3_endpoint},gcs_endpoint={sandbox.gcs_endpoint},manifest={sandbox.manifest}"
    # A license with spaces (\040), and a filter with spaces, quotes and a comma inside double quotes.
    only_ct = f"filter=\"crdc_series_uuid\\040IN\\040('{ct['crdc_series_uuid']}',\\040'{mr['crdc_series_uuid']}')\""
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"# scratch fstab\n"
        f"idc-a {mnt_a} fuse.idcfs _netdev,nofail,{common},cache_dir={tmp_path / 'ca'},license=CC\\040BY\\0404.0 0 0\n"
        f"idc-b {mnt_b} fuse.idcfs defaults,{common},cache_dir={tmp_path / 'cb'},{only_ct},source=gcs 0 0\n"
        f"idc-c {mnt_c} fuse.idcfs noauto,{common},cache_dir={tmp_path / 'cc'} 0 0\n"
    )
    try:
        r = subprocess.run(["mount", "-a", "-T", str(fstab)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        mounts = _proc_mounts()
        assert mounts[str(mnt_a)] == ("idc-a", "fuse.idcfs") and mounts[str(mnt_b)] == ("idc-b", "fuse.idcfs")
        assert not os.path.ismount(mnt_c)  # noauto
        # The options took effect: a license filter, a filter from the GCS mirror; bytes are the origin's.
        origin = origin_files(sandbox)
        licensed = {uuid_of(d) for d, _, files in os.walk(mnt_a) if files}
        licenses = licenses_of([s["crdc_series_uuid"] for s in sandbox.series])
        want = {u for u, lic in licenses.items() if lic == "CC BY 4.0"}
        assert licensed == want
        got = read_all(mnt_b)
        assert {k.split("/")[0] for k in got} == {ct["crdc_series_uuid"], mr["crdc_series_uuid"]}
        assert all(origin[k] == v for k, v in got.items())
        assert os.getxattr(mnt_b, "user.idc.idc_version") == b"v25"
        # mount -a again mounts nothing twice; a named noauto line mounts on request.
        r = subprocess.run(["mount", "-a", "-T", str(fstab)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["mount", "-T", str(fstab), str(mnt_c)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and os.path.ismount(mnt_c), r.stderr
    finally:
        for m in (mnt_a, mnt_b, mnt_c):
            subprocess.run(["umount", str(m)], capture_output=True)
    assert not any(os.path.ismount(m) for m in (mnt_a, mnt_b, mnt_c))


@root_only
def test_mount_t_and_bad_options(helpers, sandbox, tmp_path):
    mnt = tmp_path / "m"
    mnt.mkdir()
    opts = f"s3_endpoint={sandbox.s3_endpoint},manifest={sandbox.manifest},cache_dir={tmp_path / 'c'}"
    for fstype in ("fuse.idcfs", "idcfs"):  # /sbin/mount.fuse.idcfs and /sbin/mount.idcfs
        r = subprocess.run(["mount", "-t", fstype, "idc", str(mnt), "-o", opts], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert _proc_mounts()[str(mnt)] == ("idc", "fuse.idcfs")
        assert len(list(mnt.rglob("*.dcm"))) == len(sandbox.objects)
        _umount(mnt)
    for bad, expect in (
        ("frobnicate", "unknown"),
        ("cache_size=lots", "--cache-size"),
        ("idc_version=0", "releases count from 1"),
        ("license=CC\\040BY\\0409.0", "unknown --license"),
    ):
        r = subprocess.run(
            ["mount", "-t", "fuse.idcfs", "idc", str(mnt), "-o", f"{opts},{bad.replace(chr(92) + '040', ' ')}"],
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0 and expect in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not os.path.ismount(mnt)


# ---------------------------------------------------------------------------
# systemd


def _service_lines(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key + "=")]


def _expand(command: str, mountpoint: Path, env: dict) -> list[str]:
    """ExecStart/ExecStop as systemd runs them: %f is the mountpoint, $VAR splits at spaces, a leading '-'
    means a failure is ignored."""
    words = []
    for word in shlex.split(command.lstrip("-").replace("%f", str(mountpoint))):
        if word.startswith("$"):
            words += env.get(word[1:], "").split()
        else:
            words.append(word)
    return words


class NotifySocket:
    """The socket systemd listens on for a Type=notify service."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(60)

    def next(self) -> str:
        return self.sock.recv(4096).decode()


def test_unit_mounts_on_start_and_unmounts_on_stop(sandbox, tmp_path):
    unit = _unit_for_this_checkout(tmp_path)
    mnt = tmp_path / "mnt-idc"  # systemd creates it: ExecStartPre=mkdir -p %f
    env_file = {
        "IDCFS_OPTIONS": f"--s3-endpoint {sandbox.s3_endpoint} --manifest {sandbox.manifest} "
        f"--cache-dir {tmp_path / 'cache'}",
    }
    (pre,) = _service_lines(unit, "ExecStartPre")
    (start,) = _service_lines(unit, "ExecStart")
    (stop,) = _service_lines(unit, "ExecStop")
    notify = NotifySocket(tmp_path / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    for how in ("ExecStop", "SIGTERM"):
        subprocess.run(_expand(pre, mnt, env_file), check=True)
        main = subprocess.Popen(_expand(start, mnt, env_file), env=env, stderr=subprocess.PIPE, text=True)
        try:
            message = notify.next()
            assert message.startswith("READY=1\nSTATUS=serving IDC v25"), message
            assert os.path.ismount(mnt)  # ready means mounted: units after this one find the files
            assert read_all(mnt) == origin_files(sandbox)
            if how == "ExecStop":
                r = subprocess.run(_expand(stop, mnt, env_file), capture_output=True, text=True)
                assert r.returncode == 0, r.stderr
            else:  # systemd's stop when ExecStop could not unmount: SIGTERM to the main process
                main.send_signal(signal.SIGTERM)
                assert notify.next() == "STOPPING=1"
            assert main.wait(timeout=30) == 0, main.stderr.read()
            assert not os.path.ismount(mnt)
        finally:
            if main.poll() is None:
                main.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
