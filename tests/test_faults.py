"""Faulty origins: bounded failures, and recovery, against the real sandbox servers through a fault proxy."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from idcfs.faultproxy import FaultProxy
from idcfs.namespace import GCS_MIRROR
from idcfs.store import ObjectStore, StoreError, _Provider


def test_stalled_origins_fail_within_the_deadline_then_recover(sandbox, monkeypatch):
    monkeypatch.setattr(_Provider, "DEADLINE", 3.0)
    key, digest = next(iter(sandbox.objects.items()))
    bucket, name = key.split("/", 1)
    size = (Path(sandbox.data_dir) / "gcs" / GCS_MIRROR[bucket] / name).stat().st_size
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        for proxy in (s3, gcs):
            proxy.fault_rate, proxy.faults, proxy.stall_seconds = 1.0, ("stall",), 60.0
        store = ObjectStore("aws", s3.url, gcs.url)
        t = time.monotonic()
        with pytest.raises(StoreError, match="aws: .*gcs: "):
            store.read(bucket, name, 0, size, size)
        took = time.monotonic() - t
        assert took < 2 * 3.0 + 3, took  # one deadline per provider, retries included
        for proxy in (s3, gcs):
            proxy.fault_rate = 0.0
        data = store.read(bucket, name, 0, size, size)  # works at once: no waiting out the circuit breaker
    assert hashlib.sha256(data).hexdigest() == digest
