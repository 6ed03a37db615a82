"""Deployment without mounting: fstab options to mount flags, the mount(8) helper's fake mode (-f) and bad input,
and the systemd unit verified by systemd-analyze. Real mounts through mount(8) and systemd: tests/mount/test_deploy.py;
the container recipes' linters: tests/engine/test_deploy.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from idcfs.fstab import OptionError, mount_argv, split_options

from ..conftest import REPO

PACKAGING = REPO / "packaging"
BIN = Path(sys.executable).parent


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
# systemd


UNIT = PACKAGING / "idcfs@.service"


def _unit_for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /usr/local/bin/idcfs replaced by this checkout's idcfs, named for one instance."""
    d = tmp_path / "units"
    d.mkdir()
    text = UNIT.read_text().replace("/usr/local/bin/idcfs", str(BIN / "idcfs"))
    (d / "idcfs@.service").write_text(text)
    return d / "idcfs@.service"


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
