"""Blocking background work: run in writer threads, inside the same boundary as background tasks."""

from __future__ import annotations

import logging
import threading

import trio

from idcfs.background import Background


def test_blocking_calls_run_in_threads_errors_are_counted_and_close_waits(caplog):
    done, started = [], threading.Event()
    gate = threading.Event()

    def slow(n):
        started.set()
        gate.wait(5)
        done.append(n)

    def broken():
        raise OSError("disk gone")

    async def main():
        async with trio.open_nursery() as nursery:
            bg = Background(nursery)
            assert bg.in_thread(slow, 1) and bg.in_thread(broken)
            assert started.wait(5) and done == []  # nothing waits for it
            gate.set()
            bg.close()  # waits for what was queued
            assert done == [1] and bg.errors == 1
            assert not bg.in_thread(slow, 2)  # after close: refused, not raised

    with caplog.at_level(logging.ERROR, logger="idcfs.background"):
        trio.run(main)
    assert "<locals>.broken failed; the mount goes on" in caplog.text
    assert "disk gone" in caplog.text
