"""mount.idcfs: the mount(8) helper, so that /etc/fstab entries and `mount -t fuse.idcfs` work.

For type `fuse.idcfs` mount(8) runs `/sbin/mount.fuse.idcfs SPEC DIR [-sfnv] [-o OPTIONS]` (for type
`idcfs`, `/sbin/mount.idcfs`); both are links to the script `mount.idcfs` (idcfs.cli.mount_helper). This
module parses what mount(8) passes and makes `idcfs mount` flags of it (mount_argv). OPTIONS are `idcfs mount` flags
written the fstab way, `cache_dir=/var/cache/idcfs,source=gcs,allow_other`. In /etc/fstab a space in a
value is written `\\040`, and a value holding commas is put in double quotes. SPEC is the name the mount
shows in /proc/mounts (`idc`). mount(8) adds generic options (rw, nosuid, ...) and passes userspace ones
(nofail, _netdev); those are accepted and change nothing: the mount is always read-only.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from .options import REPEATED, Options

# fstab option -> `idcfs mount` flag: the Options (collection and license, repeated, as their flags), and the
# mount's logging. Options marked True may be repeated.
FLAG_OPTIONS = {f.name for f in fields(Options) if isinstance(f.default, bool)}
VALUE_OPTIONS = {REPEATED.get(name, name): name in REPEATED for name in Options.names() if name not in FLAG_OPTIONS}
VALUE_OPTIONS |= {"log_level": False, "log_file": False}
# Options mount(8) adds or passes on that a read-only FUSE mount of idcfs takes as they are.
GENERIC_OPTIONS = {
    "defaults", "ro", "rw", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
    "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "async", "silent", "loud",
}  # fmt: skip
# Where a system mount keeps its cache unless cache_dir says otherwise (root's home is no place for it).
SYSTEM_CACHE_DIR = "/var/cache/idcfs"


class OptionError(ValueError):
    pass


def split_options(text: str) -> list[str]:
    """`a=1,b="x,y",c` -> ['a=1', 'b="x,y"', 'c']: commas inside double quotes do not split."""
    out, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise OptionError(f"unbalanced double quote in -o {text!r}")
    out.append("".join(current))
    return [o for o in out if o]


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def mount_argv(spec: str, mountpoint: str, options: str, sloppy: bool = False) -> list[str]:
    """The `idcfs mount` arguments for one mount(8) call."""
    argv = ["mount", mountpoint, "--fsname", spec]
    seen = set()
    for opt in split_options(options):
        name, eq, value = opt.partition("=")
        if name.startswith("x-") or name == "comment":
            continue  # userspace annotations (x-systemd.*, x-gvfs-*) for other programs
        key = name.strip().replace("-", "_")
        if key in GENERIC_OPTIONS and not eq:
            continue
        if key in FLAG_OPTIONS and not eq:
            argv.append("--" + key.replace("_", "-"))
        elif key in VALUE_OPTIONS and eq:
            if key in seen and not VALUE_OPTIONS[key]:
                raise OptionError(f"option {key} is given twice")
            seen.add(key)
            argv += ["--" + key.replace("_", "-"), _unquote(value)]
        elif not sloppy:
            known = sorted([*VALUE_OPTIONS, *FLAG_OPTIONS])
            what = "takes a value" if key in VALUE_OPTIONS else "takes no value" if key in FLAG_OPTIONS else "unknown"
            raise OptionError(f"option {opt!r} ({what}): idcfs takes {', '.join(known)} (see idcfs mount --help)")
    if "cache_dir" not in seen and os.geteuid() == 0 and not os.environ.get("IDCFS_CACHE_DIR"):
        argv += ["--cache-dir", SYSTEM_CACHE_DIR]
    return argv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mount.idcfs",
        description="mount(8) helper for idcfs: mount -t fuse.idcfs idc DIR -o OPTIONS, or an /etc/fstab line "
        "`idc DIR fuse.idcfs OPTIONS 0 0`. OPTIONS are idcfs mount flags as name=value.",
    )
    p.add_argument("spec", help="the mount's name in /proc/mounts, e.g. idc")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", default="", metavar="OPTIONS", help="comma-separated, as in fstab")
    p.add_argument("-s", dest="sloppy", action="store_true", help="ignore options idcfs does not know")
    p.add_argument("-f", dest="fake", action="store_true", help="check the options, mount nothing")
    p.add_argument("-n", dest="no_mtab", action="store_true", help="accepted; idcfs writes no mtab")
    p.add_argument("-v", dest="verbose", action="store_true", help="print the idcfs command")
    p.add_argument("-t", dest="type", default=None, help="accepted (fuse.idcfs or idcfs)")
    p.add_argument("-N", dest="namespace", default=None, help=argparse.SUPPRESS)
    return p
