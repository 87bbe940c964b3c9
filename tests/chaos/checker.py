"""The consistency checker of the fault suite: did every consumer see every change once, in order?

Ground truth (``Truth``) is etcd itself, read after the run: every release ever
committed is a ``history/<ns>/<version>`` key whose ``mod_revision`` is the
release's revision (the API and the writer's transactions both write one), so
the truth includes writes whose acknowledgement was lost in a fault.  Plus the
final ``docs/`` state, and the *re-list windows*: revision ranges a replica
re-listed after its watch was compacted away, where it publishes only the
latest state of each namespace (the documented resync).

A consumer is a sequence of records (``sse_records``): connections and frames,
plus, for an SDK process, ``on_change`` calls.  ``StreamCheck`` replays them and
verifies, for every consumer:

* **order**: change ids never go below the stream position (no reordering, no
  replay after a resume); per namespace revisions strictly increase; no
  ``(ns, revision)`` twice (**duplicates**); progress/reset ids never go back;
* **chains**: a change's ``prev_revision`` equals the revision of the previous
  change of that namespace on the stream, except right after a ``reset`` that
  did not list the namespace;
* **content**: every change is a release etcd has (same op, same document
  marker), or a re-list deletion inside a re-list window; every ``reset`` is
  exactly etcd's state of the subscribed namespaces at the reset's revision;
* **completeness**: when the stream position passes revision R (a change above
  R, a progress at R or above), every release of a subscribed namespace at or
  below R was delivered, or superseded by a ``reset`` covering it, or lies in a
  re-list window; else it was **lost**;
* **final state**: at the end the stream is at etcd's final revision and its
  view equals etcd's ``docs/``;
* **SDK callbacks**: ``on_change`` fires exactly once per revision the client
  adopts (a new change, a newer ``reset`` entry, a deletion by reset, a
  snapshot loaded from disk), never twice, in increasing revision order per
  namespace, with the document that revision holds; the last call per namespace
  equals etcd's final state, and so does the client's final ``get()``;
* **canaries**: a release that carries a canary is, for an SDK, the candidate if the SDK's identity
  is a member of the canary's target (``configcenter_sdk.canary.is_member``), else the base: every
  callback, disk load and final state above is checked against that effective document, and the
  final ``status()`` track of each namespace must be what the SDK's membership says.

Violations are dicts with ``consumer``, ``kind`` and details; the report counts them.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chaos.sse_records import marker, revision_of_id

Match = Callable[[str], bool]
FRAME_KINDS = ("change", "reset", "progress", "invalid", "malformed")
# reset reasons whose revision may be below the client's: etcd was restored or replaced (``epochs``)
BACKWARDS_REASONS = frozenset({"cluster_changed", "revision_went_back", "resume_ahead_of_cluster"})
EXCEPTION_PATTERNS = ("Traceback (most recent call last)", "Task exception was never retrieved",
                      "exception was never retrieved", "Task was destroyed but it is pending")


def selector_matcher(selectors: Iterable[str]) -> Match:
    """The hub's rule: exact namespaces or ``prefix/``; no selectors = everything."""
    selectors = tuple(selectors)
    exact = frozenset(s for s in selectors if not s.endswith("/"))
    prefixes = tuple(s for s in selectors if s.endswith("/"))
    if not selectors:
        return lambda ns: True
    return lambda ns: ns in exact or ns.startswith(prefixes)


@dataclass(frozen=True, slots=True)
class Entry:
    """One release etcd committed: ``op`` is ``put`` or ``delete``; ``m`` the document marker.

    A release with a canary: ``cm`` is its candidate's marker, ``target`` its target (canonical JSON)."""

    ns: str
    rev: int
    op: str
    m: str | None
    cm: str | None = None
    target: str | None = None


