"""Deployment: the mount(8) helper with real `mount -a` on a scratch fstab, the systemd unit (verified by
systemd-analyze and run as systemd would run it, READY=1 included), and the container recipes' linters."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idcfs.fstab import OptionError, mount_argv, split_options

from .conftest import REPO, by_modality, licenses_of, origin_files, read_all, uuid_of

PACKAGING = REPO / "packaging"
BIN = Path(sys.executable).parent
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) helpers and fstab mounts need root")


# ---------------------------------------------------------------------------
# Option parsing (no mount)


def test_fstab_options_become_mount_flags():
    opts = (
        "rw,nosuid,nodev,noexec,_netdev,nofail,defaults,source=gcs,cache-dir=/var/cache/x,allow_other,"
        "license=CC BY 4.0,license=commercial,collection=nlst,collection=4d_lung,"
        "filter=\"Modality IN ('CT','MR') AND x = 'a,b'\",idc_version=v18,x-systemd.automount,comment=x"
    )
    assert mount_argv("idc", "/mnt/idc", opts) == [
        "mount", "/mnt/idc", "--fsname", "idc",
        "--source", "gcs", "--cache-dir", "/var/cache/x", "--allow-other",
        "--license", "CC BY 4.0", "--license", "commercial", "--collection", "nlst", "--collection", "4d_lung",
        "--filter", "Modality IN ('CT','MR') AND x = 'a,b'", "--idc-version", "v18",
    ]  # fmt: skip
    assert split_options('a="x,y",,b') == ['a="x,y"', "b"]
    for bad, why in (
        ("cache_size=1G,cache_size=2G", "given twice"),
        ("frobnicate", "'frobnicate' (unknown)"),
        ("allow_other=1", "takes no value"),
        ("cache_dir", "takes a value"),
        ('filter="a', "unbalanced double quote"),
    ):
        with pytest.raises(OptionError, match=re.escape(why)):
            mount_argv("idc", "/m", bad)
    assert mount_argv("idc", "/m", "frobnicate,ro", sloppy=True)[:4] == ["mount", "/m", "--fsname", "idc"]


def test_system_mounts_default_to_var_cache(monkeypatch):
    monkeypatch.delenv("IDCFS_CACHE_DIR", raising=False)
    argv = mount_argv("idc", "/m", "ro")
    if os.geteuid() == 0:
        assert argv[-2:] == ["--cache-dir", "/var/cache/idcfs"]
    else:
        assert "--cache-dir" not in argv
    assert mount_argv("idc", "/m", "cache_dir=/c").count("--cache-dir") == 1


def test_helper_fake_and_bad_input(tmp_path):
    helper = str(BIN / "mount.fuse.idcfs")
    r = subprocess.run([helper, "idc", str(tmp_path), "-f", "-o", "rw,cache_size=2G"], capture_output=True, text=True)
    assert r.returncode == 0 and "idcfs mount" in r.stderr and "--cache-size 2G" in r.stderr, r.stderr
    for opts, expect in (("bogus", "unknown"), ("source=azure", "invalid choice: 'azure'")):
        r = subprocess.run([helper, "idc", str(tmp_path), "-f", "-o", opts], capture_output=True, text=True)
        assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.ismount(tmp_path)


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


UNIT = PACKAGING / "idcfs@.service"


def _unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /usr/local/bin/idcfs replaced by this checkout's idcfs, named for one instance."""
    d = tmp_path / "units"
    d.mkdir()
    text = UNIT.read_text().replace("/usr/local/bin/idcfs", str(BIN / "idcfs"))
    (d / "idcfs@.service").write_text(text)
    return d / "idcfs@.service"


def _service_lines(unit: Path, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key + "=")]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    unit = _unit_for_this_checkout(tmp_path)
    instance = unit.with_name("idcfs@mnt-idc.service")
    shutil.copy(unit, instance)
    for u in (unit, instance):
        r = subprocess.run(["systemd-analyze", "verify", str(u)], capture_output=True, text=True, cwd=u.parent)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    # A broken unit does fail, so the check above means something.
    broken = unit.with_name("idcfs@broken.service")
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, cwd=unit.parent)
    assert "Failed to parse service type" in r.stderr


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


# ---------------------------------------------------------------------------
# Container recipes: linted and schema-checked here; no Docker engine or cluster runs on this machine.


def test_dockerfile_lints():
    r = subprocess.run([str(BIN / "hadolint"), str(PACKAGING / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_build_stage_has_what_the_wheel_needs(tmp_path):
    """The build stage's COPY lines, done by hand: the wheel builds from exactly what they copy."""
    src = tmp_path / "src"
    for line in (PACKAGING / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, dest = line.split()[1:]
            for name in sources:
                target = tmp_path / dest.lstrip("/") / (Path(name).name if dest.endswith("/") else "")
                target.parent.mkdir(parents=True, exist_ok=True)
                copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
                copy(REPO / name, target)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheels"), str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import zipfile

    (wheel,) = (tmp_path / "wheels").glob("idcfs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the image's wheel has no LICENSE"
    assert "idcfs/py.typed" in names


def test_kubernetes_manifests_validate():
    import yaml

    files = sorted((PACKAGING / "kubernetes").glob("*.yaml"))
    r = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", *map(str, files)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.count("passed") == len(files), r.stdout + r.stderr
    ds = yaml.safe_load((PACKAGING / "kubernetes" / "idcfs-daemonset.yaml").read_text())
    pod = yaml.safe_load((PACKAGING / "kubernetes" / "training-pod.yaml").read_text())
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mountpoint = c["args"][0]
    assert c["securityContext"]["privileged"] and host["fuse"] == "/dev/fuse"
    assert mounts[mountpoint]["mountPropagation"] == "Bidirectional" and host[mounts[mountpoint]["name"]] == mountpoint
    assert c["lifecycle"]["preStop"]["exec"]["command"][:2] == ["idcfs", "unmount"]
    (pv,) = pod["spec"]["volumes"]
    (pm,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert pv["hostPath"]["path"] == mountpoint and pm["mountPropagation"] == "HostToContainer" and pm["readOnly"]
