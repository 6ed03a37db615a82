"""Deployment: the container recipes, linted and schema-checked here; no Docker engine or cluster runs on this
machine. Needs the test extra's linters (hadolint, kubernetes-validate) and pip to build a wheel, so not the unit
tier; no servers, no mount."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO
from ..unit.test_deploy import BIN, PACKAGING


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