@dataclass
class Truth:
    """Every release, the final ``docs/`` state and revision, and the re-list windows."""

    entries: list[Entry]
    final: dict[str, tuple[int, str | None]]
    final_rev: int
    # (replica url, low, high]: a replica re-listed over revisions (low, high] and could not replay them
    # exactly; only streams *from that replica* may skip releases there or get deletions without a release
    relist_windows: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.entries = sorted(self.entries, key=lambda e: (e.rev, e.ns))
        self.by_key = {(e.ns, e.rev): e for e in self.entries}
        # a "delete" release of a namespace that had no document deleted nothing: etcd emitted no
        # event for it, so no consumer can see it (its presence in history is a bug of its own)
        self.noop_deletes: list[Entry] = []
        self.stream_entries: list[Entry] = []
        last_op: dict[str, str] = {}
        for e in self.entries:
            if e.op == "delete" and last_op.get(e.ns, "delete") == "delete":
                self.noop_deletes.append(e)
            else:
                self.stream_entries.append(e)
            last_op[e.ns] = e.op
        self.by_ns: dict[str, list[Entry]] = defaultdict(list)
        for e in self.entries:
            self.by_ns[e.ns].append(e)
        self._revs = {ns: [e.rev for e in items] for ns, items in self.by_ns.items()}

    def matching(self, match: Match) -> list[Entry]:
        """The releases a subscriber to ``match`` must see (delivered or superseded), in revision order."""
        return [e for e in self.stream_entries if match(e.ns)]

    def state_at(self, match: Match, revision: int) -> dict[str, tuple[int, str | None]]:
        """{ns: (revision, marker)} of the matching namespaces holding a document at ``revision``."""
        state = {}
        for ns, revs in self._revs.items():
            if not match(ns):
                continue
            i = bisect.bisect_right(revs, revision)
            if i:
                e = self.by_ns[ns][i - 1]
                if e.op == "put":
                    state[ns] = (e.rev, e.m)
        return state

    def in_relist_window(self, revision: int, url: str | None) -> bool:
        """Whether the replica at ``url`` re-listed over ``revision`` (another replica's window excuses nothing)."""
        return any(u == url and lo < revision <= hi for u, lo, hi in self.relist_windows)

    def final_for(self, match: Match) -> dict[str, tuple[int, str | None]]:
        return {ns: v for ns, v in self.final.items() if match(ns)}


def entries_from_history(kvs: Iterable[Any], history_root: bytes) -> list[Entry]:
    """History key-values (etcd3aio ``KeyValue``, ``history/<ns>#<version>``, or layout 1's
    ``history/<ns>/<version>``) as entries."""
    out = []
    for kv in kvs:
        rest = kv.key[len(history_root):].decode()
        ns = rest.rpartition("#")[0] or rest.rpartition("/")[0]
        record = json.loads(kv.value)
        op = "delete" if record.get("op") == "delete" else "put"
        canary = record.get("canary") if op == "put" else None
        cm = target = None
        if isinstance(canary, dict):
            cm = marker((canary.get("candidate") or {}).get("doc"))
            target = json.dumps(canary.get("target"), sort_keys=True)
        out.append(Entry(ns, int(kv.mod_revision), op, None if op == "delete" else marker(record.get("doc")), cm,
                         target))
    return out


Member = Callable[[str], bool]  # an SDK's canary membership: target (canonical JSON) -> member?


def effective_marker(truths: Iterable[Truth], member: Member | None, ns: str, rev: int, m: str | None) -> str | None:
    """The marker an SDK with ``member`` runs for release ``(ns, rev)`` delivered with base marker ``m``:
    the candidate's if the release has a canary the SDK is a member of, else ``m`` (a marker that is not
    etcd's is left as it is: the stream check reports it)."""
    if member is None or m is None:
        return m
    for truth in truths:
        e = truth.by_key.get((ns, rev))
        if e is not None and e.m == m:
            return e.cm if e.target is not None and member(e.target) else m
    return m


def expected_track(truth: Truth, member: Member | None, ns: str, rev: int) -> str:
    e = truth.by_key.get((ns, rev))
    return "canary" if member is not None and e is not None and e.target is not None and member(e.target) else "base"


