"""The unit the pipeline moves: one change of one namespace at one etcd revision.

A ``Change`` is immutable and shared by every subscriber; its SSE encoding is
computed once, on first use, not once per subscriber.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..model import Release


@dataclass(frozen=True, slots=True)
class Change:
    """``release`` is the new state (``doc`` None for deletions); ``prev_revision`` is the
    revision of the previous change of the same namespace (0 if none is known)."""

    release: Release
    prev_revision: int
    _sse: list[bytes] = field(default_factory=list, compare=False, repr=False)

    @property
    def ns(self) -> str:
        return self.release.ns

    @property
    def revision(self) -> int:
        return self.release.revision

    def to_json(self) -> dict[str, Any]:
        return {**self.release.to_json(), "prev_revision": self.prev_revision}

    def sse(self) -> bytes:
        """``id/event/data`` frame, encoded once and cached."""
        if not self._sse:
            data = orjson.dumps(self.to_json())
            self._sse.append(b"id: %d\nevent: change\ndata: %s\n\n" % (self.revision, data))
        return self._sse[0]


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

    def extend(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self._items.append(change)
        while len(self._items) > self.capacity:
            dropped = self._items.popleft()
            # Keep whole transactions: the floor may only sit between revisions.
            self.floor = dropped.revision
            while self._items and self._items[0].revision == dropped.revision:
                self._items.popleft()

    def reset(self, floor: int) -> None:
        """Forget everything: only subscribers at or above ``floor`` can be caught up."""
        self._items.clear()
        self.floor = floor

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
