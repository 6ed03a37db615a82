"""The command line's basics, without mounting: --version, --help of each command, no command."""

from __future__ import annotations

from ..conftest import idcfs


def test_cli_basics():
    r = idcfs("--version")
    assert r.returncode == 0 and r.stdout.startswith("idcfs ")
    for args in (["--help"], ["mount", "--help"], ["unmount", "--help"], ["sandbox", "--help"]):
        r = idcfs(*args)
        assert r.returncode == 0 and "usage:" in r.stdout
    assert idcfs().returncode == 2
