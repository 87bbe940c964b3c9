"""A revision-ordered mirror of every namespace, kept by list + watch on etcd.

Resume and ordering contract
----------------------------
* ``applied_revision`` is the etcd revision up to which the mirror has seen
  every change of ``docs/``.  It only moves forward, and only on proof: an
  event's ``mod_revision`` or a verified progress notification — never an
  ordinary response header (during catch-up etcd puts the store's current
  revision there while older events are still pending).
* A (re)watch starts at ``applied_revision + 1``; events at or below it are
  replays and are dropped (counted as ``deduped``).
* All events of one etcd revision (one transaction) are applied and
  published together.
* If etcd compacted past the resume point, the mirror re-lists at a fresh
  revision, publishes the difference (updates and deletions) as ordinary
  changes, and watches on from the list revision + 1.
* A record that does not parse (e.g. written by hand with ``etcdctl``) is
  logged, counted and published as an ``invalid`` notice; the namespace keeps
  its last good state and the mirror keeps running.
* While etcd is unreachable the mirror keeps its last view, reports itself
  stale with the age, and reconnects with exponential backoff and full jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import orjson
from etcd3aio import Etcd3Client, prefix_range_end

from ..model import Release
from . import etcd as _etcd
from ._backfill import recent_changes
from ._mirror_watch import ProgressVerifier, WatchSession
from .changes import Change, ChangeRing
from .metrics import Metrics
from .settings import WatchTuning

log = logging.getLogger("configcenter.mirror")

Listener = Callable[[list[Change]], None]


class Compacted(Exception):
    """The watch's resume point was compacted away: a re-list is required."""


