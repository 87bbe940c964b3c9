"""What the events of a subscription do to the client's state, and where the subscription stands.

Resume point
------------
``revision`` is the revision of the last ``reset``/``progress`` or of the last
``change`` that carried an ``id`` (the last frame of its transaction), and
``cluster`` the etcd cluster id (hex) the server named in the event ids
(``id: <cluster hex>:<revision>``). A reconnect sends both back as
``Last-Event-ID`` (:meth:`StreamState.last_event_id`), so a server of another
etcd cluster, or of one restored to an older revision, answers with a
``reset`` instead of replaying unrelated changes.

Resets
------
An ordinary reset adopts what is newer and deletes what it lacks (a namespace
known at a revision above the reset is kept: it came from a replica that is
ahead). A reset is *backwards*, and authoritative, when the server says so
(``reason`` ``cluster_changed`` / ``revision_went_back`` /
``resume_ahead_of_cluster``), when it names another cluster than the client's,
or when its revision is below the client's: then it replaces the state
outright (``LocalState.replace_all``), snapshots included, is logged as a
WARNING and counted (``resets_backwards``); the resume point moves down to it.
A reset at revision 0 (a server that has not read etcd yet) is never backwards.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from . import wire
from ._sse import SSEEvent
from ._state import Incoming, LocalState, classify_change, parse_release

__all__ = ["BACKWARDS_REASONS", "StreamState", "is_backwards", "parse_event_id"]

log = logging.getLogger("configcenter_sdk.client")

BACKWARDS_REASONS = wire.BACKWARDS_REASONS
parse_event_id = wire.parse_event_id

Fetch = Callable[[str], Awaitable[Incoming | None]]


def is_backwards(revision: int, reason: object, cluster: str | None, own: tuple[int, str | None]) -> bool:
    """Whether a reset at ``revision`` of ``cluster`` must replace a state at ``own`` = (revision, cluster)."""
    own_revision, own_cluster = own
    if revision <= 0:
        return False
    if reason in BACKWARDS_REASONS:
        return True
    if cluster is not None and own_cluster is not None and cluster != own_cluster:
        return True
    return revision < own_revision


class StreamState:
    """The resume point, counters and event application of one client (see the module docstring)."""

    def __init__(self, state: LocalState, match: Callable[[str], bool], fetch: Fetch, *,
                 on_applied: Callable[[], None], on_rewrite: Callable[[], None]) -> None:
        self.revision = 0
        self.cluster: str | None = None
        self.server_stale = False
        self.counters = {"reconnects": 0, "gaps": 0, "duplicates": 0, "resets_backwards": 0,
                         "oversized_events": 0}
        self._state = state
        self._match = match
        self._fetch = fetch
        self._on_applied = on_applied  # a reset or change was applied (e.g. persist the resume point)
        self._on_rewrite = on_rewrite  # a backwards reset is about to rewrite the state (drop the resume point)

    def last_event_id(self) -> str | None:
        """The ``Last-Event-ID`` to resume with (None: no resume point yet)."""
        if self.revision <= 0:
            return None
        return f"{self.cluster}:{self.revision}" if self.cluster else str(self.revision)

    async def apply(self, event: SSEEvent, url: str) -> None:
        """Apply one SSE event; malformed ones are logged and skipped (the revision does not advance)."""
        if event.event == wire.EVENT_INVALID:
            log.warning("server reports an unreadable record: %s", event.data)
            return
        parsed = parse_event_id(event.id)
        cluster = parsed[0] if parsed is not None else None
        try:
            data = orjson.loads(event.data)
            if event.event == wire.EVENT_RESET:
                await self._apply_reset(data, cluster, url)
            elif event.event == wire.EVENT_CHANGE:
                await self.apply_change(parse_release(data), complete=event.id is not None)
            elif event.event == wire.EVENT_PROGRESS:
                self._apply_progress(data)
            else:
                return
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.error("malformed %s event from %s skipped: %s", event.event, url, exc)
            return
        self.cluster = cluster or self.cluster
        if event.event != wire.EVENT_PROGRESS:
            self._on_applied()

    async def _apply_reset(self, data: Mapping[str, Any], id_cluster: str | None, url: str) -> None:
        revision = int(data["revision"])
        releases = [parse_release(obj) for obj in data["namespaces"].values()]
        cluster = data.get("cluster") if isinstance(data.get("cluster"), str) else id_cluster
        if is_backwards(revision, data.get("reason"), cluster, (self.revision, self.cluster)):
            log.warning("backwards reset from %s (%s): cluster %s revision %d replaces cluster %s revision %d; "
                        "the configuration goes back to what that etcd holds", url, data.get("reason"),
                        cluster, revision, self.cluster, self.revision)
            self.counters["resets_backwards"] += 1
            self._on_rewrite()
            await self._state.replace_all(releases, revision, self._match)
            self.revision = revision
            self.cluster = cluster
        else:
            for release in sorted(releases, key=lambda r: r.revision):
                await self._state.adopt(release)
            await self._state.drop_absent({r.ns for r in releases}, revision, self._match)
            self.revision = max(self.revision, revision)
        self.server_stale = False
        self._state.touch_all()

    async def apply_change(self, change: Incoming, *, complete: bool = True) -> None:
        """Apply one ``change``: drop duplicates, close gaps by re-reading the namespace, adopt.

        ``complete``: the frame carried an ``id``, i.e. it ends its etcd transaction (the server
        puts the id on a transaction's last frame only); only then does the resume point move to
        its revision, so a connection lost mid-transaction resumes before it and gets the rest.
        """
        verdict = classify_change(self._state.revisions.get(change.ns), self.revision, change)
        if verdict == "duplicate":
            self.counters["duplicates"] += 1
            return
        if verdict == "gap":
            self.counters["gaps"] += 1
            log.warning("gap in %s: change %d follows %s, client knows %s; re-reading the namespace",
                        change.ns, change.revision, change.prev_revision, self._state.revisions.get(change.ns))
            fetched = await self._fetch(change.ns)
            if fetched is not None and fetched.revision > change.revision:
                await self._state.adopt(fetched)
        await self._state.adopt(change)
        if complete:
            self.revision = max(self.revision, change.revision)

    def _apply_progress(self, data: Mapping[str, Any]) -> None:
        self.revision = max(self.revision, int(data["revision"]))
        self.server_stale = bool(data.get("stale", False))
        if not self.server_stale:
            self._state.touch_all()
