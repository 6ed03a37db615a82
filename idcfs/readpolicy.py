"""What the read path fetches ahead of the reader, decided apart from fetching it.

These are the most tuned rules in idcfs. Kept free of I/O, trio and the
caches, each is a plain object that records what it saw and answers with
block indexes or files to start, so a test can drive it call by call. The
Reader (readpath.py) asks them and does the fetching.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cache import WHOLE_FILE, block_size

if TYPE_CHECKING:
    from .listing import InstanceFile

READAHEAD_AFTER = 2 << 20
FIRST_WINDOW = 2 << 20
MAX_WINDOW = 64 << 20
REORDER = 1 << 20  # the kernel may deliver a sequential reader's requests slightly out of order
PREFETCH_FILES = 64
PREFETCH_BUDGET = 256 << 20
HEAD = 64 << 10  # a CT/MR header, and the kernel's first read of a small file (16 KiB for a 4 KiB read)
HEADER_STREAK = 2
SCATTERED = 3  # out-of-order opens of whole-read files in one directory before the rest of it is fetched
WARM_PER_OPEN = 8  # files of a scattered directory started per open
DIRS_TRACKED = 4096  # directories whose read order is remembered, least recently opened dropped first


def nblocks(f: InstanceFile) -> int:
    return -(-f.size // block_size(f.size))


class OpenFile:
    """One open of a file: what the policies learned from its reads so far."""

    def __init__(self, f: InstanceFile, heads: bool = False):
        self.file = f
        self.heads = heads  # opened during a header scan: a read within HEAD fetches only the head
        self.next_offset = 0  # where a sequential read would continue
        self.window = FIRST_WINDOW
        self.ahead = 0  # blocks below this were already asked for by readahead
        self.streak = 0  # bytes read in order since the last seek
        self.read_to = 0  # the furthest byte read


class Readahead:
    """A sequential reader of a large instance gets a readahead window once it has read READAHEAD_AFTER bytes
    in order (so header reads stay small). The window doubles up to MAX_WINDOW, or a quarter of the memory
    budget so that it is not evicted before it is read. A seek resets it: reading one WSI tile fetches only
    the blocks that tile touches."""

    def __init__(self, memory: int):
        self.max_window = min(MAX_WINDOW, memory // 4)

    def read(self, of: OpenFile, offset: int, end: int, known: Callable[[int], bool]) -> list[int]:
        """Note a read of [offset, end) (within the file); the blocks to start beyond it. known(i): block i
        of the file was fetched, or is being fetched, lately."""
        bs = block_size(of.file.size)
        b0, b1 = offset // bs, (end - 1) // bs + 1
        sequential = of.next_offset > 0 and abs(offset - of.next_offset) <= REORDER
        extra: list[int] = []
        if not sequential:
            # A jump to just behind what another reader of this file fetched continues that
            # stream (readers sharing the page cache each see only the pages still missing).
            follows = b0 > 0 and known(b0 - 1)
            of.streak, of.ahead, of.window = (READAHEAD_AFTER if follows else 0), b1, FIRST_WINDOW
        of.streak += end - offset
        # Issue the next window when the reader is half a window from the end of the last one.
        if of.streak >= READAHEAD_AFTER and b1 + of.window // bs // 2 >= of.ahead:
            lo = max(b1, of.ahead)
            stop = min(nblocks(of.file), lo + of.window // bs)
            extra = list(range(lo, stop))
            of.ahead = stop
            of.window = min(of.window * 2, self.max_window)
        of.next_offset = max(of.next_offset, end) if sequential else end
        return extra


class HeaderStreak:
    """Header scans: once HEADER_STREAK small files in a row were closed after reading less than the whole
    file (`dcmread(stop_before_pixels=True)`, GDCM's series scan), files are opened in heads mode: reads
    that end within HEAD fetch only the file's first HEAD bytes, and the series prefetch fetches those heads
    instead of whole files. One whole read switches back."""

    def __init__(self):
        self.partial = 0  # small files closed in a row after reading only part of them

    def scanning(self) -> bool:
        """A file opened now is opened in heads mode."""
        return self.partial >= HEADER_STREAK

    @staticmethod
    def head_only(of: OpenFile, end: int) -> bool:
        """A read ending at `end` needs only the head of the file (unless its whole is at hand anyway)."""
        return of.heads and end <= HEAD < of.file.size <= WHOLE_FILE

    def closed(self, of: OpenFile) -> None:
        f = of.file
        if of.read_to and HEAD < f.size <= WHOLE_FILE:  # 0: served from the page cache, nothing learned
            self.partial = self.partial + 1 if of.read_to < f.size else 0


@dataclass(frozen=True, slots=True)
class SiblingFetch:
    """A file of the opened one's directory to fetch in the background."""

    file: InstanceFile
    cost: int  # bytes held against the budget until the fetch ends; less than the file's size: its head only
    warm: bool  # scattered-read warming: its own connection limit, and skipped if another process has it


class _DirReads:
    """How one directory's files are being opened."""

    __slots__ = ("last", "upto", "run", "scattered", "warmed", "fetched")

    def __init__(self):
        self.last = -100  # index of the file opened last
        self.upto = 0  # in-order prefetch has started the files below this
        self.run = 0  # opens in order so far
        self.scattered = 0  # opens out of order of files then read whole
        self.warmed = 0  # the scattered-read fetch has started the files below this
        self.fetched = False  # a file of it came from the origin: it is not all in the disk cache


def _never(f: InstanceFile) -> bool:
    return False


class SeriesPrefetch:
    """Which files of a directory to fetch before they are opened, within PREFETCH_BUDGET bytes in flight.

    - In order: opening the files of a directory in name order (SimpleITK, dcm2niix, `cp -r`) prefetches
      the next files, up to PREFETCH_FILES ahead; the depth ramps up, so the first files of a header scan
      are not all fetched whole. During a header scan only their heads.
    - Scattered: once SCATTERED files of one directory were opened out of order and read whole (a shuffled
      training epoch), and one of them had to come from the origin, the rest of that directory is fetched
      into the disk cache, WARM_PER_OPEN files per open.
    """

    def __init__(self, budget: int = PREFETCH_BUDGET):
        self.budget = budget
        self.in_flight = 0  # bytes of the fetches started and not ended
        self._dirs: OrderedDict[int, _DirReads] = OrderedDict()

    def opened(
        self,
        f: InstanceFile,
        siblings: list[InstanceFile],
        heads: bool = False,
        local: bool = False,
        *,
        last_read_whole: bool = True,
        prefetch: bool = True,
        warm: bool = True,
        on_disk: Callable[[InstanceFile], bool] = _never,
        known: Callable[[InstanceFile], bool] = _never,
    ) -> list[SiblingFetch]:
        """Note that f, of the directory whose files are `siblings` (by name), was opened; the fetches to
        start, in order. Each is counted in in_flight until ended() is called for it.

        heads: f was opened in heads mode. local: the opener reads files held whole in the cache directory
        itself (on_disk(g)), so in-order prefetch skips those. last_read_whole: the last small file closed
        was read whole (an out-of-order open counts as scattered only then). prefetch, warm: whether the
        caller can start in-order, scattered fetches at all. known(g): g was fetched or is being fetched
        lately."""
        d = self._dirs.pop(f.dir_id, None) or _DirReads()
        d.run = d.run + 1 if 0 < f.index - d.last <= 4 else 0
        if not d.run and f.index != d.last and not heads and last_read_whole:
            d.scattered += 1
        out: list[SiblingFetch] = []
        if d.run and prefetch:
            depth = min(PREFETCH_FILES, 4 << d.run)
            d.upto = max(d.upto, f.index + 1)
            for g in siblings[d.upto : f.index + 1 + depth]:
                cost = min(g.size, HEAD) if heads else g.size
                if g.size > WHOLE_FILE or self.in_flight + cost > self.budget:
                    break
                if local and on_disk(g):
                    d.upto = g.index + 1
                    continue
                self.in_flight += cost
                out.append(SiblingFetch(g, cost, warm=False))
                d.upto = g.index + 1
        elif d.scattered >= SCATTERED and d.fetched and warm:
            started = 0
            while d.warmed < len(siblings) and started < WARM_PER_OPEN:
                g = siblings[d.warmed]
                if self.in_flight + g.size > self.budget:
                    break
                d.warmed += 1
                if g.size > WHOLE_FILE or g is f or known(g):
                    continue
                self.in_flight += g.size
                out.append(SiblingFetch(g, g.size, warm=True))
                started += 1
        d.last = f.index
        self._dirs[f.dir_id] = d
        if len(self._dirs) > DIRS_TRACKED:
            self._dirs.popitem(last=False)
        return out

    def fetched(self, f: InstanceFile) -> None:
        """A block of f is being fetched from the origin: its directory is not all in the disk cache."""
        if (d := self._dirs.get(f.dir_id)) is not None:
            d.fetched = True

    def ended(self, fetch: SiblingFetch) -> None:
        """A fetch opened() asked for is over, done or failed."""
        self.in_flight -= fetch.cost
