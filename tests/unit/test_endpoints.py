"""Endpoint URLs: each good value is accepted and each malformed one is named in one line, through the checker
and through idc://. The same values through the CLI: tests/mount/test_endpoints.py."""

from __future__ import annotations

import pytest

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


def test_bad_endpoints_through_fsspec():
    import fsspec

    for url in filter(None, BAD_VALUES):  # an empty value means "not given", as an empty variable does
        with pytest.raises(ValueError, match="bad s3_endpoint"):
            fsspec.filesystem("idc", s3_endpoint=url, skip_instance_cache=True)
