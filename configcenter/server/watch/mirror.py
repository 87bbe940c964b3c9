"""A revision-ordered mirror of every namespace, kept by list + watch on etcd.

Resume and ordering contract
----------------------------
* ``applied_revision`` is the etcd revision up to which the mirror has seen
  every change of ``docs/``.  It only moves forward, and only on proof: an
  event's ``mod_revision`` or a verified progress notification — never an
  ordinary response header (during catch-up etcd puts the store's current
  revision there while older events are still pending).
* A (re)watch starts at ``applied_revision`` itself, not + 1; events at or
  below it are replays and are dropped (counted as ``deduped``).  A watch
  opened *at* etcd's compaction revision can lose a deletion at that revision
  (etcd-io/etcd#18089, #19179); opened one below, a compaction at
  ``applied_revision + 1`` is a compaction error and a re-list instead.
* All events of one etcd revision (one transaction) are applied and
  published together.
* If etcd compacted past the resume point, the mirror re-lists at a fresh
  revision L and replays the missed window (applied, L] from ``history/``
  (``_window``: every release, deletions included, at its true revision) when
  that gives exactly the list; otherwise it publishes the difference
  (updates and deletions) and raises the ring's floor to L, so a resume point
  inside the window gets a reset, never a partial replay.
* A progress revision that fails verification ``AUDIT_AFTER`` times in a row
  (and every ``AUDIT_QUIET`` progress responses anyway) makes the mirror
  compare its whole state with ``docs/`` at its own applied revision; if
  they differ (a change etcd never delivered) it logs, counts
  (``configcenter_mirror_drift_total``) and re-lists as above, without the
  replay (its state below the list is wrong).
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
from typing import Any

import grpc
from etcd3aio import Etcd3Client, prefix_range_end

from configcenter.server.etcd import client as _etcd
from configcenter.server.limits import WatchTuning
from configcenter.server.metrics import Metrics
from configcenter_sdk import wire

from ._backfill import recent_changes
from ._mirror_state import COMPACTED, RESYNCED, MirrorState
from ._mirror_state import Listener as Listener  # re-exported
from ._mirror_watch import ProgressVerifier, RevisionProbe, WatchSession
from ._window import replays_to, window_releases
from .changes import Change

log = logging.getLogger("configcenter.mirror")

CLUSTER_CHANGED = wire.CLUSTER_CHANGED
REVISION_WENT_BACK = wire.REVISION_WENT_BACK
PROGRESS_UNVERIFIED = "progress_unverified"  # progress kept failing verification and the state differs
AUDIT_AFTER = 2  # failed progress verifications in a row before the whole state is compared
AUDIT_QUIET = 12  # progress responses (not advancing) between two comparisons of a quiet mirror


class Compacted(Exception):
    """The watch's resume point was compacted away: a re-list is required."""


class Diverged(Exception):
    """etcd looks like another cluster or an older revision than the mirror: re-list to find out."""


class Drifted(Exception):
    """The mirror's state differs from etcd's at the mirror's own applied revision: re-list."""


class Mirror(MirrorState):
    """See the module docstring for the contract; ``start()``/``stop()`` own the background task."""

    def __init__(
        self, client: Etcd3Client, layout: _etcd.KeyLayout, *, ring_size: int = 10_000,
        tuning: WatchTuning | None = None, metrics: Metrics | None = None,
    ) -> None:
        super().__init__(layout, ring_size, metrics)
        self._client = client
        self.tuning = tuning or WatchTuning()
        self.abandoned: list[tuple[int, int]] = []  # (low, high]: revisions of a history a restore discarded
        self.connected = False
        self.ready = asyncio.Event()
        self._last_contact = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._session: WatchSession | None = None
        self._unverified = 0  # progress verifications failed in a row
        self._quiet = 0  # progress responses since the whole state was last compared
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
                need_list = COMPACTED
            except Drifted:
                need_list = PROGRESS_UNVERIFIED
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
        await self._resync(kv, listed, revision, why)

    async def _resync(self, kv: Any, listed: dict[str, Any], revision: int, why: str) -> None:
        """Continue from a list at ``revision`` (not below the applied one) after a gap (``why``).

        The missed window is replayed from history when that is exact (``_window``); otherwise the
        difference is published and the ring's floor rises to ``revision``: a resume point inside
        the window gets a reset, never a partial replay.  After ``PROGRESS_UNVERIFIED`` the state
        below the list is wrong, so there is no window to replay onto: always the difference.
        """
        low = self.applied_revision
        self.etcd_revision = max(self.etcd_revision, revision)
        log.warning("resyncing (%s): resume point %d; re-listed at %d", why, low, revision)
        self.metrics.inc("configcenter_mirror_resyncs_total")
        window = None
        if why != PROGRESS_UNVERIFIED and revision > low:
            window = await window_releases(kv, self.layout, low, revision, limit=self.ring.capacity,
                                           timeout=self.tuning.etcd_timeout)
        listed_revisions = {ns: int(item.mod_revision) for ns, item in listed.items()}
        if window is not None and replays_to(self._document_revisions(), window, listed_revisions):
            log.info("replayed the missed window (%d, %d] from history: %d changes", low, revision, len(window))
            self._publish([self._replayed(release) for release in window], revision)
            return
        self._publish_difference(listed, revision, COMPACTED if why == COMPACTED else RESYNCED)

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

    async def _watch(self) -> None:
        verifier = ProgressVerifier(self._client, self.layout, self.tuning.etcd_timeout)
        # from the applied revision itself (its events are dropped as replays): see the module docstring
        session = WatchSession(
            _etcd.watch_stub(self._client), self.layout.docs_prefix, max(1, self.applied_revision),
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
                    if resp.compact_revision:  # before the header: etcd sends it with revision 0
                        raise Compacted(resp.compact_revision)
                    if resp.canceled:
                        raise grpc.RpcError(f"watch canceled by etcd: {resp.cancel_reason}")
                    self._check_header(resp.header)
                    if resp.events:
                        self._apply_events(resp.events)
                    elif not resp.created:
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
        """Advance to a verified progress revision.  Compare the whole state with etcd at the applied
        revision after ``AUDIT_AFTER`` failed verifications in a row, or every ``AUDIT_QUIET`` progress
        responses (a change lost before later ones were applied leaves nothing to verify);
        ``Drifted`` if they differ."""
        self._quiet += 1
        if revision > self.applied_revision:
            present = self.state.keys() | self.invalid.keys()
            if await verifier.confirms(revision, present, self.applied_revision):
                self._unverified = 0
                if revision > self.applied_revision:  # events may have arrived while verifying
                    self._advance(revision)
                return
            self.metrics.inc("configcenter_progress_unverified_total")
            self._unverified += 1
        if self._unverified < AUDIT_AFTER and self._quiet < AUDIT_QUIET:
            return
        self._unverified = self._quiet = 0
        if await verifier.agrees(self.applied_revision, self._document_revisions()) is False:
            log.warning("the mirror's state differs from etcd's at its applied revision %d (a change etcd "
                        "never delivered); re-listing", self.applied_revision)
            self.metrics.inc("configcenter_mirror_drift_total")
            raise Drifted(self.applied_revision)
