"""The listings' bound and inode numbers over a real tree and listing cache (thousands of series): no servers, no FUSE,
but too slow for the unit tier."""

from __future__ import annotations

import trio

from idcfs.cache import MetaCache
from idcfs.listing import Listings
from idcfs.namespace import Namespace
from idcfs.store import ObjectInfo

FILES = 5


def _leaves(ns: Namespace) -> list[int]:
    return [d for d in range(1, ns.num_dirs + 1) if ns.is_leaf(d)]


def test_listings_stay_bounded_and_inode_numbers_never_change(small_index, tmp_path):
    ns = Namespace(small_index)
    meta = MetaCache(tmp_path / "meta")
    for s in ns.all_series():  # as earlier mounts' LISTs left them
        meta.set_listing(
            s.crdc_series_uuid, [ObjectInfo(f"{i}.dcm", 100 + i, "e", 1, "").entry() for i in range(FILES)]
        )
    leaves = _leaves(ns)
    assert len(leaves) > 40
    held = 20 * FILES

    async def main():
        listings = Listings(ns, None, meta, trio.CapacityLimiter(1), first_ino=ns.num_dirs + 2, held=held)
        first = await listings.files_of(leaves[0])
        kept = await listings.files_of(leaves[1])
        listings.looked_up(next(iter(kept.values())))  # the kernel holds a file of leaves[1]
        inos = {}
        for d in leaves:
            for f in (await listings.files_of(d)).values():
                inos[f.ino] = (d, f.name)
            assert listings.files_held <= held
        assert listings.listed(leaves[0]) is None  # dropped, least recently used
        assert listings.listed(leaves[1]) is not None  # the kernel's reference kept it
        # A dropped directory's inode numbers give back the same files, read back from the cache directory.
        for ino, (d, name) in list(inos.items())[:: len(inos) // 30]:
            f = await listings.file(ino)
            assert (f.ino, f.dir_id, f.name) == (ino, d, name)
        assert {f.ino for f in (await listings.files_of(leaves[0])).values()} == {f.ino for f in first.values()}
        # Once forgotten, it is dropped like any other.
        listings.forget(next(iter(kept.values())).ino, 1)
        for d in leaves[2:]:
            await listings.files_of(d)
        assert listings.listed(leaves[1]) is None
        # Numbers that are not files: directories, beyond the tree, not a leaf.
        assert await listings.file(1) is None
        assert await listings.file(listings.ino(ns.num_dirs + 1, 0)) is None
        assert await listings.file(listings.ino(leaves[0], FILES)) is None

    trio.run(main)
    meta.close()
