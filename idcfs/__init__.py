"""idcfs: the NCI Imaging Data Commons as a read-only FUSE filesystem."""

try:
    from importlib.metadata import version as _version

    __version__ = _version("idcfs")
except Exception:  # running from a source tree
    __version__ = "0.1.0"

from .api import MountFailed, mounted

__all__ = ["MountFailed", "__version__", "mounted"]
