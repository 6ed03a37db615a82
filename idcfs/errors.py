"""Errors as users meet them: bad input named in the caller's own terms, and the one errno table.

A message about an option names it as the caller wrote it: `--cache-size` to the command line and
fstab, `cache_size` to Python (idc://, idcfs.Index, idcfs.mounted). Both front ends, the FUSE
adapter and idc://, turn exceptions into errno values with `errno_of`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

# Python keywords that differ from their flag's name (--collection is repeated; collections= is a list).
KEYWORDS = {"collection": "collections", "license": "licenses"}

Spelling = Callable[[str], str]


class UsageError(ValueError):
    """Bad input: the message says what to fix, naming the option as the caller wrote it."""


def as_flag(option: str) -> str:
    """cache_size -> --cache-size"""
    return "--" + option.replace("_", "-")


def as_keyword(option: str) -> str:
    """collection -> collections; cache_size -> cache_size"""
    return KEYWORDS.get(option, option)


class StoreError(OSError):
    """A request to the origins failed, or they sent wrong bytes: the read fails with EIO."""


# What the engine raises on purpose. Built-in FileNotFoundError and its kin can come from anywhere (a
# cache file evicted under a reader): only these mean "the tree has no such path".
class NoSuchPath(FileNotFoundError):
    pass


class NotADirectory(NotADirectoryError):
    pass


class IsADirectory(IsADirectoryError):
    pass


# The errno of each error the engine raises on purpose. Anything else (a bug, a failing disk) is EIO in
# a mount, with its traceback logged: a read gives the right bytes or EIO.
ERRNO: tuple[tuple[type[OSError], int], ...] = (
    (StoreError, errno.EIO),
    (NoSuchPath, errno.ENOENT),
    (NotADirectory, errno.ENOTDIR),
    (IsADirectory, errno.EISDIR),
)


def errno_of(e: BaseException) -> int | None:
    """e's errno by the table; None if e is not an error the engine raises on purpose."""
    return next((number for kind, number in ERRNO if isinstance(e, kind)), None)


def as_oserror(e: BaseException) -> BaseException:
    """e as idc:// raises it: the table's errors as OSErrors with its errno (a StoreError as a plain
    OSError(EIO)); anything else unchanged, as a file API passes on what it did not cause."""
    if isinstance(e, StoreError):
        return OSError(errno.EIO, str(e))
    return e
