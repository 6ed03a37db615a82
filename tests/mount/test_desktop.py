"""A person browsing: pcmanfm under Xvfb on readable mounts, the sandbox cohort's and the whole index's.

Needs Xvfb, pcmanfm, xdotool and ImageMagick's `import` (`make test-desktop` installs them); skipped without.
Screenshots are written to the test's directory, and to $IDCFS_SCREENSHOTS when it is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ..conftest import by_modality

TOOLS = ("Xvfb", "pcmanfm", "xdotool", "import")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}: make test-desktop"
)


@pytest.fixture
def display(tmp_path):
    r, w = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(w,),
        stderr=subprocess.DEVNULL,
    )
    os.close(w)
    with os.fdopen(r) as ready:
        number = ready.readline().strip()  # Xvfb writes its display number once it accepts clients
    assert number, "Xvfb did not start"
    yield f":{number}"
    xvfb.kill()
    xvfb.wait()


def _window_names(env: dict) -> list[str]:
    r = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--class", "pcmanfm", "getwindowname", "%@"],
        capture_output=True,
        text=True,
        env=env,
    )
    return r.stdout.splitlines()


def show(folder: Path, display: str, shot: Path) -> list[str]:
    """Open folder in pcmanfm (list view, so names show whole), screenshot the screen once its window is up;
    return the visible pcmanfm windows' titles."""
    home = shot.parent / f"home-{shot.stem}"
    conf = home / ".config" / "pcmanfm" / "default"
    conf.mkdir(parents=True)
    (conf / "pcmanfm.conf").write_text("[ui]\nview_mode=list\nwin_width=1260\nwin_height=780\n")
    env = {**os.environ, "DISPLAY": display, "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
    app = subprocess.Popen(["pcmanfm", str(folder)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while folder.name not in _window_names(env):
            assert app.poll() is None, "pcmanfm exited"
            assert time.monotonic() < deadline, f"no pcmanfm window for {folder}"
            time.sleep(0.5)
        time.sleep(2)  # the listing is drawn after the window maps
        subprocess.run(["import", "-window", "root", str(shot)], check=True, env=env, timeout=60)
        return _window_names(env)
    finally:
        app.kill()
        app.wait()
        if os.environ.get("IDCFS_SCREENSHOTS") and shot.exists():
            shutil.copy(shot, os.environ["IDCFS_SCREENSHOTS"])


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        gray = image.convert("L")
        histogram = gray.histogram()
        background = max(histogram)
        drawn = (gray.width * gray.height - background) / (gray.width * gray.height)
        assert drawn > 0.05 and sum(1 for n in histogram if n) > 16, f"{png} looks blank ({drawn:.1%} drawn)"


def test_pcmanfm_shows_a_readable_mount(mount, sandbox, tmp_path, display):
    mnt = mount("--layout", "readable")
    ct = by_modality(sandbox, "CT")
    patient = mnt / ct["collection_id"] / ct["PatientID"]
    (study,) = [p for p in patient.iterdir() if p.is_dir()]
    assert not study.name.startswith("1.") and " " in study.name  # a date and a description, not a UID
    series = sorted(p.name for p in study.iterdir())
    assert any(name.split(" ")[1] == "CT" for name in series), series
    assert study.name in show(study, display, tmp_path / "readable-cohort.png")
    assert_not_blank(tmp_path / "readable-cohort.png")


def test_pcmanfm_shows_the_whole_index_readable(mount, tmp_path, display):
    mnt = mount("--layout", "readable", manifest=False)
    assert len(os.listdir(mnt)) > 100  # every collection
    patient = mnt / "upenn_gbm" / "UPENN-GBM-00001"
    studies = os.listdir(patient)
    # Three studies of one day with one description: told apart by the end of their UIDs.
    assert sum(name.startswith("2002-02-06 BRAIN^ROUTINE (") for name in studies) >= 2, studies
    assert patient.name in show(patient, display, tmp_path / "readable-index.png")
    assert_not_blank(tmp_path / "readable-index.png")
