"""The wheel check: idcfs as a user installs it, tested against the sandbox origin.

It builds the wheel, installs it with no extras into a fresh virtualenv at the newest versions pyproject
allows (what `pip install idcfs` gives a new user today; `--lowest` takes the lowest versions instead, to
prove the lower bounds), and checks there, byte for byte against the origin, that
  - the wheel carries what a user needs (py.typed, the entry points, the license),
  - `idcfs mount` (and `idcfs.mounted`, `mount.idcfs`) mounts and reads files,
  - `idc://` works, `idcfs.Index` works, and `idcfs cite` works,
  - with `--lowest`, the unit tier (tests/unit) passes on it, with pytest added: it needs nothing else.

The locked test environment runs this file and the sandbox; the checks run in the fresh virtualenv
(`--inside`), from outside the repository, so they see only what the wheel installed. When a check fails,
each package whose version differs from requirements.lock is put back to the lock's version in turn and
the check run again: the package that makes it pass is named, with both versions.

    python tests/wheel_check.py [--lowest] [--keep]       # make wheel-check
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
SCRIPTS = ("idcfs", "mount.idcfs", "mount.fuse.idcfs")


# ---------------------------------------------------------------------------
# Inside the fresh virtualenv: the checks. Only the standard library and what the wheel installed.


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_uncached(path: Path) -> bytes:  # as idcfs.testing.sandbox's, which needs the sandbox extra to import
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _run(*cmd, timeout=180) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd[:3]))} … exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


class Checks:
    def __init__(self, state: dict, work: Path):
        self.state = state
        self.work = work
        self.bin = Path(sys.executable).parent
        self.by_name = {key.rsplit("/", 1)[1]: sha for key, sha in state["objects"].items()}
        self.origin = ["--s3-endpoint", state["s3_endpoint"], "--gcs-endpoint", state["gcs_endpoint"]]
        self.options = {
            "manifest": state["manifest"],
            "s3_endpoint": state["s3_endpoint"],
            "gcs_endpoint": state["gcs_endpoint"],
        }

    def _fresh(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def _compare_tree(self, files: dict[str, bytes]) -> str:
        """files: path in the tree -> bytes. They must be the cohort's objects, every one, byte for byte."""
        names = {p.rsplit("/", 1)[1]: p for p in files}
        missing = sorted(set(self.by_name) - set(names))
        extra = sorted(set(names) - set(self.by_name))
        assert not missing and not extra, f"files missing {missing[:3]}, unexpected {extra[:3]}"
        wrong = [p for p, data in files.items() if _sha256(data) != self.by_name[p.rsplit("/", 1)[1]]]
        assert not wrong, f"{len(wrong)} files differ from the origin's bytes, e.g. {wrong[0]}"
        return f"{len(files)} files, {sum(map(len, files.values())) / 1e6:.0f} MB equal to the origin's"

    def check_installed(self) -> str:
        import importlib.metadata as md
        import importlib.resources

        import fsspec

        import idcfs

        where = Path(idcfs.__file__).resolve()
        assert Path(sys.prefix).resolve() in where.parents, f"idcfs imported from {where}, not the virtualenv"
        assert REPO not in where.parents, f"idcfs imported from the source tree ({where})"
        assert importlib.resources.files("idcfs").joinpath("py.typed").is_file(), "py.typed is not installed"
        dist = md.distribution("idcfs")
        scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
        assert set(SCRIPTS) <= set(scripts), f"console scripts {sorted(scripts)}"
        for name in SCRIPTS:
            assert (self.bin / name).is_file(), f"{name} is not in {self.bin}"
        specs = {e.name: e.value for e in dist.entry_points if e.group == "fsspec.specs"}
        assert specs.get("idc") == "idcfs.fsspec:IdcFileSystem", f"fsspec.specs {specs}"
        from idcfs.fsspec import IdcFileSystem

        assert fsspec.get_filesystem_class("idc") is IdcFileSystem
        assert any(str(f).endswith("licenses/LICENSE") for f in dist.files or ()), "the wheel has no LICENSE"
        assert dist.metadata["License-Expression"] == "MIT", dist.metadata["License-Expression"]
        import idc_index_data

        assert Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).is_file(), "idc-index-data has no index file"
        return f"idcfs {idcfs.__version__} from {where.parent}"

    def check_unit(self) -> str:
        # importlib mode leaves the source tree off sys.path: the tests import the installed idcfs.
        tests = REPO / "tests" / "unit"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib", tests]
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"pytest tests/unit exited {r.returncode}: {r.stdout[-3000:]}{r.stderr[-1000:]}"
        return "tests/unit: " + r.stdout.strip().splitlines()[-1]

    def check_mount(self) -> str:
        mnt, cache = self._fresh("mnt"), self._fresh("cache-mount")
        _run(self.bin / "idcfs", "mount", mnt, "--cache-dir", cache, "--manifest", self.state["manifest"], *self.origin)
        try:
            assert os.path.ismount(mnt), f"{mnt} is not a mount point after idcfs mount"
            files = {str(p.relative_to(mnt)): _read_uncached(p) for p in sorted(mnt.rglob("*")) if p.is_file()}
            done = self._compare_tree(files)
            series = sorted({str(Path(p).parent) for p in files})
            info = json.loads(_run(self.bin / "idcfs", "info", "--json", mnt / series[0]).stdout.splitlines()[0])
            assert info, "idcfs info printed nothing"
            cited = _run(self.bin / "idcfs", "cite", mnt).stdout
            self._check_dois(cited, "idcfs cite MOUNT")
            stats = json.loads(_run(self.bin / "idcfs", "stats", "--json", mnt).stdout)
            assert stats, "idcfs stats printed nothing"
        finally:
            subprocess.run([self.bin / "idcfs", "unmount", mnt], capture_output=True)
        assert not os.path.ismount(mnt), f"{mnt} is still mounted after idcfs unmount"
        return done

    def check_mounted_api(self) -> str:
        import idcfs

        cache = self._fresh("cache-api")
        opts = dict(self.options, cache_dir=cache)
        with idcfs.mounted(self.work / "api-mnt", **opts) as root:
            path = next(p for p in sorted(root.rglob("*.dcm")))
            assert _sha256(_read_uncached(path)) == self.by_name[path.name], f"{path} differs from the origin"
        assert not (self.work / "api-mnt").exists(), "idcfs.mounted left its mountpoint behind"
        helper = _run(self.bin / "mount.idcfs", "idc", self._fresh("fstab-mnt"), "-f", "-o", "cache_size=2G")
        assert "--cache-size 2G" in helper.stderr, helper.stderr
        return "idcfs.mounted read a file; mount.idcfs -f checked its options"

    def check_fsspec(self) -> str:
        import fsspec

        cache = self._fresh("cache-fsspec")
        fs = fsspec.filesystem("idc", cache_dir=str(cache), **self.options)
        paths = fs.find("")
        files = {p: fs.cat_file(p) for p in paths}
        done = self._compare_tree(files)
        first = paths[0]
        with fsspec.open("idc://" + first, cache_dir=str(cache), **self.options) as f:
            assert f.read() == files[first], "fsspec.open read other bytes than cat_file"
        assert fs.cat_file(first, start=128, end=1128) == files[first][128:1128], "a ranged cat_file differs"
        assert fs.info(first)["size"] == len(files[first])
        return done

    def check_index(self) -> str:
        import idcfs

        ix = idcfs.Index(manifest=self.state["manifest"])
        want = {s["crdc_series_uuid"]: s for s in self.state["series"]}
        assert len(ix) == len(want), f"Index has {len(ix)} series, the manifest {len(want)}"
        rows = ix.sql("SELECT crdc_series_uuid, SeriesInstanceUID, path FROM index").to_pylist()
        assert {r["crdc_series_uuid"] for r in rows} == set(want)
        for r in rows:
            assert ix.path(r["SeriesInstanceUID"]) == r["path"], r
            assert ix.metadata(r["path"])["crdc_series_uuid"] == r["crdc_series_uuid"], r
            assert r["path"].endswith(r["SeriesInstanceUID"]), r
        assert sorted(ix.paths()) == sorted(r["path"] for r in rows)
        counts = ix.sql("SELECT Modality, count(*) AS n FROM index GROUP BY Modality ORDER BY Modality").to_pydict()
        return f"{len(rows)} series; modalities {dict(zip(counts['Modality'], counts['n'], strict=True))}"

    def _dois(self) -> set[str]:
        import idcfs

        ix = idcfs.Index(manifest=self.state["manifest"])
        return {d.lower() for d in ix.sql("SELECT DISTINCT source_DOI FROM index")["source_DOI"].to_pylist() if d}

    def _check_dois(self, text: str, what: str) -> None:
        missing = sorted(d for d in self._dois() if d not in text.lower())
        assert not missing, f"{what} does not cite {missing}"

    def check_cite(self) -> str:
        text = _run(self.bin / "idcfs", "cite", "--manifest", self.state["manifest"]).stdout
        self._check_dois(text, "idcfs cite --manifest")
        bib = _run(self.bin / "idcfs", "cite", "--format", "bibtex", "--manifest", self.state["manifest"]).stdout
        self._check_dois(bib, "idcfs cite --format bibtex")
        assert bib.count("@") >= len(self._dois()), "fewer BibTeX entries than source DOIs"
        return f"{len(self._dois())} source DOIs cited, in text and BibTeX"


