"""The subscriber's wakeup (server/watch/_wakeup.py): set before or during a wait, or the timeout.

No clock is read here: "at once" is a wait that completes without suspending, "waits" is a wait
still pending after the event loop ran everything that was ready, and a wait of an hour that ends
can only have been ended by ``set()``.
"""

from __future__ import annotations

import asyncio

import pytest

from configcenter.server.watch._wakeup import Wakeup

HOUR = 3600.0


async def pending_wait(wakeup: Wakeup, timeout: float) -> asyncio.Task[None]:
    """A task waiting on ``wakeup``: it has run up to its first suspension and is not done."""
    task = asyncio.create_task(wakeup.wait(timeout))
    await asyncio.sleep(0)  # one loop iteration: the task runs until it suspends
    assert not task.done()
    return task


async def test_a_set_flag_returns_at_once_and_is_cleared() -> None:
    wakeup = Wakeup()
    wakeup.set()
    wakeup.set()
    waiting = wakeup.wait(HOUR)
    with pytest.raises(StopIteration):  # finished on its first step: it never suspended
        waiting.send(None)
    assert not wakeup.is_set()


async def test_set_during_the_wait_wakes_the_waiter() -> None:
    wakeup = Wakeup()
    task = await pending_wait(wakeup, HOUR)
    wakeup.set()
    await asyncio.wait_for(task, 10)  # an hour's wait that ends: set() ended it
    assert not wakeup.is_set()


async def test_the_timeout_ends_the_wait_and_a_later_set_is_kept_for_the_next() -> None:
    wakeup = Wakeup()
    task = await pending_wait(wakeup, 0.05)  # it waits...
    await asyncio.wait_for(task, 10)  # ...and ends without a set(): its timeout ended it
    assert not wakeup.is_set()
    wakeup.set()  # nobody waits: remembered
    assert wakeup.is_set()
    await asyncio.wait_for(wakeup.wait(HOUR), 10)
    assert not wakeup.is_set()


async def test_a_cancelled_wait_leaves_no_waiter_or_timer_behind() -> None:
    wakeup = Wakeup()
    loop = asyncio.get_running_loop()
    timers = len(loop._scheduled)  # type: ignore[attr-defined]
    task = await pending_wait(wakeup, 5.0)
    assert len(loop._scheduled) == timers + 1  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sum(not h.cancelled() for h in loop._scheduled) == timers  # type: ignore[attr-defined]
    wakeup.set()  # must not touch the cancelled future
    assert wakeup.is_set() and wakeup._waiter is None


async def test_the_flag_is_clear_when_the_waiter_resumes_even_if_set_again_before() -> None:
    """Two changes in one loop iteration: the waiter resumes once, with the flag clear (it reads the
    queue next, so nothing is missed), and the next wait blocks again until a new set()."""
    wakeup = Wakeup()
    task = await pending_wait(wakeup, HOUR)
    wakeup.set()
    wakeup.set()
    await asyncio.wait_for(task, 10)
    assert not wakeup.is_set()
    again = await pending_wait(wakeup, HOUR)  # blocks again: the second set() was not kept
    wakeup.set()
    await asyncio.wait_for(again, 10)
