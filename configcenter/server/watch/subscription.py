"""What the hub keeps per subscriber and per published batch (``hub.py`` holds the contract).

Split from ``hub.py`` to keep that module about the fan-out and the stream's life.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from configcenter_sdk import wire

from ._sse_channel import Body, SseChannel
from ._stream_limits import Ticket
from ._wakeup import Wakeup
from .changes import Change, sse_frames

Matcher = Callable[[str], bool]
NO_RESUME_POINT = wire.NO_RESUME_POINT
RING_EXPIRED = wire.RING_EXPIRED
QUEUE_OVERFLOW = wire.QUEUE_OVERFLOW
RESUME_AHEAD = wire.RESUME_AHEAD
BACKWARDS = wire.BACKWARDS_REASONS  # resets whose revision may be below the client's


@dataclass(frozen=True, slots=True)
class InvalidNotice:
    """A record in etcd that could not be parsed; sent as an ``invalid`` event (no id)."""

    ns: str
    revision: int
    error: str

    def sse(self) -> bytes:
        data = orjson.dumps({"ns": self.ns, "revision": self.revision, "error": self.error})
        return b"event: %s\ndata: %s\n\n" % (wire.EVENT_INVALID.encode(), data)


Item = Change | InvalidNotice


@dataclass(eq=False, slots=True)
class Shared:
    """What one set of selectors gets of a published batch, encoded once for all its subscribers."""

    items: list[Item]
    body: Body
    top: int  # highest change revision in ``items`` (0 if only notices)
    lowest: float  # lowest change revision (inf if only notices): a floor below it filters nothing
    written: int = 0  # subscribers it was written to directly

    @classmethod
    def of(cls, match: Matcher, items: Sequence[Item]) -> Shared | None:
        selected = [i for i in items if match(i.ns)]
        if not selected:
            return None
        revisions = [i.revision for i in selected if isinstance(i, Change)]
        return cls(selected, Body(sse_frames(selected)), max(revisions, default=0),
                   min(revisions, default=float("inf")))


UNSEEN = Shared([], Body(b""), 0, 0)  # marks selectors not yet looked at in this batch


@dataclass(eq=False, slots=True)
class Subscription:
    match: Matcher
    limit: int
    channel: SseChannel | None = None
    queue: list[Item] = field(default_factory=list)  # taken whole by the sender; a list is 10x smaller than a deque
    wakeup: Wakeup = field(default_factory=Wakeup)  # ~1 KiB smaller than an asyncio.Event
    needs_reset: str | None = None  # the reason of a pending reset
    floor: int = 0  # nothing at or below this revision is sent any more
    selectors: tuple[str, ...] = ()  # what ``match`` was built from: equal selectors share a selection
    ticket: Ticket = ()  # the per-client counts it holds a place in (``_stream_limits``)

    def selection(self, items: Sequence[Item]) -> list[Item]:
        """The items this subscriber is to get (its namespaces, above its floor)."""
        return [i for i in items if self.match(i.ns) and (isinstance(i, InvalidNotice) or i.revision > self.floor)]

    def writable_channel(self) -> SseChannel | None:
        """The channel, if nothing is waiting to go before new items (they may be written directly)."""
        return self.channel if not self.queue and self.needs_reset is None else None

    def offer(self, matching: list[Item]) -> bool:
        """Queue ``matching``; on overflow drop the backlog and ask for a reset (returns False)."""
        if len(self.queue) + len(matching) > self.limit:
            self.reset(QUEUE_OVERFLOW)
            return False
        self.queue.extend(matching)
        self.wakeup.set()
        return True

    def reset(self, reason: str) -> None:
        """Drop the backlog; the next thing sent is a reset (a backwards reason wins over overflow)."""
        self.queue.clear()
        if self.needs_reset is None or reason in BACKWARDS:
            self.needs_reset = reason
        self.wakeup.set()


def top_revision(items: Sequence[Item]) -> int:
    """The highest change revision among ``items`` (0 if only notices)."""
    return max((i.revision for i in items if isinstance(i, Change)), default=0)
