"""Object store: unsigned LIST and ranged GET against IDC's S3 buckets or their GCS mirrors.

Everything here is blocking (s3fs/gcsfs sync API); the FUSE adapter calls it
from worker threads. It knows nothing of FUSE or of the directory tree.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .namespace import GCS_MIRROR

log = logging.getLogger(__name__)

DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com"

# Environment that could make a client sign requests with the user's identity.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "GCSFS_DEFAULT_PROJECT",
)


def drop_credentials() -> None:
    """Make sure no cloud identity can be picked up by this process.

    Requests are unsigned anyway (anon clients); this also stops botocore from
    reading profiles or asking the instance metadata service.
    """
    for name in CREDENTIAL_ENV:
        os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["NO_GCE_CHECK"] = "true"
    # gcsfs's default class probes buckets over gRPC, which hangs against emulators.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"


class StoreError(OSError):
    """A request failed; the caller answers EIO."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str  # file name inside the series prefix
    size: int
    etag: str
    mtime_ns: int


class ObjectStore:
    """Reads IDC objects addressed by (aws_bucket, key) from AWS or from the GCS mirror."""

    def __init__(self, source: str = "aws", s3_endpoint: str | None = None, gcs_endpoint: str | None = None):
        if source not in ("aws", "gcs"):
            raise ValueError(f"unknown source {source!r}")
        self.source = source
        self.s3_endpoint = s3_endpoint or DEFAULT_S3_ENDPOINT
        self.gcs_endpoint = gcs_endpoint or DEFAULT_GCS_ENDPOINT
        self._fs = None

    @property
    def fs(self):
        if self._fs is None:
            drop_credentials()
            if self.source == "aws":
                import s3fs

                self._fs = s3fs.S3FileSystem(
                    anon=True,
                    use_listings_cache=False,
                    skip_instance_cache=True,
                    client_kwargs={"endpoint_url": self.s3_endpoint, "region_name": "us-east-1"},
                    config_kwargs={"max_pool_connections": 64, "retries": {"max_attempts": 5, "mode": "standard"}},
                )
            else:
                import gcsfs.core

                self._fs = gcsfs.core.GCSFileSystem(
                    token="anon",
                    endpoint_url=self.gcs_endpoint,
                    use_listings_cache=False,
                    skip_instance_cache=True,
                )
        return self._fs

    def bucket(self, aws_bucket: str) -> str:
        return aws_bucket if self.source == "aws" else GCS_MIRROR.get(aws_bucket, aws_bucket)

    def url(self, aws_bucket: str, key: str) -> str:
        scheme = "s3" if self.source == "aws" else "gs"
        return f"{scheme}://{self.bucket(aws_bucket)}/{key}"

    def list_series(self, aws_bucket: str, crdc_series_uuid: str) -> list[ObjectInfo]:
        """One LIST of `<bucket>/<uuid>/`: the objects directly under it."""
        prefix = f"{self.bucket(aws_bucket)}/{crdc_series_uuid}"
        try:
            entries = self.fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise StoreError(f"LIST {prefix}: {e}") from e
        out = []
        for e in entries:
            if e.get("type") != "file":
                continue
            name = e["name"].rsplit("/", 1)[-1]
            out.append(ObjectInfo(name, int(e["size"]), _etag(e), _mtime_ns(e)))
        out.sort(key=lambda o: o.name)
        return out

    def read(self, aws_bucket: str, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of one object: a single ranged GET."""
        path = f"{self.bucket(aws_bucket)}/{key}"
        try:
            return self.fs.cat_file(path, start=start, end=end)
        except Exception as e:
            raise StoreError(f"GET {path} [{start}, {end}): {e}") from e


def _etag(entry: dict) -> str:
    for k in ("ETag", "etag", "md5Hash", "crc32c"):
        if entry.get(k):
            return str(entry[k]).strip('"')
    return ""


def _mtime_ns(entry: dict) -> int:
    import datetime as dt

    value = entry.get("LastModified") or entry.get("updated") or entry.get("timeCreated")
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp()) * 1_000_000_000
    return 0