class StreamCheck:
    """Replays one consumer's records against the truth; appends to ``violations``."""

    def __init__(self, consumer: str, match: Match, truth: Truth, violations: list[dict[str, Any]]) -> None:
        self.consumer = consumer
        self.match = match
        self.truth = truth
        self.violations = violations
        self.entries = truth.matching(match)
        self.gi = 0  # entries[:gi] are accounted for
        self.delivered: set[tuple[str, int]] = set()
        self.delivered_revs: set[int] = set()
        self.resumed_at: set[int] = set()  # revisions this consumer resumed from (Last-Event-ID)
        self.pos = 0
        self.known: dict[str, int | None] = {}  # last change revision per namespace (None: unknown after reset)
        self.view: dict[str, tuple[int, str | None]] = {}
        self.expect_reset = False
        self.url: str | None = None
        self.stats: Counter[str] = Counter()
        # Only a transaction's last frame has an id: ``open_txn`` is the revision of id-less frames
        # still waiting for it; a connection lost meanwhile resumes before it and may repeat them.
        self.open_txn: int | None = None
        self.replayable: int | None = None
        # set by ``EpochCheck`` for the stream's first frame after an etcd restore: a backwards reset
        self.backwards_allowed = False

    def violation(self, kind: str, **details: Any) -> None:
        self.violations.append({"consumer": self.consumer, "kind": kind, "url": self.url, **details})

    # -- records ------------------------------------------------------------------
    def feed(self, rec: dict[str, Any]) -> None:
        k = rec.get("k")
        if k == "conn":
            since = rec.get("since")
            self.expect_reset = since in (None, 0, "0", "")
            resumed = since if isinstance(since, int) else revision_of_id(since) if isinstance(since, str) else None
            if resumed:
                self.resumed_at.add(resumed)
                if resumed > self.pos:
                    self._resume_from_elsewhere(resumed)
            self.url = rec.get("url") or self.url
            self.stats["connections"] += 1
            self.replayable, self.open_txn = self.open_txn, None
            return
        if k not in FRAME_KINDS:
            return
        self.url = rec.get("url") or self.url
        first, self.expect_reset = self.expect_reset, False
        if first and k != "reset":
            self.violation("first_frame_not_reset", frame=rec)
        if k == "change":
            self._change(rec)
            return
        if self.open_txn is not None:
            self.violation("transaction_without_id", rev=self.open_txn, next_frame=k)
            self.open_txn = None
        if k == "reset":
            self._reset(rec)
        elif k == "progress":
            self._progress(rec)
        else:
            self.violation(f"{k}_frame", frame=rec)

    def _resume_from_elsewhere(self, revision: int) -> None:
        """The consumer resumes from a point it did not reach on this stream (an SDK restarted with a
        persisted resume point and its disk snapshots): it claims etcd's state at that revision."""
        self._account(revision, inclusive=True, superseded=True)
        for ns, items in self.truth.by_ns.items():
            if self.match(ns):
                i = bisect.bisect_right([e.rev for e in items], revision)
                if i:
                    self.known[ns] = items[i - 1].rev
        self.view = self.truth.state_at(self.match, revision)
        self.pos = revision
        self.stats["resumed_from_persisted_point"] += 1

    def _change(self, rec: dict[str, Any]) -> None:
        ns, rev, prev, op, m = rec.get("ns"), rec.get("rev"), rec.get("prev"), rec.get("op"), rec.get("m")
        self.stats["changes"] += 1
        if not isinstance(ns, str) or not isinstance(rev, int):
            self.violation("malformed_change", frame=rec)
            return
        self._check_id(rev, rec)
        if not self.match(ns):
            self.violation("unsubscribed_namespace", ns=ns, rev=rev)
        if (ns, rev) in self.delivered:
            if rev == self.replayable:  # repeated after a connection lost mid-transaction: allowed
                self.stats["repeated_after_broken_transaction"] += 1
            else:
                self.violation("duplicate", ns=ns, rev=rev, pos=self.pos)
            return
        if rev < self.pos:
            self.violation("reordered", ns=ns, rev=rev, pos=self.pos)
        known = self.known.get(ns)
        if known is not None and rev <= known:
            self.violation("namespace_revision_not_increasing", ns=ns, rev=rev, previous=known)
        elif known is not None and prev is not None and prev != known:
            self.violation("prev_revision_chain_broken", ns=ns, rev=rev, prev_revision=prev, last_seen=known)
        self._check_content(ns, rev, op, m)
        self._account(rev, inclusive=False)
        self.delivered.add((ns, rev))
        self.delivered_revs.add(rev)
        self.known[ns] = rev
        if op == "delete":
            self.view.pop(ns, None)
        else:
            self.view[ns] = (rev, m)
        self.pos = max(self.pos, rev)

    def _check_id(self, rev: int, rec: dict[str, Any]) -> None:
        """Frames of one revision: all but the last without id, the last with the revision as id."""
        pos = rec.get("pos")
        if self.open_txn is not None and rev != self.open_txn:
            self.violation("transaction_without_id", rev=self.open_txn, next_rev=rev)
        if pos is None and rec.get("id") is None:
            self.open_txn = rev
            return
        if pos != rev:
            self.violation("id_revision_mismatch", rev=rev, id=rec.get("id"))
        self.open_txn = None

    def _check_content(self, ns: str, rev: int, op: Any, m: Any) -> None:
        entry = self.truth.by_key.get((ns, rev))
        if op == "delete":
            if entry is not None and entry.op == "delete":
                return
            if entry is None and self.truth.in_relist_window(rev, self.url) and ns not in self.truth.state_at(
                    lambda n: n == ns, rev):
                self.stats["relist_deletions"] += 1
                return
            self.violation("phantom_delete", ns=ns, rev=rev, etcd=entry and entry.op)
            return
        if entry is None or entry.op != "put" or entry.m != m:
            self.violation("wrong_content", ns=ns, rev=rev, op=op, marker=m,
                           etcd=None if entry is None else [entry.op, entry.m])

    def _reset(self, rec: dict[str, Any]) -> None:
        r = rec.get("pos")
        self.stats["resets"] += 1
        if not isinstance(r, int):
            self.violation("malformed_reset", frame={k: v for k, v in rec.items() if k != "ns"})
            return
        if rec.get("reason") in BACKWARDS_REASONS and not self.backwards_allowed:
            self.violation("backwards_reset_without_restore", id=r, reason=rec.get("reason"), pos=self.pos)
        self.backwards_allowed = False
        if r < self.pos:
            self.violation("reset_id_went_back", id=r, pos=self.pos, reason=rec.get("reason"))
        snapshot = {ns: (v[0], v[1]) for ns, v in (rec.get("ns") or {}).items()}
        for ns in snapshot:
            if not self.match(ns):
                self.violation("unsubscribed_namespace_in_reset", ns=ns, id=r)
        expected = self.truth.state_at(self.match, r)
        if snapshot != expected:
            self.violation("reset_is_not_etcd_state_at_its_revision", id=r, reason=rec.get("reason"),
                           differences=_diff(snapshot, expected), state_of_revision=self._find_state(snapshot, r))
        self._account(r, inclusive=True, superseded=True)
        for ns in list(self.known):
            if ns not in snapshot:
                self.known[ns] = None
        for ns, (rev, _) in snapshot.items():
            self.known[ns] = rev
        self.view = {ns: v for ns, v in snapshot.items() if self.match(ns)}
        self.pos = max(self.pos, r)

    def _find_state(self, snapshot: dict[str, tuple[int, str | None]], upto: int) -> int | None:
        """The newest revision <= ``upto`` whose etcd state equals ``snapshot`` (diagnostics only)."""
        revs = sorted({e.rev for e in self.entries if e.rev <= upto}, reverse=True)[:400]
        for rev in revs:
            if self.truth.state_at(self.match, rev) == snapshot:
                return rev
        return None

    def _progress(self, rec: dict[str, Any]) -> None:
        p = rec.get("pos")
        self.stats["progress"] += 1
        if not isinstance(p, int):
            self.violation("malformed_progress", frame=rec)
            return
        if p < self.pos:
            self.violation("progress_id_went_back", id=p, pos=self.pos)
            return
        self._account(p, inclusive=True)
        self.pos = p

    def _account(self, limit: int, *, inclusive: bool, superseded: bool = False) -> None:
        """Every matching release below (or at) ``limit`` must have been delivered or be excused."""
        entries = self.entries
        while self.gi < len(entries) and (entries[self.gi].rev < limit
                                          or (inclusive and entries[self.gi].rev == limit)):
            e = entries[self.gi]
            self.gi += 1
            if (e.ns, e.rev) in self.delivered:
                self.stats["delivered"] += 1
            elif superseded:
                self.stats["superseded_by_reset"] += 1
            elif self.truth.in_relist_window(e.rev, self.url):
                self.stats["superseded_by_relist"] += 1
            else:
                # the consumer got part of this revision's transaction, then resumed from its id
                mid_transaction = e.rev in self.resumed_at and e.rev in self.delivered_revs
                self.violation("lost", ns=e.ns, rev=e.rev, op=e.op, marker=e.m, pos=self.pos, passed_by=limit,
                               resumed_mid_transaction=mid_transaction)

    def finish(self, *, final: bool) -> None:
        """End of the records.  ``final``: the consumer ran until the system was quiet."""
        if not final:
            return
        self._account(self.pos, inclusive=True)
        if self.pos < self.truth.final_rev:
            self.violation("not_caught_up", pos=self.pos, etcd_revision=self.truth.final_rev)
            self._account(self.truth.final_rev, inclusive=True)
        expected = self.truth.final_for(self.match)
        if self.view != expected:
            self.violation("final_state_differs", differences=_diff(self.view, expected))


