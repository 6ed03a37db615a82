"""Ray Data over IDC: instance files of a cohort as a Ray Dataset, from idc:// or a mount on each node.

    import ray
    from idcfs.cohort import Cohort
    from idcfs.ray import read_binary_files

    cohort = Cohort.select("Modality = 'CT'", manifest="cohort.s5cmd", cache_dir="/local/idc-cache")
    ds = read_binary_files(cohort)               # rows: {"bytes", "path"}; idc:// paths without "idc://"
    headers = ds.map_batches(my_decoder)         # runs in Ray's worker processes, on any node

idc:// reaches Ray as pyarrow.fs.PyFileSystem(FSSpecHandler(fs)), the bridge Ray Data reads any fsspec
filesystem through. The filesystem pickles as its options: each worker process makes its own engine on first
use, and workers on one node share the node's cache directory (its claims keep a file from being fetched
twice there). Needs `pip install 'ray[data]'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .cohort import PROTOCOL, Cohort

__all__ = ["arrow_filesystem", "read_binary_files"]


def arrow_filesystem(**storage_options):
    """idc:// as a pyarrow filesystem (what Ray Data, pyarrow.dataset and Polars take); storage_options are
    those of fsspec.filesystem("idc", ...). It pickles as its options."""
    import fsspec
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fsspec.filesystem("idc", **storage_options)))


def read_binary_files(
    source: Cohort | Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    **kwargs,
):
    """ray.data.read_binary_files over the instance files of a Cohort (listed now, in parallel) or over a list
    of instance paths: plain paths (a mount at the same place on every node) or, with storage_options, idc://
    paths. include_paths defaults to True; other keyword arguments go to Ray."""
    import ray.data

    if isinstance(source, Cohort):
        if storage_options is not None:
            raise TypeError("a Cohort carries its own storage_options")
        files, storage_options = source.files(), source.storage_options
    elif isinstance(source, str):
        raise TypeError("give a Cohort or a list of instance paths, not one path")
    else:
        files = [str(p) for p in source]
    kwargs.setdefault("include_paths", True)
    if storage_options is None:
        return ray.data.read_binary_files(files, **kwargs)
    paths = [p.removeprefix(PROTOCOL) for p in files]
    return ray.data.read_binary_files(paths, filesystem=arrow_filesystem(**storage_options), **kwargs)
