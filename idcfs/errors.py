"""Errors as users meet them: bad input named in the caller's own terms, and the one errno table.

A message about an option names it as the caller wrote it: `--cache-size` to the command line and
fstab, `cache_size` to Python (idc://, idcfs.Index, idcfs.mounted). Both front ends, the FUSE
adapter and idc://, turn exceptions into errno values with `errno_of`.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from .store import StoreError

# Python keywords that differ from their flag's name (--collection is repeated; collections= is a list).
_KEYWORDS = {"collection": "collections", "license": "licenses"}

Spelling = Callable[[str], str]


class UsageError(ValueError):
    """Bad input: the message says what to fix, naming the option as the caller wrote it."""


def as_flag(option: str) -> str:
    """cache_size -> --cache-size"""
    return "--" + option.replace("_", "-")


def as_keyword(option: str) -> str:
    """collection -> collections; cache_size -> cache_size"""
    return _KEYWORDS.get(option, option)


# The errno of each exception the engine raises on purpose, most specific first. Anything else (a bug,
# a failing disk) is EIO, and the front end logs its traceback: a read gives the right bytes or EIO.
ERRNO: tuple[tuple[type[BaseException], int], ...] = (
    (StoreError, errno.EIO),  # the origins failed or sent wrong bytes
    (FileNotFoundError, errno.ENOENT),  # resolving a path
    (NotADirectoryError, errno.ENOTDIR),
    (IsADirectoryError, errno.EISDIR),
)


def errno_of(e: BaseException) -> int:
    return next((number for kind, number in ERRNO if isinstance(e, kind)), errno.EIO)


def expected(e: BaseException) -> bool:
    """An error of the table: logged in one line, without a traceback."""
    return any(isinstance(e, kind) for kind, _ in ERRNO)


def as_oserror(e: BaseException) -> OSError:
    """e as the OSError a file API raises: FileNotFoundError and its kin as they are, anything else as
    OSError(EIO)."""
    if expected(e) and not isinstance(e, StoreError):
        return e
    return OSError(errno_of(e), str(e) or type(e).__name__)