def _diff(got: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    return {ns: {"got": got.get(ns), "etcd": want.get(ns)}
            for ns in sorted(set(got) | set(want)) if got.get(ns) != want.get(ns)}


@dataclass(slots=True)
class _Expected:
    """An ``on_change`` call the client owes, and the model state to restore if it never comes."""

    ns: str
    rev: int
    m: str | None
    known_before: int | None
    had_doc_before: bool
    same_revision: bool = False  # a change at the revision of the change just before it (same transaction)

    @property
    def call(self) -> tuple[str, int, str | None]:
        return self.ns, self.rev, self.m


class CallbackCheck:
    """The SDK's ``on_change`` calls of one process incarnation, against the frames it processed.

    The expected calls per frame follow the SDK's documented contract: a change
    above the namespace's revision and not below the stream's is adopted (the
    namespaces of one transaction share a revision); a ``reset`` adopts every
    newer entry (in revision order) and deletes the namespaces it does not list
    (unless known above the reset's revision); a deletion calls back only if the
    client held a document.  Calls before the first frame are snapshots loaded
    from disk.  When an expected call does not come the model follows the client
    (it did not adopt that revision), so one miss is reported once.
    """

    def __init__(self, consumer: str, match: Match, truth: Truth, violations: list[dict[str, Any]],
                 corrupted: Iterable[str] = (), missed_same_revision: set[tuple[str, int]] | None = None,
                 final_truth: Truth | None = None, member: Member | None = None) -> None:
        """``truth``: etcd's history when the process started (its disk snapshots come from it);
        ``final_truth``: the one its final state is checked against, if etcd was restored since;
        ``member``: the SDK's canary membership (None: it runs every record's base)."""
        self.consumer = consumer
        self.member = member
        self.match = match
        self.truth = truth
        self.final_truth = final_truth or truth
        self.violations = violations
        self.corrupted = set(corrupted)
        self.known: dict[str, int] = {}
        self.has_doc: dict[str, bool] = {}
        self.stream_rev = 0
        self.expected: deque[_Expected] = deque()
        self.last_cb: dict[str, tuple[int, str | None]] = {}
        self.order: dict[str, int] = {}  # revision of the last call per namespace in etcd's current history
        # same-revision changes the client missed, shared by the incarnations of one process (a
        # persisted resume point carries a miss over a restart)
        self.missed_same_revision = set() if missed_same_revision is None else missed_same_revision
        self.phase = "disk"
        self.skip_until_next_frame = False
        self.stats: Counter[str] = Counter()

    def violation(self, kind: str, **details: Any) -> None:
        self.violations.append({"consumer": self.consumer, "kind": kind, **details})

    def feed(self, rec: dict[str, Any]) -> None:
        k = rec.get("k")
        if k == "conn":
            since = rec.get("since")
            resumed = since if isinstance(since, int) else revision_of_id(since) if isinstance(since, str) else None
            self.stream_rev = max(self.stream_rev, resumed or 0)
        elif k == "cb":
            self._callback(rec["ns"], rec["rev"], rec.get("m"))
        elif k == "fetch":
            self._fetched(rec)
        elif k in FRAME_KINDS:
            self._missing(len(self.expected))
            self.phase = "live"
            self.skip_until_next_frame = False
            if k == "change":
                self._change(rec)
            elif k == "reset":
                self._reset(rec)
            elif k == "progress" and isinstance(rec.get("pos"), int):
                self.stream_rev = max(self.stream_rev, rec["pos"])

    def _missing(self, count: int) -> None:
        """The first ``count`` expected calls did not happen: report them and undo them in the model."""
        missed = [self.expected.popleft() for _ in range(count)]
        for e in reversed(missed):
            if e.known_before is None:
                self.known.pop(e.ns, None)
            else:
                self.known[e.ns] = e.known_before
            self.has_doc[e.ns] = e.had_doc_before
        for e in missed:
            if e.same_revision:
                self.missed_same_revision.add((e.ns, e.rev))
            self.violation("callback_missing", ns=e.ns, rev=e.rev, marker=e.m, same_revision=e.same_revision)

    def _callback(self, ns: str, rev: int, m: str | None) -> None:
        self.stats["callbacks"] += 1
        previous = self.order.get(ns)
        if previous is not None and rev <= previous:
            self.violation("callback_not_increasing", ns=ns, rev=rev, previous=previous)
        self.order[ns] = rev
        self.last_cb[ns] = (rev, m)
        if not self.match(ns):
            self.violation("callback_for_unsubscribed_namespace", ns=ns, rev=rev)
        if self.phase == "disk":
            self.stats["disk_loads"] += 1
            entry = self.truth.by_key.get((ns, rev))
            if ns in self.corrupted:
                self.violation("corrupt_snapshot_loaded", ns=ns, rev=rev)
            want = None if entry is None else self._effective(ns, rev, entry.m)
            if m is None or entry is None or entry.op != "put" or want != m:
                self.violation("disk_snapshot_content_wrong", ns=ns, rev=rev, marker=m,
                               etcd=None if entry is None else [entry.op, entry.m])
            self.known[ns] = rev
            self.has_doc[ns] = m is not None
            return
        if self.skip_until_next_frame:
            return
        index = next((i for i, e in enumerate(self.expected) if e.call == (ns, rev, m)), None)
        if index is None:
            self.violation("unexpected_callback", got=[ns, rev, m], expected=[list(e.call) for e in self.expected])
            self.known[ns] = max(self.known.get(ns, 0), rev)
            self.has_doc[ns] = m is not None
            return
        self._missing(index)
        self.expected.popleft()

    def _effective(self, ns: str, rev: int, m: str | None) -> str | None:
        return effective_marker((self.truth, self.final_truth), self.member, ns, rev, m)

    def _adopt(self, ns: str, rev: int, m: str | None, *, delete: bool, same_revision: bool = False) -> None:
        m = self._effective(ns, rev, m)
        before = self.known.get(ns), self.has_doc.get(ns, False)
        self.known[ns] = rev
        if not delete or self.has_doc.get(ns):
            self.expected.append(_Expected(ns, rev, None if delete else m, *before, same_revision=same_revision))
        self.has_doc[ns] = not delete

    def _change(self, rec: dict[str, Any]) -> None:
        ns, rev = rec.get("ns"), rec.get("rev")
        if not isinstance(ns, str) or not isinstance(rev, int):
            return
        known = self.known.get(ns)
        # the contract, not the implementation: a change is new unless the namespace is already at or
        # above it, or the stream is past it; other namespaces of the same transaction share its revision
        if rev < self.stream_rev or (known is not None and rev <= known):
            self.stats["dropped_duplicates"] += 1
            return
        self._adopt(ns, rev, rec.get("m"), delete=rec.get("op") == "delete", same_revision=rev == self.stream_rev)
        self.stream_rev = max(self.stream_rev, rev)

    def _fetched(self, rec: dict[str, Any]) -> None:
        """A gap re-read: the client adopts the release it read if that is newer than the change that
        revealed the gap (which it then ignores as older)."""
        ns, rev, m = rec.get("ns"), rec.get("rev"), rec.get("m")
        if not isinstance(ns, str) or not isinstance(rev, int) or rev <= self.known.get(ns, 0):
            return
        m = self._effective(ns, rev, m)
        pending = self.expected[-1] if self.expected and self.expected[-1].ns == ns else None
        if pending is not None:
            pending.rev, pending.m = rev, m
        else:
            self.expected.append(_Expected(ns, rev, m, self.known.get(ns), self.has_doc.get(ns, False)))
        self.known[ns] = rev
        self.has_doc[ns] = m is not None

    def _reset(self, rec: dict[str, Any]) -> None:
        r = rec.get("pos")
        if not isinstance(r, int):
            return
        snapshot = rec.get("ns") or {}
        if rec.get("reason") in BACKWARDS_REASONS or r < self.stream_rev:
            # the SDK replaces its state outright (the stream check reports the backwards reset itself);
            # the revisions of etcd's new history start again below the old ones
            self.order = {}
            self.known = {ns: v[0] for ns, v in snapshot.items()}
            self.has_doc = {ns: True for ns in snapshot}
            self.stream_rev = r
            self.skip_until_next_frame = True
            return
        for ns, (rev, m) in sorted(snapshot.items(), key=lambda item: item[1][0]):
            if rev > self.known.get(ns, -1):
                self._adopt(ns, rev, m, delete=False)
        for ns in sorted(set(self.known) | {n for n, held in self.has_doc.items() if held}):
            if ns in snapshot or not self.match(ns) or self.known.get(ns, 0) > r:
                continue
            before = self.known.pop(ns, None), self.has_doc.get(ns, False)
            if self.has_doc.get(ns):
                self.expected.append(_Expected(ns, r, None, *before))
            self.has_doc[ns] = False
        self.stream_rev = max(self.stream_rev, r)

    def finish(self, final_state: dict[str, list[Any]] | None, *, exited: bool = False) -> None:
        """``exited``: the process was stopped or killed and started again.  Calls owed for the
        frames after its last callback were cut by the exit (SIGKILL between receiving a change
        and calling back), not lost: the resume point moves only after applying, so the next
        incarnation receives them again, and the last one's final state is checked against etcd."""
        if exited:
            self.stats["callbacks_cut_by_exit"] += len(self.expected)
            self.expected.clear()
        self._missing(len(self.expected))
        if final_state is None:
            return
        expected = {ns: (rev, self._effective(ns, rev, m))
                    for ns, (rev, m) in self.final_truth.final_for(self.match).items()}
        self._check_tracks(final_state)
        by_callbacks = {ns: v for ns, v in self.last_cb.items() if v[1] is not None}
        got = {ns: (v[0], v[1]) for ns, v in final_state.items()}
        for kind, state in (("callbacks_final_state_differs", by_callbacks), ("sdk_final_state_differs", got)):
            if state != expected:
                differences = _diff(state, expected)
                # every difference is a namespace whose final release was a same-revision change it missed
                explained = all(want is not None and (ns, want[0]) in self.missed_same_revision
                                for ns, want in ((ns, d["etcd"]) for ns, d in differences.items()))
                self.violation(kind, differences=differences, missed_same_revision_change=explained)


    def _check_tracks(self, final_state: dict[str, list[Any]]) -> None:
        """The final ``status()`` track of each namespace is what the SDK's membership says."""
        for ns, held in sorted(final_state.items()):
            if len(held) < 3 or not isinstance(held[0], int):
                continue  # a driver that does not record tracks
            self.stats["tracks_checked"] += 1
            want = expected_track(self.final_truth, self.member, ns, held[0])
            if held[2] != want:
                self.violation("sdk_track_differs", ns=ns, rev=held[0], track=held[2], membership_says=want)


def split_incarnations(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """An SDK driver's records, one list per process start."""
    runs: list[list[dict[str, Any]]] = []
    for rec in records:
        if rec.get("k") == "start" or not runs:
            runs.append([])
        runs[-1].append(rec)
    return runs


def scan_log(name: str, text: str, violations: list[dict[str, Any]]) -> int:
    """Unhandled exceptions in a process log (with the lines before them for context)."""
    lines = text.splitlines()
    found = 0
    last = -100
    for i, line in enumerate(lines):
        if any(p in line for p in EXCEPTION_PATTERNS):
            if i - last < 25:  # the same report (chained exceptions, "never retrieved" + its traceback)
                continue
            last = i
            found += 1
            # lines capped, so long log lines (audit JSON) cannot push the exception itself out
            excerpt = "\n".join(text[:400] for text in lines[max(0, i - 3): i + 25])
            violations.append({"consumer": name, "kind": "exception_in_log", "line": i + 1, "excerpt": excerpt})
    return found
