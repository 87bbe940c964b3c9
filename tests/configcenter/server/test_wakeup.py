"""The subscriber's wakeup (server/watch/_wakeup.py): set before or during a wait, or the timeout."""

from __future__ import annotations

import asyncio
import time

from configcenter.server.watch._wakeup import Wakeup


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


async def test_a_cancelled_wait_leaves_no_waiter_or_timer_behind() -> None:
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()

    async def subscriber() -> None:
        await wakeup.wait(5.0)

    timers = len(loop._scheduled)  # type: ignore[attr-defined]
    task = asyncio.create_task(subscriber())
    await asyncio.sleep(0.01)
    assert len(loop._scheduled) == timers + 1  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert sum(not h.cancelled() for h in loop._scheduled) == timers  # the timer went with it
    wakeup.set()  # must not touch the cancelled future
    assert wakeup.is_set() and wakeup._waiter is None


async def test_the_flag_is_clear_when_the_waiter_resumes_even_if_set_again_before() -> None:
    """Two changes in one loop iteration: the waiter resumes once, with the flag clear (it reads the
    queue next, so nothing is missed), and the next wait blocks again until a new set()."""
    wakeup = Wakeup()

    def two_changes() -> None:
        wakeup.set()
        wakeup.set()

    asyncio.get_running_loop().call_later(0.01, two_changes)
    await wakeup.wait(5.0)
    assert not wakeup.is_set()
    started = time.monotonic()
    await wakeup.wait(0.05)
    assert time.monotonic() - started >= 0.04
