"""idcfs: the NCI Imaging Data Commons as a read-only FUSE filesystem."""

try:
    from importlib.metadata import version as _version

    __version__ = _version("idcfs")
except Exception:  # running from a source tree
    __version__ = "0.1.0"

from .api import MountFailed, mounted

__all__ = ["Index", "MountFailed", "__version__", "mounted"]


def __getattr__(name: str):
    if name == "Index":  # imported on use: it loads duckdb and pyarrow
        from .index import Index

        return Index
    raise AttributeError(f"module 'idcfs' has no attribute {name!r}")
