"""Endpoint URLs: every malformed value of --s3-endpoint, --gcs-endpoint or their environment variables gets
one line and exit status 2, with nothing mounted; no value produces a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idcfs.store import endpoint_problem

GOOD = [
    "http://127.0.0.1:9000",
    "https://s3.amazonaws.com",
    "https://storage.googleapis.com/",
    "http://localhost",
    "HTTP://Minio.Local:9000",
    "http://[::1]:4443",
    "http://[2001:db8::1]",
    "http://s3.example.com./prefix/path",
    "http://xn--bcher-kva.example",
]

# Classes of bad values, each with a few members: scheme, host, port, brackets, credentials, the rest.
BAD = {
    "scheme": ["", "not a url", "s3://bucket", "ftp://host", "127.0.0.1:9000", "http:/host", "://host", "file:///etc"],
    "host": ["http://", "http:///path", "http://:9000", "http://-bad.com", "http://bad-.com", "http://a..b",
             "http://exämple.com", "http://999.1.1.1", "http://1.2.3", "http://" + "a" * 64 + ".com",
             "http://under_score.com", "http://%41bc.com"],
    "port": ["http://h:", "http://h:0", "http://h:65536", "http://h:99999999999999999999", "http://h:port",
             "http://h:-1", "http://h:+80", "http://h:٨٠", "http://h:80:81", "http://[::1]:x"],
    "brackets": ["http://[::1", "http://::1]", "http://[zz]", "http://[]", "http://[::1]x", "http://a]b",
                 "http://[[::1]]", "http://[127.0.0.1]"],
    "credentials": ["http://user@h", "http://user:secret@h:9000", "https://:@h", "http://a@b@c"],
    "rest": ["http://h/p?x=1", "http://h#frag", "http://h /x", "http://h\t", "http://h\n", "http://h\x00",
             " http://h", "http://h/\u200b"],
}  # fmt: skip
BAD_VALUES = [v for values in BAD.values() for v in values]


@pytest.mark.parametrize("url", GOOD)
def test_good_endpoints(url):
    assert endpoint_problem(url) is None


@pytest.mark.parametrize("url", BAD_VALUES)
def test_bad_endpoints_say_why(url):
    problem = endpoint_problem(url)
    assert problem and "\n" not in problem


def _url_parts():
    host = st.one_of(
        st.from_regex(r"[A-Za-z0-9\-._~%\[\]:@!$&'()*+,;=]{0,20}", fullmatch=True),
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
        st.text(max_size=12),
    )
    port = st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), st.text(max_size=6).map(":".__add__))
    scheme = st.sampled_from(["http://", "https://", "HTTP://", "http:/", "", "s3://", "http:///"])
    tail = st.one_of(st.just(""), st.text(max_size=12).map("/".__add__), st.text(max_size=8))
    return st.tuples(scheme, host, port, tail).map("".join)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_url_parts(), st.text(max_size=40)))
def test_any_text_is_an_answer_never_an_exception(url):
    problem = endpoint_problem(url)
    if problem is None:  # an accepted URL is one every client parses
        u = urlsplit(url)
        assert u.scheme.lower() in ("http", "https") and u.hostname and u.username is None
        assert u.port is None or 0 < u.port < 65536
        assert not u.query and not u.fragment
    else:
        assert isinstance(problem, str) and problem


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


def test_bad_endpoints_through_fsspec():
    import fsspec

    for url in filter(None, BAD_VALUES):  # an empty value means "not given", as an empty variable does
        with pytest.raises(ValueError, match="bad s3_endpoint"):
            fsspec.filesystem("idc", s3_endpoint=url, skip_instance_cache=True)
