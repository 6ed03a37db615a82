"""idcfs: the NCI Imaging Data Commons as a read-only FUSE filesystem."""

from .api import MountFailed, mounted

__all__ = ["Index", "MountFailed", "__version__", "mounted"]


def __getattr__(name: str):
    if name == "__version__":  # looked up on use: importlib.metadata took 40 ms of every command's start
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("idcfs")
        except PackageNotFoundError:  # running from a source tree
            return "0.1.0"
    if name == "Index":  # imported on use: it loads duckdb and pyarrow
        from .index import Index

        return Index
    raise AttributeError(f"module 'idcfs' has no attribute {name!r}")
