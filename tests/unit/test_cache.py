"""The block cache's pieces without a mount: sizes, damaged values, inline blocks, one LRU order for both tiers."""

from __future__ import annotations

import os

import pytest

from idcfs.cache import BlockCache, CacheDir, block_key, parse_size


def test_parse_size():
    assert parse_size("10G") == 10 << 30
    assert parse_size("500MiB") == 500 << 20
    assert parse_size("1.5k") == 1536
    assert parse_size("4096") == 4096
    for bad in ("", "ten", "10X", "-1G", "1e9", "G"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_block_cache_rejects_damaged_values(tmp_path):
    cache = BlockCache(tmp_path, 1 << 30)
    key = block_key("s", "f.dcm", 100_000, 0)
    data = os.urandom(100_000)
    cache.put(key, data)
    assert cache.get(key, len(data)) == data
    assert cache.get(key, len(data) - 1) is None  # a different length is damage too
    cache.put(key, data)
    (val,) = tmp_path.rglob("*.val")
    val.write_bytes(val.read_bytes()[:-1])
    assert cache.get(key, len(data)) is None and cache.corrupt == 2
    assert not cache.has(key)
    other = block_key("s", "g.dcm", 100_000, 0)
    cache.put(key, data)
    cache.put(other, os.urandom(100_000))
    a, b = sorted(tmp_path.rglob("*.val"))
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)  # values swapped between keys
    b.write_bytes(a_bytes)
    assert cache.get(key, len(data)) is None and cache.get(other, 100_000) is None


def test_touch_handles_blocks_kept_inline(tmp_path):
    """diskcache keeps values under 32 KiB inside SQLite, as bytes: touch() used to fail on them and lose the batch."""
    cache = BlockCache(tmp_path / "blocks", 64 << 20)
    small, big = b"s" * 100, b"b" * (100 << 10)
    cache.put("small@0x100", small)
    cache.put("big@0x102400", big)
    assert bytes(cache.get("small@0x100", len(small))) == small
    assert bytes(cache.get("big@0x102400", len(big))) == big
    cache.touch()  # raised AttributeError: 'bytes' object has no attribute 'close'
    cache.close()


def test_instance_files_and_blocks_share_one_lru_order(tmp_path):
    """Eviction takes the least recently used of both tiers, files by mtime and blocks by access time."""
    cache = CacheDir(tmp_path, 64 << 20)
    files, blocks = cache.files, cache.blocks
    mb = os.urandom(1 << 20)
    for i in range(40):  # oldest first: file 0, block 0, file 1, block 1, ...
        files.put("s", f"f{i}.dcm", mb)
        os.utime(files.path("s", f"f{i}.dcm"), (1000 + 2 * i, 1000 + 2 * i))
        key = block_key("s", f"b{i}.dcm", 256 << 10, 0)
        blocks.put(key, mb)
        blocks._cache._sql("UPDATE Cache SET access_time = ? WHERE key = ?", (1001 + 2 * i, key))
    assert files.volume() + blocks.footprint() > cache.files.size_limit
    files.evict()
    kept_files = {p.name for p in (tmp_path / "files" / "s").iterdir()}
    kept_blocks = {k.split("/")[1].split("@")[0] for k in blocks._cache.iterkeys()}
    assert files.volume() + blocks.footprint() <= 64 << 20
    lost = [f"f{i}.dcm" not in kept_files for i in range(40)], [f"b{i}.dcm" not in kept_blocks for i in range(40)]
    # What went is a prefix of the merged order: the oldest of both, alternating.
    n_files, n_blocks = sum(lost[0]), sum(lost[1])
    assert lost[0] == [i < n_files for i in range(40)] and lost[1] == [i < n_blocks for i in range(40)]
    assert abs(n_files - n_blocks) <= 1 and n_files > 0
    cache.close()


def test_small_instances_are_kept_as_blocks_where_instance_files_are_off(tmp_path):
    """A file system without user xattrs turns instance files off: a small instance is then stored as one
    block, and served from there, checked (it was written and never read back)."""
    from idcfs.cache import CacheDir, block_size

    cache = CacheDir(tmp_path / "cache", 64 << 20)
    cache.files.usable = False  # as InstanceCache does on ENOTSUP
    data = bytes(range(256)) * 40
    cache.put("s", "a.dcm", len(data), block_size(len(data)), 0, data)
    assert cache.has("s", "a.dcm", len(data)) and not cache.has_whole("s", "a.dcm", len(data))
    assert cache.may_hold("s", "a.dcm", len(data))
    assert bytes(cache.whole("s", "a.dcm", len(data))) == data
    assert cache.whole("s", "b.dcm", len(data)) is None and cache.open_whole("s", "a.dcm", len(data)) is None
    cache.close()


def test_heads_are_checked_files_beside_the_instances(tmp_path):
    """A header scan's heads: a file each, `<name>.head`, checked like an instance; the whole file replaces it."""
    from idcfs.readpolicy import HEAD

    cache = CacheDir(tmp_path / "cache", 64 << 20)
    data = os.urandom(200_000)
    size, head = len(data), data[:HEAD]
    assert not cache.may_hold_head("s", "a.dcm", size) and cache.head("s", "a.dcm", size, HEAD) is None
    cache.put_head("s", "a.dcm", size, head)
    path = tmp_path / "cache" / "files" / "s" / "a.dcm.head"
    assert path.read_bytes() == head and cache.may_hold_head("s", "a.dcm", size)
    assert bytes(cache.head("s", "a.dcm", size, HEAD)) == head
    assert not cache.has("s", "a.dcm", size) and cache.whole("s", "a.dcm", size) is None  # a head is no instance
    stats = cache.stats()
    assert (stats["instance_files"], stats["head_files"]) == (0, 1), stats
    with open(path, "r+b") as f:  # one byte flipped in place: never served, deleted, counted
        f.seek(100)
        f.write(bytes([head[100] ^ 1]))
    assert cache.head("s", "a.dcm", size, HEAD) is None and not path.exists() and cache.corrupt == 1
    cache.put_head("s", "a.dcm", size, head)
    cache.put("s", "a.dcm", size, size, 0, data)  # the whole instance: it serves the head from now on
    assert not path.exists() and bytes(cache.head("s", "a.dcm", size, HEAD)) == head
    cache.files.usable = False  # instance files off (no user xattrs): heads go to the block cache
    cache.put_head("s", "b.dcm", size, head)
    assert cache.may_hold_head("s", "b.dcm", size) and bytes(cache.head("s", "b.dcm", size, HEAD)) == head
    cache.close()
