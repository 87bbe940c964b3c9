"""Fan-out of mirror changes to SSE subscribers, with resume by revision.

Per-subscriber contract
-----------------------
* A subscriber is registered and its catch-up computed in one synchronous
  step, so between the replay (from the ring) and the live changes there is
  neither a gap nor a duplicate.
* Ids are ``<cluster hex>:<revision>`` (``changes.event_id``, on the shared
  ``configcenter_sdk.wire``); a resume id is ``Last-Event-ID`` / ``?since=`` as
  ``<revision>`` or ``<cluster hex>:<revision>`` (``changes.parse_resume_id``).
* The first event is one ``reset`` (a snapshot of the subscribed namespaces at
  a revision; changes at or below it are then never sent) whose data says why:
  ``no_resume_point``; ``cluster_changed`` (the id names another etcd
  cluster); ``resume_ahead_of_cluster`` (the revision is above etcd's current
  one: etcd was restored or replaced); ``revision_went_back`` (the revision
  lies in a history this replica saw etcd discard in a restore, even if etcd's
  new history has passed it since); ``ring_expired`` (the ring no longer
  covers it; ``compacted`` / ``resynced`` when a re-list could not replay
  the window it missed from history).  Otherwise the missed changes are replayed from the ring.
* A resume revision above this replica's mirror but not above etcd's current
  revision (the client came from a replica that is ahead) gets no reset:
  nothing at or below it is sent, the rest follows as the mirror catches up.
  etcd's current revision is known from the mirror's response headers; only
  a revision above those costs one shared, bounded read (``Mirror.etcd_revision_for``).
  If etcd cannot be asked, the subscriber waits as for a replica that is behind,
  and every idle ``progress_interval`` while it is still ahead of the mirror the
  question is asked again (free while etcd's known revision covers it).
* Later resets: ``queue_overflow``; and ``cluster_changed`` /
  ``revision_went_back`` to every subscriber when the mirror replaced its
  state.  These two and ``resume_ahead_of_cluster`` carry a revision that may
  be *below* the client's: it is authoritative.
* Ids never decrease on a stream, except at such a backwards reset.
* Delivery: a change goes straight from the mirror's callback to every
  subscriber whose connection keeps up (``SseChannel.try_write``, no task
  switch; selected, encoded and framed once per distinct set of selectors); a subscriber with a
  backlog, a pending reset or a full socket buffer gets it queued and its
  own task writes it with backpressure.  Either way frames leave in order.
* ``progress`` (id = the mirror's applied revision) is sent when the stream has
  been idle for ``progress_interval`` (0.5 to 1 times that once the stream is served
  without a task, ``_detached``); it is only sent with an empty queue, so
  a client may resume from it.
* Once the head and the catch-up are out, the connection is taken from aiohttp
  (the ``detach`` the runtime passes in: ``net.ConnectionGuard.detach``) and the
  stream is served from callbacks without a task of its own (``_detached``):
  ~2.7 KiB per idle subscriber instead of ~13.  Without a guard (or if detaching
  fails) the task serves it.
* The queue holds at most ``queue_size`` changes.  On overflow it is emptied
  and the subscriber gets a ``reset`` instead: memory stays bounded however
  slowly a client reads.
* No stream starts before the mirror's first list: until then (after waiting at
  most ``READY_WAIT`` seconds, or ``progress_interval`` if shorter) the answer is
  503 ``etcd_unavailable``, because a reset of an empty view would tell clients to
  delete everything.
* Per client: at most ``limits.max_streams_per_address`` / ``_per_principal`` open
  streams, 429 with ``Retry-After`` past them (``_stream_limits``); a client that
  leaves what was written to it (a catch-up included) unread for
  ``limits.drain_timeout`` has its connection aborted (``SseChannel.stalled``) and
  resumes elsewhere or later with ``Last-Event-ID``.  A client that hangs up before
  its head is written is counted (``configcenter_client_disconnects_total``), not an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from aiohttp import web

from configcenter.errors import EtcdUnavailableError
from configcenter.server.limits import Limits
from configcenter.server.metrics import Metrics
from configcenter.server.security import request_info
from configcenter_sdk import wire
from configcenter_sdk.names import namespace_matcher

from ._detached import DetachedStreams
from ._sse_channel import Body, SseChannel, Stalled
from ._stream_limits import StreamAdmission
from .changes import Change, ResumePoint, event_id, sse_frames
from .mirror import CLUSTER_CHANGED, REVISION_WENT_BACK, Mirror
from .subscription import (
    BACKWARDS,
    NO_RESUME_POINT,
    RESUME_AHEAD,
    UNSEEN,
    InvalidNotice,
    Item,
    Matcher,
    Shared,
    Subscription,
    top_revision,
)

READY_WAIT = 2.0  # seconds a subscriber may wait for the mirror's first list
PROBE_TIMEOUT = 1.0  # seconds a subscriber may wait for etcd's current revision
CLOSE_WAIT = 0.5  # seconds a shutdown waits for the streams' handlers to return
log = logging.getLogger("configcenter.hub")


class Hub:
    """Owns the subscriptions; ``stream()`` is the aiohttp handler body for ``GET /v1/watch``."""

    def __init__(self, mirror: Mirror, metrics: Metrics, *, queue_size: int, progress_interval: float,
                 detach: Callable[[Any, Any], bool] | None = None, limits: Limits | None = None) -> None:
        """``detach(transport, stream)``: take a connection from aiohttp once its stream is set up
        (``net.ConnectionGuard.detach``; None: every stream keeps its task).  ``limits``: the
        per-client caps and the drain deadline (default: ``Limits()``)."""
        limits = limits or Limits()
        self._admission = StreamAdmission(limits.max_streams_per_address, limits.max_streams_per_principal,
                                          metrics, retry_after=progress_interval)
        self._drain_timeout = limits.drain_timeout
        self._mirror = mirror
        self._detach = detach
        self._detached = DetachedStreams(self, progress_interval)
        self._metrics = metrics
        self._queue_size = queue_size
        self._progress_interval = progress_interval
        self.subscriptions: set[Subscription] = set()
        self._closing = False
        self._matchers: weakref.WeakValueDictionary[tuple[str, ...], Matcher] = weakref.WeakValueDictionary()
        mirror.listeners.append(self._fan_out)
        mirror.invalid_listeners.append(lambda ns, rev, err: self._fan_out([InvalidNotice(ns, rev, err)]))
        mirror.reset_listeners.append(self._reset_all)

    async def close(self, timeout: float = CLOSE_WAIT) -> None:
        """End every stream (server shutdown), waiting up to ``timeout`` for their handlers.

        Each handler returns at once, so aiohttp ends the chunked body cleanly and clients
        reconnect elsewhere, instead of the shutdown waiting its timeout and then cancelling
        thousands of handlers (which also races aiohttp's own ``_handler_waiter``:
        ``InvalidStateError`` logged per connection).
        """
        self._closing = True
        self._detached.end_all()
        for sub in self.subscriptions:
            sub.wakeup.set()
        deadline = time.monotonic() + timeout
        while self.subscriptions and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _matcher(self, selectors: tuple[str, ...]) -> Matcher:
        """One matcher per distinct selectors, shared while any subscription uses it (memory per subscriber)."""
        found = self._matchers.get(selectors)
        if found is None:
            found = self._matchers[selectors] = namespace_matcher(selectors)
        return found

    def _reset_all(self, reason: str) -> None:
        for sub in self.subscriptions:
            sub.reset(reason)

    def _fan_out(self, items: Sequence[Item]) -> None:
        """Deliver ``items`` (whole transactions) to every subscriber: directly or via its queue.

        Subscribers with the same selectors share one selection, one encoding and one framing
        (a ``Shared``); a subscriber whose floor reaches into the selection, or that cannot be
        written to now, takes the per-subscriber path (``_deliver_one``).
        """
        shared: dict[tuple[str, ...], Shared | None] = {}
        direct: Counter[int] = Counter()  # id(item) -> subscribers written to on the per-subscriber path
        for sub in self.subscriptions:
            group = shared.get(sub.selectors, UNSEEN)
            if group is UNSEEN:
                group = shared[sub.selectors] = Shared.of(sub.match, items)
            if group is None:
                continue
            channel = sub.writable_channel() if sub.floor < group.lowest else None
            if channel is not None and channel.try_write(group.body):
                sub.floor = max(sub.floor, group.top)
                group.written += 1
            else:
                self._deliver_one(sub, items, direct)
        for group in shared.values():
            if group is not None and group.written:
                for item in group.items:
                    direct[id(item)] += group.written
        if direct:
            self._count_sent([(i, direct[id(i)]) for i in items])

    def _deliver_one(self, sub: Subscription, items: Sequence[Item], written: Counter[int]) -> None:
        """The per-subscriber path: its own selection above its floor, written now or queued."""
        selected = sub.selection(items)
        if not selected:
            return
        channel = sub.writable_channel()
        if channel is not None and channel.try_write(Body(sse_frames(selected))):
            sub.floor = max(sub.floor, top_revision(selected))
            for item in selected:
                written[id(item)] += 1
        elif not sub.offer(selected):
            self._metrics.inc("configcenter_subscriber_overflows_total")

    async def stream(self, request: web.Request, selectors: list[str],
                     since: ResumePoint | None) -> web.StreamResponse:
        """Serve one subscription until the client goes; 503 ``EtcdUnavailableError`` if the mirror never
        listed, 429 ``TooManyRequestsError`` past a per-client cap."""
        await self._wait_ready()
        info = request_info(request)
        ticket = self._admission.admit(info.client, info.principal)
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        try:
            opened = await self._open(request, resp, since)
        except BaseException:
            self._admission.release(ticket)
            raise
        if opened is None:
            self._admission.release(ticket)
            return resp
        channel, etcd_revision = opened
        key = tuple(selectors)
        sub = Subscription(self._matcher(key), self._queue_size, channel, selectors=key, ticket=ticket)
        self.subscriptions.add(sub)  # from here to the catch-up frame nothing awaits: no gap, no duplicate
        self._metrics.set("configcenter_subscribers", len(self.subscriptions))
        await self._serve(sub, channel, since, etcd_revision)
        return resp

    async def _open(self, request: web.Request, resp: web.StreamResponse,
                    since: ResumePoint | None) -> tuple[SseChannel, int | None] | None:
        """The head sent, and etcd's revision if ``since`` needs it; None if the client hung up first."""
        try:
            channel = await SseChannel.open(request, resp, drain_timeout=self._drain_timeout)
        except ConnectionError:  # aiohttp's ClientConnectionResetError included
            self.client_left(request, "before its stream's head was written")
            return None
        etcd_revision = None
        if since is not None and since.cluster_id in (None, self._mirror.cluster_id):
            etcd_revision = await self._mirror.etcd_revision_for(since.revision, PROBE_TIMEOUT)
        return channel, etcd_revision

    async def _serve(self, sub: Subscription, channel: SseChannel, since: ResumePoint | None,
                     etcd_revision: int | None) -> None:
        """The catch-up, then the stream: detached (``_detached``) or from this task until the client goes."""
        detached = False
        try:
            await channel.write(self._catch_up(sub, since, etcd_revision))
            if self._detach is not None and not self._closing:
                detached = self._detached.adopt(sub, self._detach)
                if detached:  # served from ``_detached`` from here; aiohttp has let go of the connection
                    return
            while not self._closing:
                # idle here, in this frame: what an idle subscriber's task holds is paid per connection
                await sub.wakeup.wait(self._progress_interval)
                if not self._closing:
                    await self._send_pending(sub, channel)
        except Stalled:
            self.note_stalled()
        except ConnectionError:
            pass
        finally:
            if not detached:
                self.forget(sub)

    def forget(self, sub: Subscription) -> None:
        """``sub``'s client is gone."""
        if sub in self.subscriptions:
            self.subscriptions.discard(sub)
            self._admission.release(sub.ticket)
        self._metrics.set("configcenter_subscribers", len(self.subscriptions))

    def note_stalled(self) -> None:
        """A stream's connection was aborted for leaving written bytes unread (``SseChannel.stalled``)."""
        self._metrics.inc("configcenter_streams_stalled_total")
        log.info("closed a watch stream whose client left written bytes unread for %.1fs (limits.drain_timeout)",
                 self._drain_timeout)

    def client_left(self, request: web.Request, when: str) -> None:
        """A client hung up ``when``: a normal event, counted and logged at info (never as an error)."""
        self._metrics.inc("configcenter_client_disconnects_total")
        log.info("client %s left %s %s %s", request_info(request).client or "?", request.method, request.path, when)

    @property
    def applied_revision(self) -> int:
        return self._mirror.applied_revision

    async def _wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._mirror.ready.wait(), min(READY_WAIT, self._progress_interval))
        except TimeoutError:
            raise EtcdUnavailableError("the server has not read etcd yet; retry or use another replica") from None

    def _catch_up(self, sub: Subscription, since: ResumePoint | None, etcd_revision: int | None) -> bytes:
        """Replay from the ring when it covers ``since``, else a reset.  Synchronous on purpose.

        ``etcd_revision``: etcd's current revision if known (None: wait, as for a replica behind).
        """
        reason = self._reset_reason(since, etcd_revision)
        if reason is None and since is not None:
            replay = self._mirror.ring.since(since.revision)
            if replay is not None:
                sub.floor = since.revision
                frames = sse_frames([c for c in replay if sub.match(c.ns)])
                if replay:
                    sub.floor = replay[-1].revision
                return frames or self._progress_frame(sub)
            reason = self._mirror.ring.floor_reason  # ring_expired, or compacted / resynced (mirror._resync)
        return self._reset_frame(sub, reason or NO_RESUME_POINT)

    def _reset_reason(self, since: ResumePoint | None, etcd_revision: int | None) -> str | None:
        if since is None:
            return NO_RESUME_POINT
        if since.cluster_id is not None and since.cluster_id != self._mirror.cluster_id:
            return CLUSTER_CHANGED
        if self._mirror.abandoned_revision(since.revision):
            return REVISION_WENT_BACK
        if etcd_revision is not None and since.revision > etcd_revision:
            return RESUME_AHEAD
        return None

    async def _send_pending(self, sub: Subscription, channel: SseChannel) -> None:
        """After a wakeup (or ``progress_interval`` idle): send a reset, the queued changes or a progress."""
        if sub.needs_reset is None and not sub.queue and sub.floor > self._mirror.applied_revision:
            await self.check_ahead(sub)
        frames = self.pending_frames(sub, idle=True)
        if frames:
            await channel.write(frames)

    async def check_ahead(self, sub: Subscription) -> None:
        """``sub``'s floor is above the mirror: a reset if it is above etcd too (etcd went back)."""
        etcd_revision = await self._mirror.etcd_revision_for(sub.floor, PROBE_TIMEOUT)
        if etcd_revision is not None and sub.floor > etcd_revision:
            sub.reset(RESUME_AHEAD)

    def pending_frames(self, sub: Subscription, *, idle: bool) -> bytes:
        """What ``sub`` is owed now, taken from it: a pending reset, else its queued changes, else
        (``idle``) a progress; empty if nothing.  The caller writes it before anything else."""
        if sub.needs_reset is not None:
            reason, sub.needs_reset = sub.needs_reset, None
            sub.queue.clear()
            return self._reset_frame(sub, reason)
        if not sub.queue:
            return self._progress_frame(sub) if idle else b""
        items = [i for i in sub.queue if isinstance(i, InvalidNotice) or i.revision > sub.floor]
        sub.queue.clear()
        if not items:
            return b""
        self._after_send(sub, items)
        return sse_frames(items)

    def _after_send(self, sub: Subscription, items: list[Item]) -> None:
        sub.floor = max(sub.floor, top_revision(items))
        self._count_sent([(i, 1) for i in items])

    def _count_sent(self, counts: list[tuple[Item, int]]) -> None:
        """Metrics for changes written to ``n`` subscribers each: sent total, commit -> sent delay."""
        now = time.time()
        sent = 0
        for item, n in counts:
            if isinstance(item, Change) and n:
                sent += n
                if item.release.time > 0:
                    self._metrics.observe_propagation(max(0.0, now - item.release.time), n)
        self._metrics.inc("configcenter_changes_sent_total", sent)

    def _reset_frame(self, sub: Subscription, reason: str) -> bytes:
        """A snapshot at the mirror's revision; never below the stream's floor unless ``reason`` is backwards."""
        revision, docs = self._mirror.snapshot(sub.match)
        if reason not in BACKWARDS:
            revision = max(revision, sub.floor)
        sub.floor = revision
        cluster = self._mirror.cluster_id
        data = orjson.dumps({"revision": revision, "reason": reason, "cluster": f"{cluster:x}",
                             "namespaces": {ns: r.to_json() for ns, r in docs.items()}})
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id(cluster, revision), wire.EVENT_RESET.encode(), data)

    def _progress_frame(self, sub: Subscription) -> bytes:
        revision = max(self._mirror.applied_revision, sub.floor)
        sub.floor = revision
        stale = round(self._mirror.stale_seconds(), 3)
        data = orjson.dumps({"revision": revision, "stale": stale > 0, "stale_seconds": stale})
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id(self._mirror.cluster_id, revision),
                                                    wire.EVENT_PROGRESS.encode(), data)

