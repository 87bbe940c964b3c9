"""The unit the pipeline moves: one change of one namespace at one etcd revision.

A ``Change`` is immutable and shared by every subscriber; its SSE encoding is
computed once, on first use, not once per subscriber.

SSE ids (resume points) name the etcd cluster as well as the revision:
``<cluster_id as lowercase hex>:<revision>``, e.g. ``id: 8e9e05c52164694d:1043``.
A revision number of one cluster means nothing in another (a rebuilt cluster,
a region fed by ``etcdctl make-mirror``), so a resume id from another cluster
must get a ``reset``, never a replay.  Plain ``<revision>`` ids (curl, old
SDKs, ``?since=R``) are still accepted and trusted to be of the current cluster.

One etcd transaction can change several namespaces at one revision.  Only the
*last* frame of a transaction carries ``id:`` (``sse_frames``): an SSE client
keeps the previous id for frames without one, so a connection lost in the
middle of a transaction resumes *before* it and gets the whole transaction
again (clients drop the namespaces they already have, by revision), instead
of resuming at its revision and never seeing the rest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from configcenter.errors import InvalidArgumentError
from configcenter.model import Release
from configcenter_sdk import wire

MAX_RESUME_ID = wire.MAX_EVENT_ID
_CHANGE = wire.EVENT_CHANGE.encode()


def event_id(cluster_id: int, revision: int) -> bytes:
    """The SSE ``id`` of an event at ``revision``: ``<cluster hex>:<revision>`` (plain revision if unknown)."""
    return wire.format_event_id(cluster_id, revision).encode()


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a subscriber says it stands: ``revision``, and the cluster it came from if it said so."""

    revision: int
    cluster_id: int | None = None


def parse_resume_id(raw: str, source: str) -> ResumePoint:
    """Parse a ``Last-Event-ID`` / ``?since=`` value (hostile input).

    Accepts exactly ``<revision>`` or ``<cluster hex>:<revision>``: ASCII
    digits (at most 19, value <= 2**63-1), lowercase hex (1-16 digits), at most
    ``MAX_RESUME_ID`` characters checked before anything else.  Anything else
    raises ``InvalidArgumentError`` (400 ``invalid_argument``) naming ``source``.
    """
    shown = raw if len(raw) <= MAX_RESUME_ID else raw[:MAX_RESUME_ID] + "..."
    hint = "expected <revision> or <cluster hex>:<revision> as sent in an event id"
    parsed = wire.parse_event_id(raw)
    if parsed is None:
        digits = raw.rpartition(":")[2]
        if len(raw) <= MAX_RESUME_ID and digits.isascii() and digits.isdigit() and len(digits) <= 19:
            raise InvalidArgumentError(f"{source} revision {int(digits)} is out of range (max {wire.MAX_REVISION})",
                                       parameter=source)
        raise InvalidArgumentError(f"{source} must be a resume id ({hint}), got {shown!r}", parameter=source)
    cluster, revision = parsed
    return ResumePoint(revision, None if cluster is None else int(cluster, 16))


@dataclass(frozen=True, slots=True)
class Change:
    """``release`` is the new state (``doc`` None for deletions); ``prev_revision`` is the
    revision of the previous change of the same namespace (0 if none is known);
    ``cluster_id`` is the etcd cluster it happened in (0: unknown), part of its SSE id."""

    release: Release
    prev_revision: int
    cluster_id: int = 0
    _sse: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def ns(self) -> str:
        return self.release.ns

    @property
    def revision(self) -> int:
        return self.release.revision

    def to_json(self) -> dict[str, Any]:
        return {**self.release.to_json(), "prev_revision": self.prev_revision}

    def sse(self, with_id: bool = True) -> bytes:
        """``[id/]event/data`` frame, encoded once and cached (both variants)."""
        if not self._sse:
            body = b"event: %s\ndata: %s\n\n" % (_CHANGE, orjson.dumps(self.to_json()))
            self._sse.extend((b"id: %s\n%s" % (event_id(self.cluster_id, self.revision), body), body))
        return self._sse[0 if with_id else 1]


class Frame(Protocol):
    def sse(self) -> bytes: ...


def sse_frames(items: Sequence[Change | Frame]) -> bytes:
    """Encode ``items`` (in revision order) so only the last change of each revision has an ``id``.

    The batch must hold whole transactions (the mirror publishes each etcd
    watch response at once, the ring keeps whole transactions), so the last
    change of a revision in the batch is the last of its transaction that
    this subscriber is sent.
    """
    frames: list[bytes] = []
    next_revision = -1
    for item in reversed(items):
        if isinstance(item, Change):
            frames.append(item.sse(with_id=item.revision != next_revision))
            next_revision = item.revision
        else:
            frames.append(item.sse())
    frames.reverse()
    return b"".join(frames)


class ChangeRing:
    """The most recent changes, in revision order, for subscriber catch-up.

    Invariant: every change with ``revision > floor`` is in the ring, so a
    subscriber that has seen everything up to ``since >= floor`` can be
    caught up exactly; below the floor it needs a snapshot (``reset``).
    """

    def __init__(self, capacity: int, floor: int = 0) -> None:
        self._items: deque[Change] = deque()
        self.capacity = capacity
        self.floor = floor
        self.floor_reason = wire.RING_EXPIRED  # why a resume point below the floor gets a reset

    def extend(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self._items.append(change)
        while len(self._items) > self.capacity:
            dropped = self._items.popleft()
            # Keep whole transactions: the floor may only sit between revisions.
            self.floor = dropped.revision
            self.floor_reason = wire.RING_EXPIRED
            while self._items and self._items[0].revision == dropped.revision:
                self._items.popleft()

    def reset(self, floor: int) -> None:
        """Forget everything: only subscribers at or above ``floor`` can be caught up."""
        self._items.clear()
        self.floor = floor
        self.floor_reason = wire.RING_EXPIRED

    def raise_floor(self, floor: int, reason: str) -> None:
        """Resume points below ``floor`` can no longer be caught up exactly (``reason``: why, for
        their reset); changes at or below it are dropped."""
        while self._items and self._items[0].revision <= floor:
            self._items.popleft()
        if floor > self.floor:
            self.floor, self.floor_reason = floor, reason

    def since(self, revision: int) -> list[Change] | None:
        """Changes with revision > ``revision``, or None if the ring no longer covers it."""
        if revision < self.floor:
            return None
        if not self._items or self._items[-1].revision <= revision:
            return []
        newer: list[Change] = []
        for change in reversed(self._items):  # newest first: cost is the catch-up size, not the ring's
            if change.revision <= revision:
                break
            newer.append(change)
        newer.reverse()
        return newer

    def __len__(self) -> int:
        return len(self._items)
