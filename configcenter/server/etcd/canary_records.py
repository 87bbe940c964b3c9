"""Canary records: how a canary's start, change, abort and promotion become releases of ``docs/<ns>``.

A canary lives inside its namespace's record (``docs/architecture.md``, "Canary releases"): the
record's ``kind``/``doc`` stay the *base* every non-member runs, and ``canary`` holds the target,
the candidate and who started or last changed it.  Each function here builds the next release from
the current one (``Store.write_from_current`` guards the write by the current record's revision, so
what a function saw is what it replaces); none of them touches etcd.

Contract
--------
* ``start``: ``NotFoundError`` for a deleted namespace is the store's; 409 if a canary is active.
  The record is stored without ``started`` (its own revision, unknown until the transaction
  commits: ``Release.from_record`` fills it in).
* ``update`` / ``abort`` / ``promote``: 409 ``no canary`` if none is active (the namespace exists).
  ``abort``: the base stays, the canary goes.  ``promote``: the candidate becomes the release for
  everyone (``kind``/``doc``), recorded with ``from_canary`` = the canary's ``started``.
* ``expect_started`` (abort on reject): the abort applies only to that canary; another one (or
  none) is a ``ConflictError`` and nothing is written.
* push and delete while a canary is active are refused by the store with :func:`active_error`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from configcenter.errors import ConflictError
from configcenter.model import Op, Origin, Release
from configcenter_sdk.canary import CanaryTarget


@dataclass(frozen=True, slots=True)
class CanaryChange:
    """What the caller asked for: the text fields of the release and who asked (the API's origin)."""

    origin: Origin
    message: str = ""
    author: str = ""


def active_error(ns: str, canary: dict[str, Any], what: str = "push to or delete") -> ConflictError:
    """409 for a write a running canary forbids (a push, a delete, a second start)."""
    started = canary.get("started")
    return ConflictError(f"namespace {ns!r} has an active canary started at revision {started}: promote or abort "
                         f"it first (you cannot {what} a namespace during a canary; a rollback ends it)",
                         namespace=ns, canary_started=started)


def no_canary(ns: str) -> ConflictError:
    return ConflictError(f"namespace {ns!r} has no active canary (start one with POST "
                         f"/v1/namespaces/{ns}/canary or 'configcenter push {ns} FILE --canary SELECTOR')",
                         namespace=ns)


def start(current: Release, version: int, change: CanaryChange, *, kind: str, doc: dict[str, Any],
          target: CanaryTarget, abort_on_reject: bool) -> Release:
    """A ``canary_start``: the base unchanged, the candidate ``doc`` for ``target``."""
    if current.canary is not None:
        raise active_error(current.ns, current.canary, "start a second canary on")
    canary = {"target": target.to_json(), "candidate": {"kind": kind, "doc": doc},
              "abort_on_reject": abort_on_reject, **_stamp(change)}
    return _next(current, version, "canary_start", change, canary=canary)


def update(current: Release, version: int, change: CanaryChange, target: CanaryTarget) -> Release:
    """A ``canary_update``: the same candidate for a new target (grow or shrink)."""
    canary = _active(current)
    return _next(current, version, "canary_update", change,
                 canary={**canary, "target": target.to_json(), **_stamp(change)})


def abort(current: Release, version: int, change: CanaryChange, expect_started: int | None = None) -> Release:
    """A ``canary_abort``: every instance back on the base, which stays the release."""
    canary = _active(current)
    if expect_started is not None and canary.get("started") != expect_started:
        raise ConflictError(f"the canary of {current.ns!r} started at {expect_started} is over "
                            f"(the active one started at {canary.get('started')})", namespace=current.ns)
    return _next(current, version, "canary_abort", change, canary=None)


def promote(current: Release, version: int, change: CanaryChange) -> Release:
    """A ``promote``: the candidate becomes the release of every instance."""
    canary = _active(current)
    candidate = canary["candidate"]
    return _next(current, version, "promote", change, canary=None, kind=str(candidate["kind"]),
                 doc=candidate["doc"], from_canary=int(canary["started"]))


def _active(current: Release) -> dict[str, Any]:
    if current.canary is None:
        raise no_canary(current.ns)
    return current.canary


def _stamp(change: CanaryChange) -> dict[str, str]:
    origin = change.origin
    return {"principal": origin.principal, "message": change.message, "trace_id": origin.trace_id}


def _next(current: Release, version: int, op: Op, change: CanaryChange, *, canary: dict[str, Any] | None,
          kind: str | None = None, doc: dict[str, Any] | None = None, from_canary: int | None = None) -> Release:
    """The release after ``current`` (revision 0 until the transaction assigns one)."""
    origin = change.origin
    return Release(current.ns, 0, version, op, kind or current.kind, doc if doc is not None else current.doc,
                   change.author, change.message, time.time(), None, origin.principal, origin.trace_id,
                   origin.client, origin.user_agent, canary=canary, from_canary=from_canary)


class CanaryWrites:
    """The canary operations as writes of ``docs/<ns>`` (``Store.canary``): each reads the current
    release, builds the next one above and writes it through the store's one write path (guards,
    release gate, size check, history entry in the same transaction)."""

    def __init__(self, write: Any) -> None:
        self._write = write  # Store.write_from_current

    async def start(self, ns: str, change: CanaryChange, *, kind: str, doc: dict[str, Any], target: CanaryTarget,
                    abort_on_reject: bool = False, if_match: int | None = None) -> Release:
        def make(current: Release, version: int) -> Release:
            return start(current, version, change, kind=kind, doc=doc, target=target, abort_on_reject=abort_on_reject)

        return await self._done(ns, make, change, if_match)

    async def update(self, ns: str, change: CanaryChange, target: CanaryTarget,
                     if_match: int | None = None) -> Release:
        return await self._done(ns, lambda current, version: update(current, version, change, target), change,
                                if_match)

    async def abort(self, ns: str, change: CanaryChange, *, if_match: int | None = None,
                    expect_started: int | None = None) -> Release:
        return await self._done(ns, lambda current, version: abort(current, version, change, expect_started),
                                change, if_match)

    async def promote(self, ns: str, change: CanaryChange, if_match: int | None = None) -> Release:
        return await self._done(ns, lambda current, version: promote(current, version, change), change, if_match)

    async def _done(self, ns: str, make: Any, change: CanaryChange, if_match: int | None) -> Release:
        release: Release = await self._write(ns, make, if_match=if_match, origin=change.origin)
        return release
