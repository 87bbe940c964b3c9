"""The mirror's state and how changes are applied to it and published (``MirrorState``).

Split from ``mirror.py`` (which owns the etcd I/O: list, watch, progress, resync decisions):
everything here is synchronous apart from ``wait_for``, so a batch of changes is applied to the
state, the ring and every listener in one step, with nothing interleaved.  The contract is in
``mirror.py``'s module docstring.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from configcenter.model import Release
from configcenter.server.etcd import client as _etcd
from configcenter.server.metrics import Metrics
from configcenter_sdk import wire

from .changes import Change, ChangeRing

log = logging.getLogger("configcenter.mirror")

Listener = Callable[[list[Change]], None]
COMPACTED = wire.COMPACTED  # etcd compacted the resume point (also a reset reason: the ring's floor rose)
RESYNCED = wire.RESYNCED  # the ring's floor rose at a re-list for another reason


class MirrorState:
    """The documents, the catch-up ring and the listeners of a mirror (see ``mirror.Mirror``)."""

    def __init__(self, layout: _etcd.KeyLayout, ring_size: int, metrics: Metrics | None) -> None:
        self.layout = layout
        self.metrics = metrics or Metrics()
        self.state: dict[str, Release] = {}
        self.last_change: dict[str, int] = {}  # ns -> revision of its latest change, deletions included
        self.invalid: dict[str, str] = {}
        self.applied_revision = 0
        self.cluster_id = 0  # etcd's cluster id, from the first list (0 until then)
        self.etcd_revision = 0  # etcd has reached at least this revision (response headers)
        self.ring = ChangeRing(ring_size)
        self.listeners: list[Listener] = []
        self.reset_listeners: list[Callable[[str], None]] = []  # state replaced; argument: the reason
        self.invalid_listeners: list[Callable[[str, int, str], None]] = []
        self._advanced = asyncio.Event()

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

    def _document_revisions(self) -> dict[str, int]:
        """{ns: mod_revision of its document} as the mirror believes etcd holds at ``applied_revision``
        (-1 for an invalid record: its revision is not kept)."""
        revisions = {ns: self.last_change.get(ns, 0) for ns in self.state}
        revisions.update(dict.fromkeys(self.invalid, -1))
        return revisions

    def _diff_against(self, listed: dict[str, Any], revision: int) -> list[Change]:
        changes: list[Change] = []
        for ns, item in listed.items():
            if self.last_change.get(ns) != item.mod_revision:
                changes.extend(self._put_change(ns, item.mod_revision, item.value))
        for ns in [ns for ns in self.state if ns not in listed]:
            changes.append(self._delete_change(ns, revision))
        changes.sort(key=lambda c: c.revision)
        return changes

    def _publish_difference(self, listed: dict[str, Any], revision: int, reason: str) -> None:
        """Publish what differs from a list at ``revision`` (not below the applied one) when the missed
        window cannot be replayed: resume points in it get a reset (``reason``), never a partial replay."""
        low = self.applied_revision
        changes = self._diff_against(listed, revision)
        if revision == low and not changes:
            return  # nothing was missed (a lagging member showed an old header)
        log.warning("the missed window (%d, %d] cannot be replayed exactly from history; resume points "
                    "below %d get a reset", low, revision, revision)
        self.metrics.inc("configcenter_mirror_ring_truncated_total")
        if revision > low:
            self._publish(changes, revision)
            self.ring.raise_floor(revision, reason)
            return
        # listed at the applied revision itself: subscribers are at it already and would drop
        # changes published there, so they get a snapshot of the corrected state instead, and so
        # does a resume at it (a client of this replica may hold the wrong view at that revision)
        self.ring.raise_floor(revision + 1, reason)
        for notify in self.reset_listeners:
            notify(reason)

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

    def _replayed(self, release: Release) -> Change:
        """Apply one release of a window rebuilt from history (``_resync``)."""
        prev = self.last_change.get(release.ns, 0)
        self.last_change[release.ns] = release.revision
        self.invalid.pop(release.ns, None)
        if release.op == "delete":
            self.state.pop(release.ns, None)
        else:
            self.state[release.ns] = release
        return Change(release, prev, self.cluster_id)

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
