"""The subscriber's wakeup (server/_wakeup.py): set before or during a wait, or the timeout."""

from __future__ import annotations

import asyncio
import time

from configcenter.server._wakeup import Wakeup


async def test_a_set_flag_returns_at_once_and_is_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()
    started = time.monotonic()
    await wakeup.wait(5.0)
    assert time.monotonic() - started < 0.5 and not wakeup.is_set()


async def test_set_during_the_wait_wakes_the_waiter() -> None:
    wakeup = Wakeup()
    asyncio.get_running_loop().call_later(0.05, wakeup.set)
    started = time.monotonic()
    await wakeup.wait(5.0)
    assert 0.04 <= time.monotonic() - started < 2.0 and not wakeup.is_set()


async def test_the_timeout_ends_the_wait_and_a_later_set_is_kept_for_the_next() -> None:
    wakeup = Wakeup()
    started = time.monotonic()
    await wakeup.wait(0.05)
    assert time.monotonic() - started >= 0.04 and not wakeup.is_set()
    wakeup.set()  # nobody waits: remembered
    assert wakeup.is_set()
    await asyncio.wait_for(wakeup.wait(5.0), 1.0)
    assert not wakeup.is_set()


async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    wakeup = Wakeup()
    task = asyncio.create_task(wakeup.wait(5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    wakeup.set()  # must not touch the cancelled future
    assert wakeup.is_set() and wakeup._waiter is None