CHECKS = ("installed", "unit", "mount", "mounted_api", "fsspec", "index", "cite")


def inside(state_path: Path, work: Path, only: list[str]) -> int:
    checks = Checks(json.loads(state_path.read_text()), work)
    for name in only or CHECKS:
        t0 = time.monotonic()
        try:
            detail = getattr(checks, f"check_{name}")()
        except Exception as e:
            traceback.print_exc()
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            print(json.dumps({"failed": name}), flush=True)
            return 1
        print(f"ok   {name:<12} {time.monotonic() - t0:5.1f} s  {detail}", flush=True)
    return 0


# ---------------------------------------------------------------------------
# Outside: build, install, serve the origin, run the checks, and name the package that broke them.


def _lock_versions() -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out = {}
    for line in LOCK.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line.rstrip(" \\"))
            if req.marker is None or req.marker.evaluate():
                out[canonicalize_name(req.name)] = next(iter(req.specifier)).version
    return out


def _installed(python: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    r = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(r.stdout)}


def _step(text: str) -> None:
    print(f"== {text}", flush=True)


def _check_wheel(wheel: Path) -> None:
    """What the wheel holds, before installing it: the package, its data, no tests or benchmarks."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = z.read(meta).decode()
        entry_points = z.read(meta.replace("METADATA", "entry_points.txt")).decode()
    assert "idcfs/py.typed" in names, "py.typed is not in the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))], "tests or bench are in the wheel"
    assert "License-Expression: MIT" in metadata, "no SPDX License-Expression in the metadata"
    upath = ("[universal_pathlib.implementations]", "idc = idcfs.upath:IdcPath")
    for name in (*SCRIPTS, "[fsspec.specs]", "idc = idcfs.fsspec:IdcFileSystem", *upath):
        assert name in entry_points, f"{name} is not in entry_points.txt"


def _requires(wheel: Path) -> list[str]:
    """The wheel's requirements without extras."""
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    reqs = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    return [r for r in reqs if "extra ==" not in r]


