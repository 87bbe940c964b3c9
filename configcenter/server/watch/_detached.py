"""Event streams the hub serves without a task of their own, once aiohttp has let go of them.

Why: an idle subscriber served by its request's task keeps that task's frames, aiohttp's
request handler, parser, request and response for as long as it is open: ~13 KiB per
subscriber, the cost of an idle aiohttp keep-alive connection.  What a stream needs is its
transport, its ``Subscription`` and its ``SseChannel``.

How: after the response head and the catch-up, ``Hub._serve`` asks the connection guard to
detach the connection (``net.ConnectionGuard.detach``, given to the hub by the runtime); aiohttp
lets go of it (``net/_aiohttp.py``, the one module on aiohttp's internals; where it cannot, the
guard refuses and the stream stays on its task) and the guard forwards its events to a
:class:`DetachedStream`.  This module touches no aiohttp API itself.  From then on, with the same
frames, order and contract as the task path in ``hub.py``:

* changes still go from the fan-out straight to the socket (``SseChannel.try_write``);
* what the fan-out could not write (a lagging peer's queue, a reset) is written by
  :meth:`DetachedStreams.flush`, on the next loop iteration after the subscription is woken
  (its ``Wakeup`` is redirected here), or when the transport's buffer drains
  (``resume_writing``; the transport's high-water mark is the channel's);
* one task ticks every half ``progress_interval``: a stream whose client left written bytes
  unread for ``limits.drain_timeout`` is aborted (``SseChannel.stalled``); a stream that sent nothing for a whole tick
  gets a ``progress`` frame (so a silent stream hears something every 0.5 to 1 times
  ``progress_interval``), or, when its floor is above the mirror, the check the task path
  makes (``Hub.check_ahead``);
* the client leaving (``connection_lost``) ends the subscription; ``end_all`` (shutdown) ends
  every body with the chunked terminator and closes the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hub import Hub
    from .subscription import Subscription

log = logging.getLogger("configcenter.hub")


class DetachedStream:
    """The connection's events (from the guard) and the subscription's wakeups, for one stream."""

    __slots__ = ("_owner", "_scheduled", "sub")

    def __init__(self, owner: DetachedStreams, sub: Subscription) -> None:
        self._owner = owner
        self.sub = sub
        self._scheduled = False

    def wake(self) -> None:
        """Something is owed (a queue, a reset): flush on the next loop iteration, once."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._owner.flush(self.sub)

    # -- the connection's events (``net.listener._GuardedProtocol`` forwards them) ------
    def data_received(self, data: bytes) -> None:
        """A subscriber has nothing more to say once its request is read: ignored."""

    def eof_received(self) -> bool:
        return False  # the client half-closed: close the connection

    def pause_writing(self) -> None:
        """``flush`` checks the buffer itself."""

    def resume_writing(self) -> None:
        self._owner.flush(self.sub)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._owner.lost(self.sub)


class DetachedStreams:
    """The hub's streams without tasks, and the one task that ticks for them."""

    def __init__(self, hub: Hub, progress_interval: float) -> None:
        self._hub = hub
        self._progress_interval = progress_interval
        self.subs: set[Subscription] = set()
        self._ticker: asyncio.Task[None] | None = None

    def adopt(self, sub: Subscription, detach: Any) -> bool:
        """Serve ``sub`` from here if ``detach(transport, stream)`` takes its connection from aiohttp."""
        channel = sub.channel
        if channel is None:
            return False
        stream = DetachedStream(self, sub)
        if not detach(channel.transport, stream):
            return False
        with contextlib.suppress(AttributeError, NotImplementedError):  # a transport without limits
            channel.transport.set_write_buffer_limits(high=channel.high_water)
        sub.wakeup.redirect(stream)
        self.subs.add(sub)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="configcenter-detached-streams")
        if sub.needs_reset is not None or sub.queue:  # owed while the catch-up was written
            stream.wake()
        return True

    def flush(self, sub: Subscription, *, idle: bool = False) -> None:
        """Write what ``sub`` is owed (a reset, its queue; with ``idle`` else a progress) if its
        peer keeps up; else wait for ``resume_writing``."""
        channel = sub.channel
        if channel is None or sub not in self.subs or not channel.writable():
            return
        frames = self._hub.pending_frames(sub, idle=idle)
        if frames:
            channel.write_now(frames)

    def lost(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        self._hub.forget(sub)

    def end_all(self) -> None:
        """Shutdown: end every body and close every connection (``lost`` follows for each)."""
        for sub in list(self.subs):
            if sub.channel is not None:
                sub.channel.end()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._progress_interval / 2)
            try:
                await self._idle_streams()
            except Exception:  # one bad stream must not stop the progress of the others
                log.exception("progress tick of detached streams failed")

    async def _idle_streams(self) -> None:
        """A progress to every stream that sent nothing for a whole tick (and can be written to);
        ``sent`` is cleared at each tick and set by every write, the progress included."""
        now = time.monotonic()
        for sub in list(self.subs):
            channel = sub.channel
            if channel is None:
                continue
            if channel.stalled(now):
                channel.abort()  # ``lost`` follows
                self._hub.note_stalled()
                continue
            if channel.sent:
                channel.sent = False
                continue
            if sub.needs_reset is None and not sub.queue and sub.floor > self._hub.applied_revision:
                await self._hub.check_ahead(sub)  # may owe it a reset: written below
            self.flush(sub, idle=True)
