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

Cluster identity and revisions going back
-----------------------------------------
* ``cluster_id`` is etcd's cluster id from the first list; ``etcd_revision``
  the highest revision etcd's response headers showed (watch, progress, list,
  probes).  Headers are fine for *that*: it is "etcd has reached at least",
  never a resume point.
* If a watch response comes from another cluster, or its header revision is
  below ``applied_revision`` (etcd restored from a snapshot, endpoints now on
  a new cluster), the mirror re-lists with a linearizable read.  Only if that
  list confirms it (other cluster id, or list revision < applied) does the
  mirror *replace* its state: WARNING, ``configcenter_mirror_diverged_total``,
  state and ring rebuilt at the list revision (``applied_revision`` goes
  down), and every ``reset_listeners`` callback gets the reason
  (``cluster_changed`` / ``revision_went_back``).  A lagging member that
  merely showed an old header costs one re-list that finds nothing to do.
* After a restore, etcd's new history reuses the revision numbers of the
  discarded one: ``abandoned`` keeps the windows (list revision, old applied
  revision] this mirror saw discarded, so a resume id inside one gets a reset
  even after etcd's new history has passed it (``abandoned_revision``).  Only
  a mirror that saw the old history knows: see docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from ._mirror_watch import ProgressVerifier, RevisionProbe, WatchSession
from .changes import Change, ChangeRing
from .metrics import Metrics
from .settings import WatchTuning

log = logging.getLogger("configcenter.mirror")

Listener = Callable[[list[Change]], None]
CLUSTER_CHANGED = "cluster_changed"
REVISION_WENT_BACK = "revision_went_back"


class Compacted(Exception):
    """The watch's resume point was compacted away: a re-list is required."""


