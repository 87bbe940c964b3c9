"""Which release of a namespace this instance runs: the record's document (base) or its canary's candidate.

A release record may carry ``canary`` (``docs/architecture.md``, "Canary releases"): ``{"started": R,
"target": {...}, "candidate": {"kind": ..., "doc": {...}}, ...}``.  The record's own ``kind``/``doc``
stay the base.  An instance that :func:`configcenter_sdk.canary.is_member` of the target (by its
instance id and labels, the identity it reports) runs the candidate, every other one the base; the
decision is made here, on every adoption of a record, from the record alone, so a resumed stream, a
reset snapshot, a gap re-read and a snapshot loaded from disk all decide the same way.

A canary that cannot be read (target or candidate malformed) raises ``ValueError``: the client treats
the record like one whose route table does not compile (keeps the last good document, records and
reports the rejection).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from .cache import Kind, Track
from .canary import CanaryTarget, is_member, parse_target

__all__ = ["Chosen", "Membership", "Track", "choose", "membership", "record_of"]

Membership = Callable[[CanaryTarget], bool]
_KINDS = ("routes", "config")


@dataclass(frozen=True, slots=True)
class Chosen:
    """What an instance runs of one record: ``kind``/``doc`` (the effective document), its ``track``,
    and ``record`` — the record as received (``{kind, doc, canary}``) when it carries a canary, else
    None — which the snapshot keeps so a restarted client decides again."""

    kind: Kind
    doc: Mapping[str, Any]
    track: Track
    record: Mapping[str, Any] | None


def membership(instance_id: str, labels: Mapping[str, str]) -> Membership:
    """The membership test of the instance ``instance_id`` with ``labels`` (its reported identity)."""
    frozen = dict(labels)
    return lambda target: is_member(target, instance_id, frozen)


def record_of(kind: str, doc: Mapping[str, Any], canary: object) -> Mapping[str, Any] | None:
    """The record to keep with an entry: None without a canary."""
    return None if canary is None else {"kind": kind, "doc": doc, "canary": canary}


def choose(kind: Kind, doc: Mapping[str, Any], canary: object,
           member: Membership) -> Chosen:
    """The effective document of a record (``kind``, ``doc``, raw ``canary`` or None) for an instance
    whose membership test is ``member``; ``ValueError`` naming the field if the canary is malformed."""
    if canary is None:
        return Chosen(kind, doc, "base", None)
    target, candidate_kind, candidate = _parse(canary)
    record = record_of(kind, doc, canary)
    if member(target):
        return Chosen(candidate_kind, candidate, "canary", record)
    return Chosen(kind, doc, "base", record)


def _parse(canary: object) -> tuple[CanaryTarget, Kind, Mapping[str, Any]]:
    if not isinstance(canary, Mapping):
        raise ValueError("canary must be an object")
    started = canary.get("started")
    if isinstance(started, bool) or not isinstance(started, int) or started < 0:
        raise ValueError(f"canary.started must be a revision, got {started!r}")
    try:
        target = parse_target(canary.get("target"))
    except ValueError as exc:
        raise ValueError(f"canary {exc}") from None
    candidate = canary.get("candidate")
    if not isinstance(candidate, Mapping) or candidate.get("kind") not in _KINDS:
        raise ValueError("canary.candidate must be an object with kind routes or config")
    body = candidate.get("doc")
    if not isinstance(body, Mapping):
        raise ValueError("canary.candidate.doc must be an object")
    return target, cast(Kind, candidate["kind"]), body
