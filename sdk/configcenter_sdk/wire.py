"""The event stream's wire format, written once for the server, the SDK and the CLI.

``GET /v1/watch`` answers ``text/event-stream``.  Events (``event:`` names):

* ``reset`` — a full snapshot of the subscribed namespaces at a revision, with a ``reason``;
* ``change`` — one release of one namespace (``ns``, ``revision``, ``prev_revision``, ``op`` …);
* ``progress`` — the server's current revision (keep-alive, revision advance, a safe resume point);
* ``invalid`` — a record in etcd that could not be parsed (no id: not a resume point).

Event ids are ``<etcd cluster id, lowercase hex>:<revision>`` (``a7add6a5f1a85547:1043``); a plain
``<revision>`` is accepted on resume (``curl``, ``?since=``, older clients) and sent when the cluster
is unknown.  Revisions are etcd's int64 revisions (at most 19 digits), cluster ids at most 16 hex digits.

Reset reasons say why a subscriber got a snapshot instead of a replay.  Those in
:data:`BACKWARDS_REASONS` carry a revision that may be *below* the subscriber's own (etcd went back to a
backup, or the subscriber came from another cluster): a client must take such a reset as authoritative.

The SSE parser a client needs is :class:`configcenter_sdk.SSEParser` (``_sse.py``), bounded in memory.
"""

from __future__ import annotations

import re

__all__ = [
    "BACKWARDS_REASONS", "CLUSTER_CHANGED", "COMPACTED", "EVENT_CHANGE", "EVENT_INVALID", "EVENT_PROGRESS",
    "EVENT_RESET", "MAX_EVENT_ID", "MAX_REVISION", "NO_RESUME_POINT", "QUEUE_OVERFLOW", "RESET_REASONS",
    "RESUME_AHEAD", "RESYNCED", "REVISION_WENT_BACK", "RING_EXPIRED", "format_event_id", "parse_event_id",
]

EVENT_RESET = "reset"
EVENT_CHANGE = "change"
EVENT_PROGRESS = "progress"
EVENT_INVALID = "invalid"

NO_RESUME_POINT = "no_resume_point"  # a new subscriber: its first snapshot
RING_EXPIRED = "ring_expired"  # the resume point fell out of the replica's catch-up ring
QUEUE_OVERFLOW = "queue_overflow"  # the subscriber read too slowly: its queue was dropped
COMPACTED = "compacted"  # etcd compacted the window the replica missed and history could not rebuild it
RESYNCED = "resynced"  # the replica re-listed etcd for another reason (drift found by verification)
CLUSTER_CHANGED = "cluster_changed"  # the resume id names another etcd cluster
REVISION_WENT_BACK = "revision_went_back"  # etcd's revision went back (restored from a backup)
RESUME_AHEAD = "resume_ahead_of_cluster"  # the resume revision is above etcd's current revision

RESET_REASONS = frozenset({NO_RESUME_POINT, RING_EXPIRED, QUEUE_OVERFLOW, COMPACTED, RESYNCED, CLUSTER_CHANGED,
                           REVISION_WENT_BACK, RESUME_AHEAD})
BACKWARDS_REASONS = frozenset({CLUSTER_CHANGED, REVISION_WENT_BACK, RESUME_AHEAD})

MAX_REVISION = 2**63 - 1  # etcd revisions are int64
MAX_EVENT_ID = 64  # the longest valid id is 16 hex + ":" + 19 digits = 36 characters
_EVENT_ID = re.compile(r"(?:([0-9a-f]{1,16}):)?([0-9]{1,19})")


def format_event_id(cluster_id: int, revision: int) -> str:
    """The id of an event at ``revision``: ``<cluster hex>:<revision>``, or the bare revision if the
    cluster is unknown (0)."""
    return f"{cluster_id:x}:{revision}" if cluster_id else str(revision)


def parse_event_id(raw: str | None) -> tuple[str | None, int] | None:
    """``(cluster hex or None, revision)`` of an id, or None if absent, too long or not of this format
    (revision above int64 included).  Linear: the length is checked before the pattern runs."""
    if raw is None or len(raw) > MAX_EVENT_ID:
        return None
    match = _EVENT_ID.fullmatch(raw)
    if match is None:
        return None
    revision = int(match.group(2))
    return None if revision > MAX_REVISION else (match.group(1), revision)
