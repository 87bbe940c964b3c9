"""The client's local view: documents, revisions, compiled route tables, listeners.

Everything here is mutated only on the client's event loop. Readers on other
threads use the two thread-safe entry points: ``tables`` (a dict that is never
mutated after publication, replaced by one reference assignment) and the
``FallbackCache`` (locked).

Revision bookkeeping: ``revisions[ns]`` is the revision of the last change of
``ns`` the client adopted (a deletion included). A change at or below it is a
duplicate; a change whose ``prev_revision`` differs from it is a gap. The one
exception is :meth:`LocalState.replace_all` (etcd went back or is another
cluster): there lower revisions replace higher ones.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._track import Membership, choose, record_of
from .cache import CachedDoc, FallbackCache, Kind, Track
from .canary import CanaryTarget
from .errors import RouteTableError
from .names import namespace_matcher
from .revision import Revision, audit_text
from .routing import RouteTable, compile_table

__all__ = [
    "ChangeCallback",
    "ClientError",
    "ClientStatus",
    "ErrorCallback",
    "Incoming",
    "LocalState",
    "Mode",
    "NamespaceStatus",
    "Persist",
    "Verdict",
    "classify_change",
    "namespace_matcher",
    "parse_release",
]

log = logging.getLogger("configcenter_sdk.client")

ChangeCallback = Callable[[str, Mapping[str, Any] | None, int], Awaitable[None] | None]
ErrorCallback = Callable[[str, int, Exception], Awaitable[None] | None]
# persist(entry_or_removed_ns, replace_newer): schedule a snapshot write (or removal)
Persist = Callable[[CachedDoc | str, bool], None]
Verdict = Literal["apply", "duplicate", "gap"]
Mode = Literal["live", "fallback"]
_MAX_ERRORS = 32


@dataclass(frozen=True, slots=True)
class Incoming:
    """A release as received (``change`` event, ``reset`` entry or HTTP snapshot); ``doc`` None = deleted.

    ``trace_id`` / ``principal``: who wrote it and in which request (None if unknown, e.g. from disk).
    ``canary``: the record's canary object as received (None: no canary), decided on adoption (``_track``).
    """

    ns: str
    revision: int
    kind: Kind
    doc: Mapping[str, Any] | None
    prev_revision: int | None = None
    trace_id: str | None = None
    principal: str | None = None
    canary: Any = None

    def stamped_revision(self) -> Revision:
        """The revision as listeners get it: an ``int`` carrying ``trace_id`` and ``principal``."""
        return Revision(self.revision, self.trace_id, self.principal)


@dataclass(frozen=True, slots=True)
class ClientError:
    """A document the client received but could not use (e.g. a route table that does not compile)."""

    ns: str
    revision: int
    message: str
    time: float


@dataclass(frozen=True, slots=True)
class NamespaceStatus:
    """One namespace as the client holds it.

    ``source``: ``live`` (confirmed by the current subscription), ``memory``
    (received live earlier, subscription down) or ``disk`` (from a snapshot
    file, not yet confirmed). ``age_seconds``: time since a live, non-stale
    server last confirmed it. ``stale``: the client is in fallback, the server
    reported its own view stale (etcd unreachable), or the age reached ``cache_ttl``.
    ``track``: ``canary`` if the record carries a canary this instance is a member of (it runs the
    candidate, whose revision is ``candidate_revision``, the record's), else ``base`` (then
    ``candidate_revision`` is None).
    """

    revision: int
    kind: str
    source: Literal["live", "memory", "disk"]
    age_seconds: float
    stale: bool
    track: Track = "base"
    candidate_revision: int | None = None


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """Snapshot of the client's health (see :meth:`ConfigClient.status`).

    ``resets_backwards``: authoritative resets below the client's revision or
    from another etcd cluster (etcd restored from a backup, or replaced);
    ``cluster``: the etcd cluster id (hex) of the resume point, None if unknown;
    ``oversized_events``: connections dropped because a server sent an SSE line or
    event past ``max_event_bytes`` (``_sse``).
    """

    mode: Mode
    server: str | None
    revision: int
    reconnects: int
    gaps: int
    duplicates: int
    server_stale: bool
    namespaces: dict[str, NamespaceStatus]
    errors: tuple[ClientError, ...]
    resets_backwards: int = 0
    cluster: str | None = None
    oversized_events: int = 0


def _int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid {name}: {value!r}")
    return value


def parse_release(obj: object) -> Incoming:
    """Validate a Release JSON object; ``ValueError`` if it is malformed."""
    if not isinstance(obj, Mapping):
        raise ValueError("release is not a JSON object")
    ns, kind, doc = obj.get("ns"), obj.get("kind"), obj.get("doc")
    if not isinstance(ns, str) or kind not in ("routes", "config"):
        raise ValueError(f"invalid ns/kind: {ns!r}/{kind!r}")
    if obj.get("op") == "delete":
        doc = None
    elif not isinstance(doc, Mapping):
        raise ValueError(f"release of {ns} has no document")
    prev = obj.get("prev_revision")
    return Incoming(ns, _int(obj.get("revision"), "revision"), kind, doc,
                    None if prev is None else _int(prev, "prev_revision"),
                    audit_text(obj.get("trace_id")), audit_text(obj.get("principal")),
                    None if doc is None else obj.get("canary"))


def classify_change(known: int | None, stream_revision: int, change: Incoming) -> Verdict:
    """Decide what to do with a ``change`` event.

    ``duplicate``: at or below the namespace's known revision, or below the
    stream revision (already covered; *at* the stream revision is not enough:
    the namespaces of one etcd transaction share its revision). ``gap``: the namespace is known and the
    change's ``prev_revision`` is not its known revision (a change was missed;
    fetch a snapshot). ``apply`` otherwise, including namespaces never seen.
    """
    if change.revision < stream_revision or (known is not None and change.revision <= known):
        return "duplicate"
    if known is not None and change.prev_revision is not None and change.prev_revision != known:
        return "gap"
    return "apply"


class LocalState:
    """Documents + revisions + route tables; see the module docstring for the threading rules."""

    def __init__(self, cache: FallbackCache, persist: Persist | None,
                 max_regex_program_size: int | None = None) -> None:
        self.cache = cache
        self.revisions: dict[str, int] = {}
        self.tables: dict[str, RouteTable] = {}
        self.errors: deque[ClientError] = deque(maxlen=_MAX_ERRORS)
        # ns -> the newest rejection of its current revision (cleared when a newer revision is adopted)
        self.rejected: dict[str, ClientError] = {}
        self._max_regex_program_size = max_regex_program_size
        self._persist = persist
        # canary membership of this instance (``_track``); the client sets it from its identity
        self.member: Membership = _never_member
        self._by_ns: dict[str, RouteTable] = {}
        self._change_listeners: tuple[tuple[Callable[[str], bool], ChangeCallback], ...] = ()
        self._error_listeners: tuple[ErrorCallback, ...] = ()

    def add_change_listener(self, selector: str | None, callback: ChangeCallback) -> None:
        """``selector``: a namespace, a prefix ending in ``/``, or None for all (copy-on-write, thread-safe)."""
        match = namespace_matcher(() if selector is None else (selector,))
        self._change_listeners = (*self._change_listeners, (match, callback))

    def add_error_listener(self, callback: ErrorCallback) -> None:
        self._error_listeners = (*self._error_listeners, callback)

    async def adopt(
        self, release: Incoming, source: Literal["live", "disk"] = "live", stored_at: float | None = None,
        *, replace_newer: bool = False,
    ) -> bool:
        """Make ``release`` the current state of its namespace; notify listeners.

        Returns False (changing nothing) if the namespace is already at this
        revision or newer. A deletion removes document, table and snapshot.
        ``replace_newer``: the snapshot is written even over a newer one on disk.
        A record with a canary gives this instance its effective document (``_track.choose``);
        one whose canary cannot be read is rejected like a route table that does not compile:
        the revision counts as adopted, the last good document and table stay.
        """
        ns = release.ns
        known = self.revisions.get(ns)
        if known is not None and release.revision <= known:
            if release.revision == known and release.doc is not None:
                self._restamp(release, source)
            return False
        self.revisions[ns] = release.revision
        self.rejected.pop(ns, None)
        if source == "live":
            log.info("applied %s@%d (trace %s, by %s)", ns, release.revision, release.trace_id or "-",
                     release.principal or "-")
        if release.doc is None:
            had_doc = self._forget(ns)
            if had_doc:
                await self._notify(ns, None, release.stamped_revision())
            return True
        try:
            chosen = choose(release.kind, release.doc, release.canary, self.member)
        except ValueError as exc:
            await self._record_error(ns, release.revision, exc)
            return True
        stamp = self.cache.clock() if stored_at is None else stored_at
        entry = CachedDoc(ns, release.revision, chosen.kind, chosen.doc, stamp, source, chosen.track,
                          chosen.record)
        self.cache.put(entry)
        compiled = await self._compile(ns, release.revision, chosen.doc) if chosen.kind == "routes" else (
            self._drop_table(ns))
        if compiled and source == "live" and self._persist is not None:
            self._persist(entry, replace_newer)
        await self._notify(ns, chosen.doc, release.stamped_revision())
        return True

    def decide(self, entry: CachedDoc) -> CachedDoc:
        """A snapshot entry read back from disk, decided again for this instance (its record, if it
        kept one); an unreadable canary keeps the entry as written."""
        if entry.record is None:
            return entry
        try:
            chosen = choose(entry.record["kind"], entry.record["doc"], entry.record["canary"], self.member)
        except ValueError:
            return entry
        return replace(entry, kind=chosen.kind, doc=chosen.doc, track=chosen.track)

    async def drop_absent(self, present: set[str], revision: int, match: Callable[[str], bool]) -> None:
        """After a reset at ``revision``: delete every matching namespace not in ``present``.

        A namespace known at a revision above ``revision`` (newer than this
        reset, e.g. from a lagging replica) is kept.
        """
        for ns in sorted(set(self.revisions) | set(self.cache.namespaces())):
            if ns in present or not match(ns) or self.revisions.get(ns, 0) > revision:
                continue
            self.revisions.pop(ns, None)
            if self._forget(ns):
                await self._notify(ns, None, revision)

    async def replace_all(self, releases: list[Incoming], revision: int, match: Callable[[str], bool]) -> None:
        """An authoritative reset at ``revision`` (etcd went back, or is another cluster).

        ``releases`` become the state of their namespaces even where the client
        held higher revisions, and every matching namespace absent from them is
        deleted; snapshots follow (written over newer ones). Listeners hear of
        each namespace whose revision or document changed: deletions (doc None,
        at ``revision``) first, then the releases in revision order.
        """
        present = {r.ns for r in releases}
        for ns in sorted(set(self.revisions) | set(self.cache.namespaces())):
            if match(ns) and ns not in present:
                self.revisions.pop(ns, None)
                if self._forget(ns):
                    await self._notify(ns, None, revision)
        for release in sorted(releases, key=lambda r: r.revision):
            hit = self.cache.peek(release.ns)
            if (self.revisions.get(release.ns) == release.revision and hit is not None
                    and _same_record(hit.entry, release)):
                self._restamp(release, "live")
                continue
            self.revisions.pop(release.ns, None)
            self.cache.remove(release.ns)
            await self.adopt(release, replace_newer=True)

    def touch_all(self) -> None:
        """A live server confirmed the current revisions: restart every entry's age; disk entries become live."""
        now = self.cache.clock()
        for ns in self.cache.namespaces():
            hit = self.cache.peek(ns)
            if hit is not None and hit.entry.source == "disk":
                self.cache.put(replace(hit.entry, stored_at=now, source="live"))
            else:
                self.cache.touch(ns, now)

    def _restamp(self, release: Incoming, source: Literal["live", "disk"]) -> None:
        """Same revision seen again from a live server: mark the entry live and fresh."""
        hit = self.cache.peek(release.ns)
        if source == "live" and hit is not None and hit.entry.source == "disk":
            self.cache.put(replace(hit.entry, stored_at=self.cache.clock(), source="live"))

    def applied_revision(self, ns: str) -> int | None:
        """The revision of ``ns`` in use: its last adopted one, or, if that was rejected, its last good table's."""
        if ns not in self.rejected:
            return self.revisions.get(ns)
        table = self._by_ns.get(ns)
        if table is not None:
            return table.revision
        hit = self.cache.peek(ns)  # a config namespace whose canary could not be read keeps its last good one
        return hit.entry.revision if hit is not None and hit.entry.revision < self.rejected[ns].revision else None

    def _forget(self, ns: str) -> bool:
        self.rejected.pop(ns, None)
        had = self.cache.remove(ns)
        if ns in self._by_ns:
            del self._by_ns[ns]
            self._publish()
        if self._persist is not None:
            self._persist(ns, False)
        return had

    async def _compile(self, ns: str, revision: int, doc: Mapping[str, Any]) -> bool:
        """Compile off to the side; publish on success, keep the last good table on failure."""
        try:
            table = compile_table(doc, revision, max_regex_program_size=self._max_regex_program_size)
        except RouteTableError as exc:
            await self._record_error(ns, revision, exc)
            return False
        self._by_ns[ns] = table
        self._publish()
        return True

    def _drop_table(self, ns: str) -> bool:
        """The namespace's effective document is not a route table (any more): unpublish its table."""
        if self._by_ns.pop(ns, None) is not None:
            self._publish()
        return True

    def _publish(self) -> None:
        """Build the new front buffer aside, then swap it in with one assignment."""
        fresh: dict[str, RouteTable] = {}
        for table in self._by_ns.values():
            current = fresh.get(table.service)
            if current is None or table.revision > current.revision:
                fresh[table.service] = table
        self.tables = fresh

    async def _record_error(self, ns: str, revision: int, exc: Exception) -> None:
        log.error("namespace %s revision %d rejected, keeping the last good table: %s", ns, revision, exc)
        self.errors.append(ClientError(ns, revision, str(exc), time.time()))
        self.rejected[ns] = self.errors[-1]
        for callback in self._error_listeners:
            await _call(callback, ns, revision, exc)

    async def _notify(self, ns: str, doc: Mapping[str, Any] | None, revision: int) -> None:
        for match, callback in self._change_listeners:
            if match(ns):
                await _call(callback, ns, doc, revision)


def _never_member(target: CanaryTarget) -> bool:
    """Membership before the client set its identity: never a member (runs the base)."""
    return False


def _same_record(entry: CachedDoc, release: Incoming) -> bool:
    """Whether ``entry`` was adopted from the same record as ``release`` (document and canary)."""
    if entry.record is None:
        return release.canary is None and entry.doc == release.doc
    return release.doc is not None and entry.record == record_of(release.kind, release.doc, release.canary)


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    """Run a listener (awaiting it if it returns an awaitable); its exceptions are logged, never raised."""
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("listener %r failed", callback)