def _install(venv: Path, wheel: Path, lowest: bool, log) -> None:
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    if lowest:  # idcfs's own requirements named directly, so that each takes its lower bound
        uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
        cmd = [uv, "pip", "install", "--python", python, "--resolution", "lowest-direct", wheel, *_requires(wheel)]
    else:
        subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True, stdout=log)
        cmd = [python, "-m", "pip", "install", wheel]  # no extras, newest allowed versions
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(r.stdout + r.stderr)
    if r.returncode != 0:
        print(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"wheel check FAILED: installing {wheel.name} failed (exit {r.returncode})")
    if lowest:  # the unit tier's runner (check_unit), at the lock's version
        r = subprocess.run([python, "-m", "pip", "install", "-q", f"pytest=={_lock_versions()['pytest']}"], stdout=log)
        if r.returncode != 0:
            raise SystemExit(f"wheel check FAILED: installing pytest failed (exit {r.returncode})")


def _run_inside(python: Path, state: Path, work: Path, only=(), quiet=False) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [python, __file__, "--inside", state, work, *[f"--only={c}" for c in only]]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if not quiet:
            print("   " + line, end="", flush=True)
    return proc.wait(), "".join(out)


def _culprit(python: Path, state: Path, work: Path, failed: str, differs: dict, deadline: float) -> str:
    """Put each differing package back to the lock's version, alone, and run the failed check again."""
    major_first = sorted(differs, key=lambda n: (differs[n][0].split(".")[0] == differs[n][1].split(".")[0], n))
    for name in major_first:
        if time.monotonic() > deadline:
            return "no package named before the time limit: " + _list(differs)
        new, locked = differs[name]
        pin = [python, "-m", "pip", "install", "-q"]
        subprocess.run([*pin, f"{name}=={locked}"], capture_output=True)
        rc, _ = _run_inside(python, state, work, only=[failed], quiet=True)
        subprocess.run([*pin, f"{name}=={new}"], capture_output=True)
        print(f"   with {name} {locked} instead of {new}: {'passes' if rc == 0 else 'still fails'}", flush=True)
        if rc == 0:
            return f"{name} {new} breaks idcfs: the check passes with {name} {locked} (the lock's)"
    return "no single package at the lock's version makes it pass; differing from the lock: " + _list(differs)


