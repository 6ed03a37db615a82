"""Unit tier for the read path's bookkeeping (no servers, no mount)."""

from __future__ import annotations

import trio

from idcfs.background import _parse
from idcfs.readpath import Reader, _Flight


def test_a_flight_forgets_only_its_own_entry():
    """A flight that ends after a newer flight took its key leaves the newer one in place."""
    r = Reader(store=None, cache=None, limiter=trio.CapacityLimiter(1))
    old, new = _Flight(), _Flight()
    r._flights["k"] = new
    r._forget("k", old)
    assert r._flights["k"] is new
    r._forget("k", new)
    assert "k" not in r._flights


def test_failpoints_parse():
    assert _parse("") == {}
    assert _parse("load, store:3,,fetch:x") == {"load": 1, "store": 3, "fetch": 1}
