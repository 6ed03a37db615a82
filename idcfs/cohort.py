"""A cohort: the series directories of a selection, on a mount or on idc://, to list, shard and pickle.

The unit of work for PyTorch (idcfs.torch), Ray (idcfs.ray) and any process pool: it pickles as its paths,
its options and the listings it has made, and each process opens idc:// paths with a filesystem of its own,
made on first use, never before a fork.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .options import SELECTION_OPTIONS, TREE_OPTIONS

__all__ = ["Cohort"]

PROTOCOL = "idc://"
LIST_THREADS = 16  # a LIST takes ~0.1 s of waiting: list series directories in parallel
# Options of idcfs.Index: a mount's selection is described by these alone.
_SELECTION = (*SELECTION_OPTIONS, *TREE_OPTIONS)


class Cohort:
    """Series directories, from a mount (plain paths) or idc:// (storage_options given).

    A Cohort is the unit to shard across DDP ranks or Ray tasks: whole series, so a volume is never split.
    It pickles as its paths and options; instance lists it has made travel with it.
    """

    def __init__(self, series: Sequence[str | os.PathLike], storage_options: Mapping[str, Any] | None = None):
        self.storage_options = dict(storage_options) if storage_options is not None else None
        self.series = [self._normal(s) for s in series]
        self._instances: dict[str, list[str]] = {}
        self._fs = None
        self._pid: int | None = None

    @classmethod
    def select(
        cls,
        where: str = "TRUE",
        params: Sequence | None = None,
        *,
        mountpoint: str | os.PathLike | None = None,
        **options,
    ) -> Cohort:
        """The series whose index row satisfies the SQL condition `where` (over the index columns), in
        tree order.

        Without mountpoint: idc:// paths, with options as fsspec.filesystem("idc", ...)'s. With mountpoint:
        paths under that mount; options are then the mount's selection (filter, manifest, collections,
        licenses, idc_version, template, layout, index, cache_dir), so that the paths are the mount's.
        """
        if mountpoint is None:
            import fsspec

            fs = fsspec.filesystem("idc", **options)
            return cls([PROTOCOL + p for p in fs.index.paths(where, params)], storage_options=options)
        unknown = sorted(set(options) - set(_SELECTION))
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not a selection option of a mount; give one of {', '.join(_SELECTION)}")
        from .index import Index

        root = os.path.expanduser(os.fspath(mountpoint))
        # A template that groups series in one directory names it once per series: keep each directory once.
        series = [os.path.join(root, p) for p in dict.fromkeys(Index(**options).paths(where, params))]
        if series and not os.path.isdir(series[0]):
            raise ValueError(f"{series[0]} is not a directory: give the mount's own selection and template or layout")
        return cls(series)

    def _normal(self, path: str | os.PathLike) -> str:
        path = os.fspath(path).rstrip("/")
        if self.storage_options is not None and not path.startswith(PROTOCOL):
            path = PROTOCOL + path
        return path

    def __len__(self) -> int:
        return len(self.series)

    def __getitem__(self, which: int | slice) -> str | Cohort:
        """cohort[i]: a series path; cohort[a:b]: a Cohort of those series."""
        if isinstance(which, slice):
            part = Cohort(self.series[which], self.storage_options)
            part._instances = {s: self._instances[s] for s in part.series if s in self._instances}
            return part
        return self.series[which]

    def __repr__(self) -> str:
        where = "idc://" if self.storage_options is not None else "a mount"
        return f"Cohort({len(self.series)} series on {where})"

    def __getstate__(self) -> dict:
        return {"series": self.series, "storage_options": self.storage_options, "_instances": self._instances}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fs=None, _pid=None)

    def shard(self, rank: int | None = None, world_size: int | None = None, *, even: bool = False) -> Cohort:
        """Every world_size-th series from rank on (dealt as DistributedSampler deals samples, without its
        padding). rank and world_size default to torch.distributed's when it is initialized, else to the RANK
        and WORLD_SIZE variables, else to 0 and 1. even=True drops the last series that do not fill a round, so
        every rank gets as many series; their instance counts still differ, so a DDP loop over IdcInstances
        should stop all ranks at the shortest (or use torch's Join) rather than assume equal lengths."""
        if rank is None or world_size is None:
            found = _distributed() or (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
            rank = found[0] if rank is None else rank
            world_size = found[1] if world_size is None else world_size
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} of world_size {world_size}: need 0 <= rank < world_size")
        end = len(self.series) // world_size * world_size if even else len(self.series)
        return self[rank:end:world_size]

    # -- files

    def instances(self, series: str) -> list[str]:
        """The instance files of one series directory, sorted by name (one LIST, then remembered)."""
        found = self._instances.get(series)
        if found is None:
            if self.storage_options is None:
                found = sorted(e.path for e in os.scandir(series) if e.is_file())
            else:
                found = sorted(PROTOCOL + p for p in self.filesystem().find(series))
            self._instances[series] = found
        return found

    def files(self, progress: bool | None = None) -> list[str]:
        """The instance files of every series, series by series. Lists the series not yet listed, in
        parallel; progress: a progress bar (default: on a terminal, for more than 100 series)."""
        todo = [s for s in self.series if s not in self._instances]
        if todo:
            if self.storage_options is not None:
                self.filesystem()  # made once, before the threads that use it
            from tqdm.auto import tqdm

            if progress is None:
                progress = len(todo) > 100 and sys.stderr.isatty()
            with ThreadPoolExecutor(LIST_THREADS) as pool:
                listed = pool.map(self.instances, todo)
                for _ in tqdm(listed, total=len(todo), unit="series", desc="listing", disable=not progress):
                    pass
        return [f for s in self.series for f in self._instances[s]]

    def filesystem(self):
        """This process's idc:// filesystem (made on first use in each process, so never shared over a fork)."""
        if self.storage_options is None:
            raise ValueError("this cohort's paths are a mount's: open them with open()")
        if self._pid != os.getpid():
            import fsspec

            self._fs, self._pid = fsspec.filesystem("idc", **self.storage_options), os.getpid()
        return self._fs

    def open(self, path: str):
        """A binary file object for one instance path of this cohort."""
        if self.storage_options is None:
            return open(path, "rb")
        return self.filesystem().open(path, "rb")


def _distributed() -> tuple[int, int] | None:
    """torch.distributed's rank and world size, if torch is loaded and its process group is up."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None
