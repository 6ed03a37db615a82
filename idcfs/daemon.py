"""Starting the mount daemon, and how it tells `idcfs mount` where it is.

`idcfs mount` runs `idcfs mount --foreground --ready-fd N` in a new session and reads lines from
that pipe: `phase WHAT` as start-up goes on, then one last line, `ready WHAT`, `usage: MESSAGE` (bad
input, exit status 2) or `failed: CAUSE`. The wait is bounded: a daemon that is not ready in time is
asked for its stack (faulthandler, into its log), stopped, and its mount cleaned up, and the error
says what it was doing. A daemon that dies without a last line is named by the end of its log.
"""

from __future__ import annotations

import faulthandler
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_ENV = "IDCFS_READY_TIMEOUT"
READY_TIMEOUT = 120.0  # a full-index first mount takes seconds; a slow disk may take a minute


class Pipe:
    """The daemon's end. Every method is a no-op without a pipe (`idcfs mount --foreground`)."""

    def __init__(self, fd: int | None):
        self.fd = fd
        if fd is not None:  # `idcfs mount` asks for a stack dump when start-up takes too long
            faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _write(self, line: str, last: bool = False) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (" ".join(line.split()) + "\n").encode())
            if last:
                os.close(self.fd)
        except OSError:
            pass
        if last:
            self.fd = None

    def phase(self, what: str) -> None:
        self._write(f"phase {what}")

    def ready(self, what: str) -> None:
        self._write(f"ready {what}", last=True)

    def usage(self, message: str) -> None:
        self._write(f"usage: {message}", last=True)

    def failed(self, cause: str) -> None:
        self._write(f"failed: {cause}", last=True)


def ready_timeout() -> float:
    """The longest `idcfs mount` waits for the daemon: $IDCFS_READY_TIMEOUT seconds, default 120."""
    text = os.environ.get(READY_TIMEOUT_ENV)
    if not text:
        return READY_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value <= 3600:  # nan fails too
        raise ValueError(f"{READY_TIMEOUT_ENV}={text!r}: give 1 to 3600 seconds")
    return value


@dataclass(frozen=True)
class Started:
    """How a daemon start ended: exit status 0 (ready), 2 (bad input), 130 (interrupted) or 1, and the line
    to print."""

    status: int
    line: str


def start(argv: list[str], log_path: Path, mountpoint: Path, timeout: float) -> Started:
    """Run the daemon for `idcfs mount ARGV`; wait until it is ready, refuses, fails or runs out of time."""
    read_fd, write_fd = os.pipe()
    child = [sys.executable, "-m", "idcfs", *argv, "--foreground", "--ready-fd", str(write_fd)]
    with open(log_path, "ab") as logf:
        log_start = logf.tell()
        proc = subprocess.Popen(
            child,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
    os.close(write_fd)
    try:
        return _wait(proc, read_fd, log_path, log_start, mountpoint, timeout)
    except KeyboardInterrupt:
        _stop(proc, mountpoint)
        return Started(130, "idcfs: interrupted: stopped the daemon, nothing is mounted")


def _wait(proc, read_fd: int, log_path: Path, log_start: int, mountpoint: Path, timeout: float) -> Started:
    phase, last, buf = "starting", None, b""
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb", buffering=0) as r:
        while last is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                doing = _stack_of(proc, log_path, log_start)
                _stop(proc, mountpoint)
                return Started(
                    1,
                    f"idcfs: error: the daemon was not ready after {timeout:g} s (it was {phase}{doing}); stopped it "
                    f"(set {READY_TIMEOUT_ENV} to wait longer); log: {log_path}",
                )
            chunk = r.read(4096)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in (x.decode(errors="replace") for x in lines):
                if line.startswith("phase "):
                    phase = line[6:]
                elif line:
                    last = line
    if last is not None and last.startswith("ready"):
        return Started(0, f"idcfs: {last[5:].strip()}")
    if last is not None and last.startswith("usage:"):
        proc.wait()
        return Started(2, f"idcfs: error: {last[6:].strip()}")
    if last is not None and last.startswith("failed:"):
        cause = last[7:].strip()
        said = [x for x in _new_log(log_path, log_start) if x.startswith("fuse: ")]  # libfuse's own reason
        if said:
            cause += f" ({said[-1]})"
    else:  # it died without a word: a crash in C, a signal, or an exception before the pipe was set up
        rc = proc.wait()
        died = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
        cause = f"the daemon ended while {phase} ({died}): {_last_error(log_path, log_start) or 'no message'}"
    proc.wait()
    return Started(1, f"idcfs: error: mount failed: {cause}; log: {log_path}")


def _new_log(log_path: Path, start: int) -> list[str]:
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []


def _last_error(log_path: Path, start: int) -> str:
    """The last line of a traceback, or else the last line the daemon logged."""
    lines = [x.strip() for x in _new_log(log_path, start) if x.strip()]
    for x in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", x):
            return x
    return lines[-1] if lines else ""


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def _stack_of(proc: subprocess.Popen, log_path: Path, start: int) -> str:
    """Where the daemon's main thread is, from a faulthandler dump into its log: ': in f (file:line)'."""
    if proc.poll() is not None:
        return ""
    try:
        proc.send_signal(signal.SIGUSR1)
    except OSError:
        return ""
    time.sleep(0.5)
    blocks, current = [], None
    for line in _new_log(log_path, start):
        if re.match(r"^(Current thread|Thread) 0x", line):
            current = []
            blocks.append(current)
        elif current is not None and (m := _FRAME.match(line)):
            current.append(m)
    main = [b for b in blocks if any(m["file"].endswith(os.path.join("idcfs", "__main__.py")) for m in b)]
    if not main or not main[-1]:
        return ""
    frames = main[-1]  # innermost first
    top = frames[0]
    where = f": in {top['func']} ({_short(top['file'])}:{top['line']})"
    ours = next((m for m in frames if f"{os.sep}idcfs{os.sep}" in m["file"]), None)
    if ours is not None and ours is not top:
        where += f", called from {ours['func']} ({_short(ours['file'])}:{ours['line']})"
    return where


def _short(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:])


def _stop(proc: subprocess.Popen, mountpoint: Path) -> None:
    """End the daemon's session, then detach its mount if it got that far."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except OSError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    from .mount import fusermount_unmount, is_stale

    if os.path.ismount(mountpoint) or is_stale(mountpoint):
        fusermount_unmount(mountpoint, lazy=True)
