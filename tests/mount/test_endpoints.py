"""Endpoint URLs: every malformed value of --s3-endpoint, --gcs-endpoint or their environment variables gets
one line and exit status 2, with nothing mounted; no value produces a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..unit.test_endpoints import BAD


def _idcfs(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "idcfs", *map(str, args)], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_endpoints_through_the_cli(tmp_path, kind):
    """Each bad value, as either flag and as either variable, to mount and prefetch: one line, exit 2."""
    mnt = tmp_path / "m"
    mnt.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDCFS_")}
    for url in (u for u in BAD[kind] if "\x00" not in u):  # a NUL cannot be passed in argv or the environment
        for flag, var in (("--s3-endpoint", "IDCFS_S3_ENDPOINT"), ("--gcs-endpoint", "IDCFS_GCS_ENDPOINT")):
            runs = [
                (["mount", mnt, "--cache-dir", tmp_path / "c", flag, url], base, flag),
                (["mount", mnt, "--cache-dir", tmp_path / "c"], {**base, var: url}, var),
                (["prefetch", "--collection", "nlst", "--cache-dir", tmp_path / "c", flag, url], base, flag),
            ]
            for args, env, name in runs:
                if env.get(var) == "":
                    continue  # an empty variable counts as unset
                r = _idcfs(*args, env=env)
                where = f"{args[0]} with {name}={url!r}"
                assert r.returncode == 2, f"{where}: exit {r.returncode}: {r.stderr}"
                assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, f"{where}: {r.stderr}"
                assert f"bad {name}" in r.stderr, f"{where}: {r.stderr}"
                assert not os.path.ismount(mnt)
