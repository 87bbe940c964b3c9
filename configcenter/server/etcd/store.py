"""Releases in etcd: push, delete, rollback, read current, read by revision, history.

Contract
--------
* Every write is one etcd transaction that puts (or deletes) ``docs/<ns>``
  and creates ``history/<ns>#<version>`` (``keys.py``; ``history/<ns>/<version>``
  while a prefix written by an older server is not migrated yet).  The transaction is
  guarded by ``docs/<ns>``'s ``mod_revision``, by the history key not existing and by the
  layout marker being unchanged, so two concurrent writers can never both win, a write
  racing a migration's start is retried in the new layout, and a release and its history
  entry always share one revision.
* With ``if_match`` the caller's expected revision is the guard (412 on
  mismatch, also when another writer wins the race).  Without it the store
  retries the compare-and-swap a few times: last writer wins, nothing is lost.
* Reading a past revision (``get_at``) searches only that namespace's history
  keys (``history.py``); history keys are never rewritten, so this works after
  etcd compacted that revision away.
* A release whose transaction would exceed etcd's request limit
  (``max_request_bytes``, etcd's ``--max-request-bytes``; the record is in it
  twice) is refused with ``PayloadTooLargeError`` (413) before anything is
  written: etcd would refuse it anyway, and a retry cannot help.
* Release control (``gate``, set by the runtime: ``configcenter.server.release``): the guard's round
  trip also reads the gate's keys (the freeze and review-policy records of the namespace and of each
  of its prefixes), the gate admits the built release (or refuses it: a freeze; or holds it for
  review) and the transaction compares that every one of those keys is unchanged (its
  ``mod_revision``; 0 = absent), so a freeze or policy set between the check and the write makes the
  commit fail and the retry sees it.  A failed commit is retried with ``if_match`` too: the next
  guard read tells a stale ``if_match`` (412) from a changed gate key.  ``control`` adds the
  compares and operations of an approval (the proposal unchanged, then deleted) to the same
  transaction.
* Canaries (``canary_records.py``, ``Store.canary``) are writes of ``docs/<ns>`` built from the current
  record and guarded by its revision (``write_from_current``).  A push or delete while the record
  holds a canary is 409 (decided from the record at the guard's revision: the mirror's copy,
  ``cached``, when it is that revision, else one read); a rollback's record has no canary, so it ends one.
* Every write records the caller's :class:`~configcenter.model.Origin`
  (principal, trace id, client, user agent) in both keys; the store trusts
  it as given: establishing it is the API's job.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from etcd3aio import Etcd3Client, prefix_range_end

from configcenter.errors import ConflictError, NotFoundError, PayloadTooLargeError, PreconditionFailedError
from configcenter.model import Op, Origin, Release
from configcenter.server.limits import ETCD_MAX_REQUEST_BYTES

from . import canary_records
from ._etcd3aio import Compare, rpc_pb2
from .client import KeyLayout, etcd_errors, read_range
from .history import HistoryReader, LayoutMarker

_CAS_ATTEMPTS = 16
FRESH_MARKER = {"layout": 2, "legacy": False, "copies_until": 0}  # a prefix that never had layout 1
_NOBODY = Origin()  # writes made without the API (tests, tools): no principal, no trace id
_RAFT_HEADER_BYTES = 1024  # etcd wraps the transaction in a raft request (header, user name) before measuring


@dataclass(frozen=True, slots=True)
class WriteControl:
    """What a caller adds to one write's transaction (an approval: ``approved_by``, the proposal's key
    unchanged in ``compares``, its deletion in ``ops``); the gate reads ``approved_by``."""

    approved_by: str = ""
    compares: tuple[Any, ...] = ()
    ops: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class GatedWrite:
    """A write about to commit, as the gate sees it: ``records`` maps each gate key to
    ``(mod_revision, value)`` (``(0, None)`` when absent), ``base_revision`` is the doc's mod_revision."""

    ns: str
    release: Release
    base_revision: int
    records: dict[bytes, tuple[int, bytes | None]]
    origin: Origin
    control: WriteControl


