"""Faulty origins without a mount: the object store against stalled origins behind a fault proxy, and the MD5s
both origins publish. Through real mounts: tests/mount/test_faults.py."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from idcfs.store import GCS_MIRROR, ObjectStore, StoreError
from idcfs.testing.faultproxy import FaultProxy

from ..conftest import by_modality


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_stalled_origins_fail_within_the_deadline_then_recover(sandbox):
    key, digest = next(iter(sandbox.objects.items()))
    bucket, name = key.split("/", 1)
    size = (Path(sandbox.data_dir) / "gcs" / GCS_MIRROR[bucket] / name).stat().st_size
    with FaultProxy(sandbox.s3_endpoint) as s3, FaultProxy(sandbox.gcs_endpoint) as gcs:
        for proxy in (s3, gcs):
            proxy.fault_rate, proxy.faults, proxy.stall_seconds = 1.0, ("stall",), 60.0
        store = ObjectStore("aws", s3.url, gcs.url, timeout=3.0)
        t = time.monotonic()
        with pytest.raises(StoreError, match="aws: .*gcs: "):
            store.read(bucket, name, 0, size, size)
        took = time.monotonic() - t
        assert took < 2 * 3.0 + 3, took  # one deadline per provider, retries included
        for proxy in (s3, gcs):
            proxy.fault_rate = 0.0
        data = store.read(bucket, name, 0, size, size)  # works at once: no waiting out the circuit breaker
    assert sha(data) == digest


@pytest.mark.parametrize("source", ["aws", "gcs"])
def test_listings_carry_the_origins_md5(sandbox, source):
    """What the MD5 check compares with: both origins publish it in the LIST, equal to the content's."""
    store = ObjectStore(source, sandbox.s3_endpoint, sandbox.gcs_endpoint, failover=False)
    row = by_modality(sandbox, "MR")
    objs = store.list_series(row["aws_bucket"], row["crdc_series_uuid"])
    gcs = Path(sandbox.data_dir) / "gcs" / GCS_MIRROR[row["aws_bucket"]] / row["crdc_series_uuid"]
    assert objs and all(o.md5 == hashlib.md5((gcs / o.name).read_bytes()).hexdigest() for o in objs)