class Diverged(Exception):
    """etcd looks like another cluster or an older revision than the mirror: re-list to find out."""


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
        self.cluster_id = 0  # etcd's cluster id, from the first list (0 until then)
        self.etcd_revision = 0  # etcd has reached at least this revision (response headers)
        self.abandoned: list[tuple[int, int]] = []  # (low, high]: revisions of a history a restore discarded
        self.ring = ChangeRing(ring_size)
        self.listeners: list[Listener] = []
        self.reset_listeners: list[Callable[[str], None]] = []  # state replaced; argument: the reason
        self.invalid_listeners: list[Callable[[str, int, str], None]] = []
        self.connected = False
        self.ready = asyncio.Event()
        self._last_contact = time.monotonic()
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: WatchSession | None = None
        self._probe = RevisionProbe(self._read_revision)

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
    def abandoned_revision(self, revision: int) -> bool:
        """Whether ``revision`` of this cluster may name a release of a history etcd discarded."""
        return any(low < revision <= high for low, high in self.abandoned)

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

    async def etcd_revision_for(self, revision: int, timeout: float) -> int | None:
        """etcd's current revision, when ``revision`` needs checking against it; None if unknown.

        Without I/O when ``revision <= etcd_revision`` (the answer is "at least
        ``etcd_revision``").  Otherwise one linearizable read, started after this
        call and shared with concurrent callers (``RevisionProbe``), at most
        ``timeout`` seconds.  None when etcd cannot be asked (or the mirror has
        lost it), or when it answers from another cluster or below
        ``applied_revision``: then the mirror's own view is about to be replaced
        (its watch is dropped to find out), which resets every subscriber anyway.
        """
        if revision <= self.etcd_revision:
            return self.etcd_revision
        if not self.connected:  # etcd is down: do not hammer it on behalf of subscribers
            return None
        header = await self._probe.header(timeout)
        if header is None:
            return None
        if int(header.cluster_id) != self.cluster_id or int(header.revision) < self.applied_revision:
            self.drop_connection()
            return None
        self.etcd_revision = max(self.etcd_revision, int(header.revision))
        return self.etcd_revision

    async def _read_revision(self) -> Any:
        kv = self._client.kv
        if kv is None:
            raise RuntimeError("etcd client is not connected")
        start = self.layout.docs_prefix
        return await kv.get(start, count_only=True, timeout=self.tuning.etcd_timeout)

    # -- the loop ---------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        # why the next pass lists instead of watching; a restarted mirror resumes its watch
        need_list: str | None = None if self.ready.is_set() else "start"
        while True:
            try:
                if need_list:
                    await self._relist(need_list)
                    need_list = None
                attempt = 0
                await self._watch()
            except Compacted:
                need_list = "compacted"
            except Diverged as exc:
                need_list = str(exc)
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

    async def _relist(self, why: str) -> None:
        """List ``docs/`` at a fresh revision (linearizable; in pages, all at that revision) and load,
        replace or resync from it.

        First list: load.  Other cluster, or a revision below the applied one:
        replace the state (module docstring).  Otherwise publish the difference.
        """
        start = self.layout.docs_prefix
        kv = self._client.kv
        if kv is None:
            raise RuntimeError("etcd client is not connected")
        header, items = await _etcd.read_range(kv, start, prefix_range_end(start), timeout=self.tuning.etcd_timeout)
        self._contact()
        listed = {self.layout.ns_of_doc_key(item.key): item for item in items}
        revision, cluster = int(header.revision), int(header.cluster_id)
        replaced = self._divergence(cluster, revision)
        if not self.ready.is_set() or replaced:
            changes, floor = await recent_changes(kv, self.layout, listed, revision, self.ring.capacity,
                                                  self.tuning.etcd_timeout, cluster)
            self._load(listed, (revision, cluster), changes, floor, replaced)
            return
        self.etcd_revision = max(self.etcd_revision, revision)
        log.warning("resyncing (%s): resume point %d; re-listed at %d", why, self.applied_revision, revision)
        self.metrics.inc("configcenter_mirror_resyncs_total")
        self._publish(self._diff_against(listed, revision), revision)

    def _divergence(self, cluster: int, revision: int) -> str | None:
        """Why a list at ``revision`` of ``cluster`` cannot continue the mirror's history, if it cannot."""
        if not self.ready.is_set():
            return None
        if cluster != self.cluster_id:
            return CLUSTER_CHANGED
        return REVISION_WENT_BACK if revision < self.applied_revision else None

    def _load(self, listed: dict[str, Any], at: tuple[int, int], recent: list[Change], floor: int,
              replaced: str | None) -> None:
        """Make ``listed`` the whole state at ``at`` = (revision, cluster id); ``replaced``: why an older
        state is dropped (then every reset listener is told)."""
        revision, cluster = at
        if replaced:
            log.warning("etcd %s: cluster %x at revision %d, the mirror was at cluster %x revision %d; replacing "
                        "the mirror's state and resetting every subscriber", replaced.replace("_", " "), cluster,
                        revision, self.cluster_id, self.applied_revision)
            self.metrics.inc("configcenter_mirror_diverged_total")
            went_back = replaced == REVISION_WENT_BACK  # same cluster, list below what was applied
            self.abandoned = [*self.abandoned[-15:], (revision, self.applied_revision)] if went_back else []
        self.cluster_id = cluster
        self.state.clear()
        self.last_change.clear()
        self.invalid.clear()
        for change in recent:
            self.last_change[change.ns] = change.revision
        for ns, item in listed.items():
            release = self._parse(ns, item.mod_revision, item.value)
            if release is not None:
                self.state[ns] = release
            self.last_change[ns] = item.mod_revision
        self.applied_revision = self.etcd_revision = revision
        self.ring.reset(floor)
        self.ring.extend(recent)
        if recent or floor:
            log.info("catch-up ring rebuilt from history: %d changes above revision %d", len(recent), floor)
        self._advance(revision)
        self.ready.set()
        if replaced:
            for notify in self.reset_listeners:
                notify(replaced)

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
        # aclosing: a raise in this loop (compaction, divergence, cancel) must run the session's
        # finally now, so grpc's request task ends; a generator left suspended is only finalized
        # with that task at garbage collection ("Task was destroyed but it is pending!").
        try:
            async with contextlib.aclosing(session.responses()) as responses:
                async for resp in responses:
                    self._contact()
                    self._check_header(resp.header)
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

    def _check_header(self, header: Any) -> None:
        """Note how far etcd got; ``Diverged`` if the header is from another cluster or below the mirror."""
        revision, cluster = int(header.revision), int(header.cluster_id)
        if cluster and cluster != self.cluster_id:
            raise Diverged(CLUSTER_CHANGED)
        if revision < self.applied_revision:
            raise Diverged(REVISION_WENT_BACK)
        self.etcd_revision = max(self.etcd_revision, revision)

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
        return [Change(release, prev, self.cluster_id)]

    def _delete_change(self, ns: str, revision: int) -> Change:
        old = self.state.pop(ns, None)
        prev = self.last_change.get(ns, 0)
        self.last_change[ns] = revision
        self.invalid.pop(ns, None)
        kind = old.kind if old else "config"
        version = old.version + 1 if old else 0
        return Change(Release(ns, revision, version, "delete", kind, None, time=time.time()), prev, self.cluster_id)

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
        self.etcd_revision = max(self.etcd_revision, self.applied_revision)
        self.metrics.set("configcenter_applied_revision", self.applied_revision)
        event, self._advanced = self._advanced, asyncio.Event()
        event.set()
