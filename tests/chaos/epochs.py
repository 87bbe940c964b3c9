"""Checking consumers across etcd restores: one truth per etcd history (an *epoch*).

A restore from a backup discards every release above the backup's revision,
and etcd's new history reuses those revision numbers for other releases.  The
harness reads etcd's truth just before each restore (writer paused, nothing in
flight) and notes the backup's revision; the truth read after the run is the
last epoch's.

A consumer moves to the next epoch

* at a backwards reset (``cluster_changed``, ``revision_went_back``,
  ``resume_ahead_of_cluster``) received after the restore began: from there its
  records are checked against the new history, starting with that reset, which
  must be etcd's new state at its revision;
* or when, after the restore began, it resumes from a revision at or below the
  backup's: that part of history is common to both epochs, so the resume is a
  plain one and the stream goes on in the new history.

Before the move, records are checked against the old history, without the
final-state check (that history was cut short).  Whatever the new history would
call wrong stays wrong: a backwards reset with no restore before it, a replica
replaying releases etcd lost, a resume inside the discarded history answered
without a reset (its changes do not match the old history's).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from chaos.checker import BACKWARDS_REASONS, Match, StreamCheck, Truth
from chaos.sse_records import revision_of_id


@dataclass(frozen=True)
class Epoch:
    """One etcd history: its truth, when the restore that started it began (wall clock; 0 for the
    first) and the revision of the backup it was restored from (0 for the first)."""

    truth: Truth
    began: float = 0.0
    backup_revision: int = 0


def epoch_at(epochs: list[Epoch], t: float) -> int:
    """The index of the epoch whose restore last began at or before ``t``."""
    return max(i for i, e in enumerate(epochs) if e.began <= t)


class EpochCheck:
    """A ``StreamCheck`` that follows its consumer across restores (same ``feed``/``finish``/``stats``)."""

    def __init__(self, consumer: str, match: Match, epochs: list[Epoch], violations: list[dict[str, Any]],
                 *, started: float = 0.0) -> None:
        self.epochs = epochs
        self.index = epoch_at(epochs, started)
        self.check = StreamCheck(consumer, match, epochs[self.index].truth, violations)
        self.stats: Counter[str] = Counter()

    def feed(self, rec: dict[str, Any]) -> None:
        later = epoch_at(self.epochs, rec.get("t", 0.0))
        if later > self.index:
            if rec.get("k") == "reset" and rec.get("reason") in BACKWARDS_REASONS:
                self._enter(later, backwards_reset=True)
            elif rec.get("k") == "conn" and self._resumes_in_common_history(rec, later):
                self._enter(later, backwards_reset=False)
        self.check.feed(rec)

    def _resumes_in_common_history(self, rec: dict[str, Any], later: int) -> bool:
        since = rec.get("since")
        resumed = since if isinstance(since, int) else revision_of_id(since) if isinstance(since, str) else None
        return resumed is not None and 0 < resumed <= self.epochs[later].backup_revision

    def _enter(self, index: int, *, backwards_reset: bool) -> None:
        old = self.check
        old.finish(final=False)
        self.stats.update(old.stats)
        self.check = StreamCheck(old.consumer, old.match, self.epochs[index].truth, old.violations)
        self.check.url = old.url
        self.check.backwards_allowed = backwards_reset
        self.index = index
        self.stats["restores_followed"] += 1

    def finish(self, *, final: bool) -> None:
        last = len(self.epochs) - 1
        if final and self.index != last:
            self.check.violation("did_not_follow_restore", epoch=self.index, epochs=last + 1)
        self.check.finish(final=final and self.index == last)
        self.stats.update(self.check.stats)
