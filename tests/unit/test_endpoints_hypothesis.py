"""Endpoint URLs: no text makes the checker raise, and what it accepts every client parses. Needs hypothesis
(the test extra): skipped with the base install alone."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from idcfs.store import endpoint_problem  # noqa: E402


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
