"""`UPath("idc://…")`: idc:// for universal_pathlib (wsidicom and others build paths with it).

Registered through the entry point `universal_pathlib.implementations`, so upath uses this class and does not
warn that the protocol is "not explicitly implemented". idc:// paths have no bucket or host: the first part is
the tree's first level (a collection under the default template).
"""

from __future__ import annotations

import fsspec
from upath import UPath

# upath takes a protocol's path rules (its "flavour") from the fsspec class when fsspec has it loaded;
# otherwise it warns and guesses.
fsspec.get_filesystem_class("idc")

__all__ = ["IdcPath"]


class IdcPath(UPath):
    """A path on idc://; storage options (manifest=, cache_dir=, …) are those of fsspec.filesystem("idc")."""

    __slots__ = ()