def _list(differs: dict) -> str:
    return ", ".join(f"{n} {new} (lock {old})" for n, (new, old) in sorted(differs.items())) or "none"


def outside(lowest: bool, keep: bool) -> int:
    from idcfs.testing.sandbox import Sandbox

    t0 = time.monotonic()
    kind = "lowest versions pyproject allows" if lowest else "newest versions pyproject allows"
    work = Path(tempfile.mkdtemp(prefix="idcfs-wheel-check-"))
    log_path = work / "install.log"
    try:
        with open(log_path, "w") as log:
            _step("building the wheel")
            build = subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", work / "dist", REPO],
                capture_output=True,
                text=True,
            )
            log.write(build.stdout + build.stderr)
            warned = [x.strip() for x in (build.stdout + build.stderr).splitlines() if "Deprecat" in x]
            if build.returncode != 0 or warned:
                print(build.stdout[-3000:] + build.stderr[-3000:])
                raise SystemExit(f"wheel check FAILED: building the wheel {warned[0] if warned else 'failed'}")
            (wheel,) = (work / "dist").glob("idcfs-*.whl")
            _check_wheel(wheel)
            _step(f"installing {wheel.name} with no extras, at the {kind}, into a fresh virtualenv")
            _install(work / "venv", wheel, lowest, log)
        python = work / "venv" / "bin" / "python"
        installed, locked = _installed(python), _lock_versions()
        differs = {n: (v, locked[n]) for n, v in installed.items() if n in locked and v != locked[n]}
        not_locked = sorted(set(installed) - set(locked) - {"idcfs", "pip", "setuptools"})
        _step(f"installed {len(installed)} packages in {time.monotonic() - t0:.0f} s; differing from the lock:")
        for n, (new, old) in sorted(differs.items()):
            print(f"   {n} {new} (lock {old})")
        if not_locked:
            print(f"   not in the lock: {', '.join(f'{n} {installed[n]}' for n in not_locked)}")
        _step("starting the sandbox origin")
        with Sandbox(REPO / ".sandbox") as state:
            state_path = work / "state.json"
            state.save(state_path)
            _step("checks, run in the fresh virtualenv")
            # The unit tier (about 30 s) once per make wheel-check: at the lowest versions, which the locked suite
            # never meets; the newest run installs the same packages.
            checks = CHECKS if lowest else [c for c in CHECKS if c != "unit"]
            rc, out = _run_inside(python, state_path, work, only=checks)
            if rc != 0:
                failed = json.loads(out.strip().splitlines()[-1])["failed"] if '"failed"' in out else None
                _step(f"check {failed} failed; looking for the package that broke it")
                why = _culprit(python, state_path, work, failed, differs, time.monotonic() + 600) if failed else ""
                print(f"wheel check FAILED ({kind}): {failed}: {why}", flush=True)
                return 1
        print(f"wheel check passed ({kind}) in {time.monotonic() - t0:.0f} s", flush=True)
        return 0
    finally:
        for mnt in ("mnt", "api-mnt", "fstab-mnt"):
            if os.path.ismount(work / mnt):
                subprocess.run(["fusermount3", "-u", "-z", work / mnt], capture_output=True)
        if keep:
            print(f"   kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lowest", action="store_true", help="install the lowest versions pyproject allows (uv)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (virtualenv, logs)")
    p.add_argument("--inside", nargs=2, type=Path, metavar=("STATE", "WORK"), help=argparse.SUPPRESS)
    p.add_argument("--only", action="append", default=[], choices=CHECKS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inside:
        return inside(*args.inside, args.only)
    return outside(args.lowest, args.keep)


if __name__ == "__main__":
    sys.exit(main())
