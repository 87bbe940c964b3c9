"""Fan-out of mirror changes to SSE subscribers, with resume by revision.

Per-subscriber contract
-----------------------
* A subscriber is registered and its catch-up computed in one synchronous
  step, so between the replay (from the ring) and the live changes there is
  neither a gap nor a duplicate.
* Without a resume point, or when the ring no longer covers it, the first
  event is one ``reset`` carrying a snapshot of the subscribed namespaces at a
  revision; changes at or below that revision are then never sent.
* Every ``change`` has ``id: <revision>``; ids never decrease on a stream.
* ``progress`` (id = the mirror's applied revision) is sent when the stream has
  been idle for ``progress_interval``; it is only sent with an empty queue, so
  a client may resume from it.
* The queue holds at most ``queue_size`` changes.  On overflow it is emptied
  and the subscriber gets a ``reset`` instead: memory stays bounded however
  slowly a client reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from configcenter_sdk.names import namespace_matcher

from .changes import Change
from .metrics import Metrics
from .mirror import Mirror

Matcher = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class InvalidNotice:
    """A record in etcd that could not be parsed; sent as an ``invalid`` event (no id)."""

    ns: str
    revision: int
    error: str

    def sse(self) -> bytes:
        data = orjson.dumps({"ns": self.ns, "revision": self.revision, "error": self.error})
        return b"event: invalid\ndata: %s\n\n" % data


@dataclass(eq=False)
class Subscription:
    match: Matcher
    limit: int
    queue: deque[Change | InvalidNotice] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    needs_reset: bool = False
    floor: int = 0  # nothing at or below this revision is sent any more

    def offer(self, items: Sequence[Change | InvalidNotice]) -> bool:
        """Queue the matching items; on overflow drop the backlog and ask for a reset (returns False)."""
        matching = [i for i in items if self.match(i.ns)]
        if not matching:
            return True
        if len(self.queue) + len(matching) > self.limit:
            self.queue.clear()
            self.needs_reset = True
            self.wakeup.set()
            return False
        self.queue.extend(matching)
        self.wakeup.set()
        return True


class Hub:
    """Owns the subscriptions; ``stream()`` is the aiohttp handler body for ``GET /v1/watch``."""

    def __init__(self, mirror: Mirror, metrics: Metrics, *, queue_size: int, progress_interval: float) -> None:
        self._mirror = mirror
        self._metrics = metrics
        self._queue_size = queue_size
        self._progress_interval = progress_interval
        self.subscriptions: set[Subscription] = set()
        mirror.listeners.append(self._fan_out)
        mirror.invalid_listeners.append(lambda ns, rev, err: self._fan_out([InvalidNotice(ns, rev, err)]))

    def _fan_out(self, items: Sequence[Change | InvalidNotice]) -> None:
        for sub in self.subscriptions:
            if not sub.offer(items):
                self._metrics.inc("configcenter_subscriber_overflows_total")

    async def stream(self, request: web.Request, selectors: list[str], since: int | None) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        await resp.prepare(request)
        sub = Subscription(namespace_matcher(selectors), self._queue_size)
        self.subscriptions.add(sub)
        self._metrics.set("configcenter_subscribers", len(self.subscriptions))
        try:
            await resp.write(self._catch_up(sub, since))
            while True:
                await self._send_next(sub, resp)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.subscriptions.discard(sub)
            self._metrics.set("configcenter_subscribers", len(self.subscriptions))
        return resp

    def _catch_up(self, sub: Subscription, since: int | None) -> bytes:
        """Replay from the ring when it covers ``since``, else a reset.  Synchronous on purpose."""
        if since is not None:
            replay = self._mirror.ring.since(since)
            if replay is not None:
                sub.floor = since
                frames = [c.sse() for c in replay if sub.match(c.ns)]
                if replay:
                    sub.floor = replay[-1].revision
                return b"".join(frames) or self._progress_frame(sub)
        return self._reset_frame(sub)

    async def _send_next(self, sub: Subscription, resp: web.StreamResponse) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.wakeup.wait(), self._progress_interval)
        sub.wakeup.clear()
        if sub.needs_reset:
            sub.needs_reset = False
            sub.queue.clear()
            await resp.write(self._reset_frame(sub))
            return
        if not sub.queue:
            await resp.write(self._progress_frame(sub))
            return
        items = [i for i in sub.queue if isinstance(i, InvalidNotice) or i.revision > sub.floor]
        sub.queue.clear()
        if not items:
            return
        await resp.write(b"".join(i.sse() for i in items))
        self._after_send(sub, items)

    def _after_send(self, sub: Subscription, items: list[Change | InvalidNotice]) -> None:
        now = time.time()
        sent = 0
        for item in items:
            if isinstance(item, Change):
                sent += 1
                sub.floor = max(sub.floor, item.revision)
                if item.release.time > 0:
                    self._metrics.observe_propagation(max(0.0, now - item.release.time))
        self._metrics.inc("configcenter_changes_sent_total", sent)

    def _reset_frame(self, sub: Subscription) -> bytes:
        revision, docs = self._mirror.snapshot(sub.match)
        revision = max(revision, sub.floor)
        sub.floor = revision
        data = orjson.dumps({"revision": revision, "namespaces": {ns: r.to_json() for ns, r in docs.items()}})
        return b"id: %d\nevent: reset\ndata: %s\n\n" % (revision, data)

    def _progress_frame(self, sub: Subscription) -> bytes:
        revision = max(self._mirror.applied_revision, sub.floor)
        sub.floor = revision
        stale = round(self._mirror.stale_seconds(), 3)
        data = orjson.dumps({"revision": revision, "stale": stale > 0, "stale_seconds": stale})
        return b"id: %d\nevent: progress\ndata: %s\n\n" % (revision, data)