class WriteGate(Protocol):
    """Release control's hook (``configcenter.server.release.ReleaseGate``)."""

    def keys(self, ns: str) -> Sequence[bytes]:
        """The keys whose records govern writes of ``ns`` (read with the guard, compared at commit)."""
        ...

    async def admit(self, write: GatedWrite) -> Release:
        """The release to write (possibly stamped), or raise (``FrozenError``, ``HeldForReview``)."""
        ...


@dataclass(frozen=True, slots=True)
class _Guard:
    doc_revision: int
    last_version: int
    marker: LayoutMarker
    claim: bool = False  # no marker and no history seen: this write may claim layout 2
    gated: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)  # gate key -> (mod_rev, value)


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Newest-first history entries and the cursor for the next (older) page, if any."""

    entries: list[Release]
    next_before: int | None


class Store:
    """etcd-backed release store for one key prefix; see the module docstring for guarantees."""

    def __init__(self, client: Etcd3Client, layout: KeyLayout, timeout: float = 5.0,
                 max_request_bytes: int = ETCD_MAX_REQUEST_BYTES) -> None:
        self._client = client
        self.layout = layout
        self._timeout = timeout
        self._max_request_bytes = max_request_bytes
        self._fresh_checked = False
        self._history = HistoryReader(lambda: self._kv, layout, timeout)
        self.gate: WriteGate | None = None  # release control (freezes, review), set by the runtime
        self.cached: Callable[[str], Release | None] = lambda ns: None  # the mirror's copy (set by the runtime)
        self.canary = canary_records.CanaryWrites(self.write_from_current)  # start, update, abort, promote

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise RuntimeError("etcd client is not connected")
        return self._client.kv

    async def current_revision(self) -> int:
        """etcd's store revision right now (a linearizable read): proves etcd is reachable."""
        with etcd_errors("read the current revision"):
            resp = await self._kv.get(self.layout.docs_prefix, count_only=True, timeout=self._timeout)
        return int(resp.header.revision)

    async def get(self, ns: str) -> Release:
        """The current release of ``ns``; ``NotFoundError`` if it has none (never pushed or deleted)."""
        with etcd_errors(f"read {ns}"):
            resp = await self._kv.get(self.layout.doc_key(ns), timeout=self._timeout)
        if not resp.kvs:
            raise NotFoundError(f"namespace {ns!r} does not exist", namespace=ns)
        kv = resp.kvs[0]
        return Release.from_record(ns, kv.mod_revision, orjson.loads(kv.value))

    async def get_at(self, ns: str, revision: int) -> Release:
        """The release of ``ns`` written at ``revision`` (from history; works after compaction).

        Only ``ns``'s own history is searched (``keys.py``): a revision of another namespace,
        even a child's or one whose name extends this one, is ``NotFoundError``.
        """
        history = await self._history.keys(ns)
        index = await self._history.lower_bound(history, revision)
        if index < len(history.keys):
            release = await self._history.release(history, history.keys[index])
            if release is not None and release.revision == revision:
                return release
        raise NotFoundError(
            f"namespace {ns!r} has no release at revision {revision}", namespace=ns, revision=revision
        )

    async def list_releases(self, prefix: str = "") -> tuple[int, list[Release]]:
        """All current releases whose namespace starts with ``prefix``, sorted by name, and the read revision."""
        start = self.layout.docs_prefix + prefix.encode()
        with etcd_errors("list namespaces"):
            header, items = await read_range(self._kv, start, prefix_range_end(start), timeout=self._timeout)
        releases = [
            Release.from_record(self.layout.ns_of_doc_key(kv.key), kv.mod_revision, orjson.loads(kv.value))
            for kv in items
        ]
        return int(header.revision), sorted(releases, key=lambda r: r.ns)

    async def releases_under(self, target: str) -> tuple[int, list[Release]]:
        """The current releases a schema target covers, and the read revision: every name under a
        prefix target (``team/``), else only the one name (never ``teams`` or ``team/db``)."""
        if target.endswith("/"):
            return await self.list_releases(target)
        with etcd_errors(f"read {target}"):
            resp = await self._kv.get(self.layout.doc_key(target), timeout=self._timeout)
        return int(resp.header.revision), [
            Release.from_record(target, kv.mod_revision, orjson.loads(kv.value)) for kv in resp.kvs]

    async def history(self, ns: str, limit: int = 20, before: int | None = None) -> HistoryPage:
        """Releases of ``ns`` newest first, those with revision < ``before`` when given."""
        history = await self._history.keys(ns)
        if not history.keys and before is None:
            raise NotFoundError(f"namespace {ns!r} has no history", namespace=ns)
        end = len(history.keys) if before is None else await self._history.lower_bound(history, before)
        page = history.keys[max(0, end - limit):end]
        entries = sorted(await self._history.releases(history, page), key=lambda r: r.revision, reverse=True)
        more = end > limit
        return HistoryPage(entries, entries[-1].revision if more and entries else None)

    async def push(
        self, ns: str, kind: str, doc: dict[str, Any], *, author: str = "", message: str = "",
        if_match: int | None = None, op: Op = "push", from_revision: int | None = None, origin: Origin = _NOBODY,
        check: Awaitable[None] | None = None, control: WriteControl | None = None,
    ) -> Release:
        """Write a new release of ``ns`` (see module contract for concurrency and If-Match).

        ``check`` (the namespace's schema check) runs concurrently with the reads before the write,
        so its etcd read shares their round trip; nothing is written unless it succeeds.
        """
        def build(version: int) -> Release:
            return _release(ns, version, op, kind, doc, author, message, from_revision, origin)

        return await self._write(ns, build, if_match=if_match, delete=False, check=check,
                                 gate=(origin, control or WriteControl()))

    async def delete(self, ns: str, *, author: str = "", message: str = "", if_match: int | None = None,
                     origin: Origin = _NOBODY, control: WriteControl | None = None) -> Release:
        """Delete ``ns`` (its history stays and records the deletion); ``NotFoundError`` if absent."""
        current = await self.get(ns)

        def build(version: int) -> Release:
            return _release(ns, version, "delete", current.kind, None, author, message, None, origin)

        return await self._write(ns, build, if_match=if_match, delete=True, gate=(origin, control or WriteControl()))

    async def rollback(
        self, ns: str, to_revision: int, *, author: str = "", message: str = "", if_match: int | None = None,
        origin: Origin = _NOBODY, control: WriteControl | None = None,
    ) -> Release:
        """A new release whose content equals the release at ``to_revision`` (op ``rollback``)."""
        target = await self.get_at(ns, to_revision)
        if target.doc is None:
            raise ConflictError(
                f"revision {to_revision} of {ns!r} is a deletion; roll back to a push or rollback instead",
                namespace=ns, revision=to_revision,
            )
        message = message or f"rollback to revision {to_revision}"
        return await self.push(
            ns, target.kind, target.doc, author=author, message=message, if_match=if_match,
            op="rollback", from_revision=to_revision, origin=origin, control=control,
        )

    async def _write(self, ns: str, build: Any, *, if_match: int | None, delete: bool,
                     check: Awaitable[None] | None = None,
                     gate: tuple[Origin, WriteControl] = (_NOBODY, WriteControl())) -> Release:
        attempts = _CAS_ATTEMPTS  # with if_match too: the next guard read tells stale (412) from a gate change
        tried = 0
        while tried < attempts:
            if check is not None:
                guard, _ = await asyncio.gather(self._write_guard(ns), check)
                check = None
            else:
                guard = await self._write_guard(ns)
            current_rev = guard.doc_revision
            if delete and current_rev == 0:  # deleted meanwhile (a racing delete won): nothing to delete
                raise NotFoundError(f"namespace {ns!r} does not exist", namespace=ns)
            if if_match is not None and if_match != current_rev:
                raise _stale(ns, if_match, current_rev)
            release: Release = build(guard.last_version + 1)
            if release.op in ("push", "delete") and current_rev:  # a running canary must end first
                await self._refuse_during_canary(ns, current_rev)
            if self.gate is not None:
                release = await self.gate.admit(GatedWrite(ns, release, current_rev, guard.gated, *gate))
            succeeded, revision = await self._commit(ns, release, guard, delete=delete, control=gate[1])
            if succeeded:
                return Release.from_record(ns, revision, release.record())
            if guard.claim:  # the prefix has history after all: write the layout the marker says
                self._fresh_checked = True
                continue
            tried += 1
            await asyncio.sleep(random.uniform(0, 0.005))  # de-synchronise competing writers
        if if_match is not None:
            raise _stale(ns, if_match, None)
        raise ConflictError(f"gave up writing {ns!r}: {attempts} concurrent writers won first", namespace=ns)

    async def write_from_current(self, ns: str, make: Callable[[Release, int], Release], *, if_match: int | None,
                                 origin: Origin = _NOBODY) -> Release:
        """A release built by ``make(current release, version)`` (a canary op: ``canary_records``), guarded
        by the revision it was built from: a write in between makes it re-read and rebuild (or 412 with
        ``if_match``).  ``NotFoundError`` if ``ns`` does not exist."""
        for _ in range(_CAS_ATTEMPTS):
            current = await self.get(ns)
            if if_match is not None and if_match != current.revision:
                raise _stale(ns, if_match, current.revision)
            try:
                return await self._write(ns, functools.partial(make, current), if_match=current.revision,
                                         delete=False, gate=(origin, WriteControl()))
            except PreconditionFailedError:
                if if_match is not None:
                    raise
        raise ConflictError(f"gave up writing {ns!r}: {_CAS_ATTEMPTS} concurrent writers won first", namespace=ns)

    async def _refuse_during_canary(self, ns: str, revision: int) -> None:
        """409 if ``ns``'s record at ``revision`` (its mod_revision, just read) holds a canary: from the
        mirror's copy when it is that revision (a push costs no extra read), else read from etcd."""
        known = self.cached(ns)
        if known is None or known.revision != revision:
            try:
                known = await self.get(ns)
            except (ValueError, KeyError, TypeError):  # an invalid record (written around the API): no canary
                return
        if known.canary is not None:
            raise canary_records.active_error(ns, known.canary)

    async def _write_guard(self, ns: str) -> _Guard:
        """What the commit compares: ``docs/<ns>``'s mod_revision (0 if absent), the last history
        version in either layout, and the layout marker (which layout to write).

        The reads run concurrently (one round trip on the shared channel); they may see two
        revisions, which is safe: the commit's compares (the doc's mod_revision, the new history
        key absent, the marker unchanged) fail on any write between them, and the write is retried.
        """
        with etcd_errors(f"read {ns} before writing"):
            doc, history, gated = await asyncio.gather(
                self._kv.get(self.layout.doc_key(ns), keys_only=True, timeout=self._timeout),
                self._history.keys(ns),
                self._gate_records(ns),
            )
        marker = history.marker
        if history.keys:
            self._fresh_checked = True
        current = doc.kvs[0].mod_revision if doc.kvs else 0
        version = history.keys[-1].version if history.keys else 0
        return _Guard(current, version, marker, claim=not marker.exists and not self._fresh_checked, gated=gated)

    async def _gate_records(self, ns: str) -> dict[bytes, tuple[int, bytes | None]]:
        """The gate's keys of ``ns`` in one read-only transaction: key -> (mod_revision, value or None)."""
        keys = list(self.gate.keys(ns)) if self.gate is not None else []
        if not keys:
            return {}
        kv = self._kv
        resp = await kv.txn([], [kv.txn_op_get(key) for key in keys], timeout=self._timeout)
        found: dict[bytes, tuple[int, bytes | None]] = {key: (0, None) for key in keys}
        for item in resp.responses:
            for got in item.response_range.kvs:
                found[bytes(got.key)] = (int(got.mod_revision), bytes(got.value))
        return found

    async def _commit(self, ns: str, release: Release, guard: _Guard, *, delete: bool,
                      control: WriteControl | None = None) -> tuple[bool, int]:
        """One transaction: the doc, its history key (in the layout the marker says) and the compares
        of the module contract.  ``guard.claim``: the prefix looked new, so the same transaction also
        claims layout 2 (marker absent and no key under ``history/``: a compare over a range holds for
        an empty range) and writes the marker; it fails if any history exists, and the caller retries
        in layout 1.  A new prefix thus starts in layout 2 without a write of its own."""
        kv = self._kv
        doc_key, marker_key = self.layout.doc_key(ns), self.layout.migration_key
        layout_2 = guard.marker.exists or guard.claim
        hist_key = (self.layout.history_key(ns, release.version) if layout_2
                    else self.layout.legacy_history_key(ns, release.version))  # older replicas read only that
        value = orjson.dumps(release.record())
        compare = [
            _compare_mod_revision(doc_key, guard.doc_revision),
            kv.txn_compare_create_revision(hist_key, 0),
            _compare_mod_revision(marker_key, guard.marker.mod_revision),
        ]
        compare += [_compare_mod_revision(key, mod) for key, (mod, _) in guard.gated.items()]  # freeze/policy
        ops = [kv.txn_op_delete(doc_key) if delete else kv.txn_op_put(doc_key, value), kv.txn_op_put(hist_key, value)]
        if control is not None:
            compare += control.compares
            ops += control.ops
        if guard.claim:
            root = self.layout.history_root
            compare.append(Compare(result=Compare.EQUAL, target=Compare.CREATE, key=root,
                                   range_end=prefix_range_end(root), create_revision=0))
            ops.append(kv.txn_op_put(marker_key, orjson.dumps(FRESH_MARKER)))
        self._check_size(ns, rpc_pb2.TxnRequest(compare=compare, success=ops).ByteSize(), release.canary is not None)
        with etcd_errors(f"write {ns}"):
            resp = await kv.txn(compare, ops, timeout=self._timeout)
        return bool(resp.succeeded), int(resp.header.revision)

    def _check_size(self, ns: str, txn_bytes: int, canary: bool = False) -> None:
        limit = self._max_request_bytes - _RAFT_HEADER_BYTES
        if txn_bytes > limit:
            what = (("with a canary the record holds two documents, the base and the candidate, and is stored "
                     "twice: 4 documents") if canary else "its record is stored twice, in docs/ and history/")
            raise PayloadTooLargeError(
                f"the release of {ns!r} takes {txn_bytes} bytes in etcd ({what}), over etcd's request limit "
                f"etcd.max_request_bytes ({self._max_request_bytes}); make the document or the message smaller",
                namespace=ns, bytes=txn_bytes, limit=limit, canary=canary,
            )

def _release(ns: str, version: int, op: Op, kind: str, doc: dict[str, Any] | None, author: str, message: str,
             from_revision: int | None, origin: Origin) -> Release:
    """A release about to be written (revision 0 until the transaction assigns one), stamped with ``origin``."""
    return Release(ns, 0, version, op, kind, doc, author, message, time.time(), from_revision,
                   origin.principal, origin.trace_id, origin.client, origin.user_agent)


def _compare_mod_revision(key: bytes, revision: int) -> Any:
    """etcd3aio has no helper for MOD compares; a missing key has mod_revision 0."""
    return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=revision)


def _stale(ns: str, expected: int, current: int | None) -> PreconditionFailedError:
    now = f"; current revision is {current}" if current is not None else ""
    return PreconditionFailedError(
        f"If-Match revision {expected} of {ns!r} is stale{now}", namespace=ns, expected=expected, current=current
    )
