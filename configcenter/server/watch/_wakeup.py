"""A per-subscriber wakeup: ``asyncio.Event`` for exactly one waiter, with the timeout built in.

Why not ``asyncio.Event`` plus ``asyncio.timeout``: an idle subscriber spends its life in that
wait, so what the wait holds is paid once per connection.  An ``Event`` carries a ``deque`` of
waiters (760 bytes empty) and a ``__dict__``; ``asyncio.timeout`` adds a context object around
the timer.  Here a wait is one future and one timer handle, and an idle ``Wakeup`` is two slots.

Contract: ``set()`` may be called any number of times from the event loop's thread; ``wait()``
returns as soon as the flag is set (at once if it already is) or after ``timeout`` seconds, and
clears the flag either way.  Only one task waits at a time (the subscriber's own).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Notified(Protocol):
    def wake(self) -> None: ...


class Wakeup:
    __slots__ = ("_flag", "_notify", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[None] | None = None
        self._notify: Notified | None = None

    def redirect(self, notify: Notified) -> None:
        """From now on ``set()`` calls ``notify.wake()`` instead (nobody waits any more: a stream
        served without a task, ``_detached``)."""
        self._notify = notify

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        if self._notify is not None:
            self._notify.wake()
            return
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until ``set()`` or ``timeout`` seconds; the flag is clear afterwards."""
        if not self._flag:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self._flag = False


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
