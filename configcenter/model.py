"""Data model: namespace names, document kinds and the release record.

A *release* is one write of a namespace (push, rollback, delete, or a canary's start, update,
abort or promotion: ``docs/architecture.md``, "Canary releases").  Its
``revision`` is the etcd global revision of the transaction that wrote it,
so revisions order all releases across namespaces; ``version`` counts the
releases of one namespace (1, 2, 3 …) and never restarts, not even after a
delete.  Its :class:`Origin` (principal, trace id, client address, user
agent) is stamped by the server; ``author`` is only what the client claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from .errors import InvalidNamespaceError

Kind = Literal["routes", "config"]
#: ``canary_*`` / ``promote``: canary releases (``docs/architecture.md``, "Canary releases")
Op = Literal["push", "rollback", "delete", "canary_start", "canary_update", "canary_abort", "promote"]
KINDS: tuple[str, ...] = ("routes", "config")

_SEGMENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_SEGMENTS = 4
#: Last segments that would collide with the API's sub-resources
#: (``/v1/namespaces/{ns}/history`` …), so they are not valid names.
RESERVED_LAST_SEGMENTS = frozenset({"history", "diff", "rollback", "route", "rollout", "canary", "promote"})


def validate_namespace(ns: str) -> str:
    """Return ``ns`` if it is a valid namespace name, else raise ``InvalidNamespaceError``.

    Rules: 1 to 4 segments joined by ``/``; each ``[a-z0-9][a-z0-9._-]{0,62}``;
    the last segment is not a reserved API word.
    """
    segments = ns.split("/")
    if not 1 <= len(segments) <= MAX_SEGMENTS:
        raise InvalidNamespaceError(
            f"namespace {ns!r} must have 1 to {MAX_SEGMENTS} segments separated by '/'", namespace=ns
        )
    for segment in segments:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidNamespaceError(
                f"namespace segment {segment!r} must match [a-z0-9][a-z0-9._-]{{0,62}}", namespace=ns
            )
    if segments[-1] in RESERVED_LAST_SEGMENTS:
        raise InvalidNamespaceError(
            f"namespace {ns!r} may not end in the reserved word {segments[-1]!r}", namespace=ns
        )
    return ns


def validate_prefix(prefix: str) -> str:
    """A subscription/list prefix: empty (everything) or a namespace followed by ``/``."""
    if prefix and not prefix.endswith("/"):
        raise InvalidNamespaceError(f"prefix {prefix!r} must end with '/'", prefix=prefix)
    if prefix:
        head = prefix[:-1]
        segments = head.split("/")
        if len(segments) >= MAX_SEGMENTS or not all(_SEGMENT.fullmatch(s) for s in segments):
            raise InvalidNamespaceError(f"prefix {prefix!r} is not a valid namespace prefix", prefix=prefix)
    return prefix


@dataclass(frozen=True, slots=True)
class Origin:
    """Who made a write and from where, as the server established it (never taken from the body).

    ``principal``: the token's name; ``trace_id``: from ``traceparent`` / ``X-Request-ID`` or
    generated; ``client``: the client's address; ``user_agent``: its (bounded) ``User-Agent``.
    """

    principal: str = ""
    trace_id: str = ""
    client: str = ""
    user_agent: str = ""
    # what the request may do beyond its stamp (never stored as such): the principal's role, and the
    # reason an admin gave to override a change freeze (``?override_freeze=``), for the release gate
    role: str = ""
    override_freeze: str | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """One release of a namespace, as stored in etcd and returned by the API.

    ``doc`` is ``None`` for deletions.  ``from_revision`` is set for rollbacks.
    ``author`` is free text the client *claims* (unverified); ``principal``, ``trace_id``,
    ``client`` and ``user_agent`` are the server's :class:`Origin` stamp (empty strings in
    records written before they existed, or around the API).  ``approved_by``: the principal who
    approved the change under a review policy (``principal`` is then its author);
    ``freeze_override``: the reason an admin gave to write through a change freeze.  Both are
    stored only when set.
    """

    ns: str
    revision: int
    version: int
    op: Op
    kind: str
    doc: dict[str, Any] | None
    author: str = ""
    message: str = ""
    time: float = 0.0
    from_revision: int | None = None
    principal: str = ""
    trace_id: str = ""
    client: str = ""
    user_agent: str = ""
    approved_by: str = ""
    freeze_override: str = ""
    #: the active canary (``{started, target, candidate: {kind, doc}, abort_on_reject, principal, message,
    #: trace_id}``; ``kind``/``doc`` stay the base) and, on a ``promote``, the ``started`` of the canary promoted
    canary: dict[str, Any] | None = None
    from_canary: int | None = None

    @property
    def origin(self) -> Origin:
        return Origin(self.principal, self.trace_id, self.client, self.user_agent)

    def record(self) -> dict[str, Any]:
        """The value stored in etcd (revision and ns come from the key and its mod_revision)."""
        out: dict[str, Any] = {
            "version": self.version,
            "op": self.op,
            "kind": self.kind,
            "doc": self.doc,
            "author": self.author,
            "message": self.message,
            "time": self.time,
            "principal": self.principal,
            "trace_id": self.trace_id,
            "client": self.client,
            "user_agent": self.user_agent,
        }
        if self.from_revision is not None:
            out["from_revision"] = self.from_revision
        if self.approved_by:
            out["approved_by"] = self.approved_by
        if self.freeze_override:
            out["freeze_override"] = self.freeze_override
        if self.canary is not None:
            out["canary"] = self.canary
        if self.from_canary is not None:
            out["from_canary"] = self.from_canary
        return out

    def to_json(self, *, with_doc: bool = True) -> dict[str, Any]:
        """The API form: the record plus ``ns`` and ``revision``."""
        out = {"ns": self.ns, "revision": self.revision, **self.record()}
        if not with_doc:
            out.pop("doc")
            if self.canary is not None:  # the candidate's document goes with the base's
                candidate = {k: v for k, v in self.canary["candidate"].items() if k != "doc"}
                out["canary"] = {**self.canary, "candidate": candidate}
        return out

    @classmethod
    def from_record(cls, ns: str, revision: int, record: dict[str, Any]) -> Release:
        """Inverse of :meth:`record`; raises ``KeyError``/``TypeError`` on a malformed record."""
        return cls(
            ns=ns,
            revision=revision,
            version=int(record["version"]),
            op=record["op"],
            kind=str(record["kind"]),
            doc=record.get("doc"),
            author=str(record.get("author", "")),
            message=str(record.get("message", "")),
            time=float(record.get("time", 0.0)),
            from_revision=record.get("from_revision"),
            principal=str(record.get("principal", "")),
            trace_id=str(record.get("trace_id", "")),
            client=str(record.get("client", "")),
            user_agent=str(record.get("user_agent", "")),
            approved_by=str(record.get("approved_by", "")),
            freeze_override=str(record.get("freeze_override", "")),
            canary=_canary_of(record.get("canary"), revision),
            from_canary=record.get("from_canary"),
        )


def _canary_of(canary: Any, revision: int) -> dict[str, Any] | None:
    """A stored canary with its ``started``: a ``canary_start`` record cannot know its own revision
    before its transaction commits, so it is stored without one and is the revision it was read at."""
    if not isinstance(canary, dict):
        return None
    return canary if canary.get("started") else {**canary, "started": revision}