class Mirror:
    """See the module docstring for the contract; ``start()``/``stop()`` own the background task."""

    def __init__(
        self, client: Etcd3Client, layout: _etcd.KeyLayout, *, ring_size: int = 10_000,
        tuning: WatchTuning | None = None, metrics: Metrics | None = None,
    ) -> None:
        self._client = client
        self.layout = layout
        self.tuning = tuning or WatchTuning()
        self.metrics = metrics or Metrics()
        self.state: dict[str, Release] = {}
        self.last_change: dict[str, int] = {}  # ns -> revision of its latest change, deletions included
        self.invalid: dict[str, str] = {}
        self.applied_revision = 0
        self.ring = ChangeRing(ring_size)
        self.listeners: list[Listener] = []
        self.invalid_listeners: list[Callable[[str, int, str], None]] = []
        self.connected = False
        self.ready = asyncio.Event()
        self._last_contact = time.monotonic()
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: WatchSession | None = None

    # -- life cycle -------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="configcenter-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def drop_connection(self) -> None:
        """Break the current watch stream (tests/ops): the mirror reconnects and resumes."""
        if self._session is not None:
            self._session.cancel()

    # -- reads ------------------------------------------------------------
    def stale_seconds(self) -> float:
        """0 while connected; otherwise seconds since etcd last answered."""
        return 0.0 if self.connected else time.monotonic() - self._last_contact

    def snapshot(self, match: Callable[[str], bool] | None = None) -> tuple[int, dict[str, Release]]:
        """A consistent (revision, {ns: release}) view; no await inside, so nothing moves under it."""
        docs = {ns: r for ns, r in self.state.items() if match is None or match(ns)}
        return self.applied_revision, docs

    async def wait_for(self, revision: int, timeout: float) -> bool:
        """Wait until ``applied_revision >= revision``; False on timeout (no error)."""
        deadline = time.monotonic() + timeout
        while self.applied_revision < revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = self._advanced
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return False
        return True

    # -- the loop ---------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        need_list = not self.ready.is_set()  # a restarted mirror resumes its watch
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                attempt = 0
                await self._watch()
            except Compacted:
                need_list = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._lost_contact(exc)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform(0, min(max, initial * 2**attempt))."""
        cap = min(self.tuning.backoff_max, self.tuning.backoff_initial * (2 ** min(attempt, 30)))
        return random.uniform(0, cap)

    def _lost_contact(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("lost etcd (%s: %s); serving the last view as stale", type(exc).__name__, exc)
        self.connected = False
        self.metrics.inc("configcenter_watch_reconnects_total")

    def _contact(self) -> None:
        if not self.connected and self.ready.is_set():
            log.info("etcd is back at applied revision %d", self.applied_revision)
        self.connected = True
        self._last_contact = time.monotonic()

    async def _relist(self) -> None:
        """List ``docs/`` at a fresh revision; after the first list, publish the difference."""
        start = self.layout.docs_prefix
        kv = self._client.kv
        if kv is None:
            raise RuntimeError("etcd client is not connected")
        resp = await kv.get(start, range_end=prefix_range_end(start), timeout=self.tuning.etcd_timeout)
        self._contact()
        listed = {self.layout.ns_of_doc_key(item.key): item for item in resp.kvs}
        revision = int(resp.header.revision)
        if not self.ready.is_set():
            changes, floor = await recent_changes(
                kv, self.layout, listed, revision, self.ring.capacity, self.tuning.etcd_timeout)
            self._load_initial(listed, revision, changes, floor)
            return
        log.warning("resyncing: resume point %d was compacted; re-listed at %d", self.applied_revision, revision)
        self.metrics.inc("configcenter_mirror_resyncs_total")
        self._publish(self._diff_against(listed, revision), revision)

    def _load_initial(self, listed: dict[str, Any], revision: int, recent: list[Change], floor: int) -> None:
        for change in recent:
            self.last_change[change.ns] = change.revision
        for ns, item in listed.items():
            release = self._parse(ns, item.mod_revision, item.value)
            if release is not None:
                self.state[ns] = release
            self.last_change[ns] = item.mod_revision
        self.applied_revision = revision
        self.ring.reset(floor)
        self.ring.extend(recent)
        if recent or floor:
            log.info("catch-up ring rebuilt from history: %d changes above revision %d", len(recent), floor)
        self.metrics.set("configcenter_applied_revision", revision)
        self.ready.set()

    def _diff_against(self, listed: dict[str, Any], revision: int) -> list[Change]:
        changes: list[Change] = []
        for ns, item in listed.items():
            if self.last_change.get(ns) != item.mod_revision:
                changes.extend(self._put_change(ns, item.mod_revision, item.value))
        for ns in [ns for ns in self.state if ns not in listed]:
            changes.append(self._delete_change(ns, revision))
        changes.sort(key=lambda c: c.revision)
        return changes

    async def _watch(self) -> None:
        verifier = ProgressVerifier(self._client, self.layout, self.tuning.etcd_timeout)
        session = WatchSession(
            _etcd.watch_stub(self._client), self.layout.docs_prefix, self.applied_revision + 1,
            self.tuning.progress_interval,
        )
        self._session = session
        try:
            async for resp in session.responses():
                self._contact()
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise grpc.RpcError(f"watch canceled by etcd: {resp.cancel_reason}")
                if resp.events:
                    self._apply_events(resp.events)
                elif not resp.created and resp.header.revision > self.applied_revision:
                    await self._on_progress(verifier, int(resp.header.revision))
        finally:
            self._session = None

    async def _on_progress(self, verifier: ProgressVerifier, revision: int) -> None:
        present = self.state.keys() | self.invalid.keys()
        if await verifier.confirms(revision, present, self.applied_revision):
            if revision > self.applied_revision:  # events may have arrived while verifying
                self._advance(revision)
        else:
            self.metrics.inc("configcenter_progress_unverified_total")

    def _apply_events(self, events: Iterable[Any]) -> None:
        """Group events by revision (one transaction each) and publish each group whole."""
        batch: list[Change] = []
        current = 0
        for event in events:
            revision = int(event.kv.mod_revision)
            if revision <= self.applied_revision:
                self.metrics.inc("configcenter_mirror_deduped_total")
                continue
            if batch and revision != current:
                self._publish(batch, current)
                batch = []
            current = revision
            ns = self.layout.ns_of_doc_key(event.kv.key)
            if event.type == _etcd.EVENT_DELETE:
                batch.append(self._delete_change(ns, revision))
            else:
                batch.extend(self._put_change(ns, revision, event.kv.value))
        if current:
            self._publish(batch, current)

    def _put_change(self, ns: str, revision: int, value: bytes) -> list[Change]:
        release = self._parse(ns, revision, value)
        if release is None:  # subscribers never saw it, so it is not a "previous change" either
            return []
        prev = self.last_change.get(ns, 0)
        self.last_change[ns] = revision
        self.state[ns] = release
        self.invalid.pop(ns, None)
        return [Change(release, prev)]

    def _delete_change(self, ns: str, revision: int) -> Change:
        old = self.state.pop(ns, None)
        prev = self.last_change.get(ns, 0)
        self.last_change[ns] = revision
        self.invalid.pop(ns, None)
        kind = old.kind if old else "config"
        version = old.version + 1 if old else 0
        return Change(Release(ns, revision, version, "delete", kind, None, time=time.time()), prev)

    def _parse(self, ns: str, revision: int, value: bytes) -> Release | None:
        try:
            return Release.from_record(ns, revision, orjson.loads(value))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            error = f"record of {ns!r} at revision {revision} is not a configcenter record: {exc}"
            log.error("%s; keeping the last good state", error)
            self.invalid[ns] = error
            self.metrics.inc("configcenter_invalid_records_total")
            for notify in self.invalid_listeners:
                notify(ns, revision, error)
            return None

    def _publish(self, changes: list[Change], revision: int) -> None:
        self.ring.extend(changes)
        self._advance(revision)
        if changes:
            for listener in self.listeners:
                listener(changes)

    def _advance(self, revision: int) -> None:
        self.applied_revision = max(self.applied_revision, revision)
        self.metrics.set("configcenter_applied_revision", self.applied_revision)
        event, self._advanced = self._advanced, asyncio.Event()
        event.set()
