"""Validation of instance reports (``POST /v1/instances/{id}/report``): untrusted input, every field bounded.

A report is at most :data:`MAX_REPORT_BYTES` of JSON; the instance id, service and label keys are
short names, labels and namespaces are counted, reasons are cut off at :data:`MAX_REASON`. Anything
else is a 400 (``invalid_body`` / ``invalid_argument``) and nothing is written.

The ``lease`` a report (or a goodbye) presents is the record's **capability**: 32 lower-case hex
digits, the etcd lease id (16) then a random secret (16) that only the server that created the
record and its reporter ever saw. etcd hands out lease ids in sequence (a reporter that got lease
``…4c08`` can guess its neighbours ``…4c06`` and ``…4c0a``), so the id alone proves nothing; the
record stores only a digest of the secret (:func:`holder_digest`). A bare lease id (1-16 hex, what
servers before capabilities returned) still parses, with no secret: it holds only a record written
by such a server (no digest stored), and is upgraded to a capability at its next report.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from configcenter.errors import ConfigCenterError, InvalidArgumentError, InvalidBodyError, PayloadTooLargeError
from configcenter.model import validate_namespace, validate_prefix

MAX_REPORT_BYTES = 128 * 1024
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_SELECTORS = 64
MAX_NAMESPACES = 500
MAX_REASON = 1024
MAX_REVISION = 2**63 - 1
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_LEASE = re.compile(r"[0-9a-f]{32}|[0-9a-f]{1,16}")
_FIELDS = frozenset({"service", "labels", "selectors", "mode", "namespaces", "lease", "stored"})
_DIGEST = re.compile(r"[0-9a-f]{32}")
_NS_FIELDS = frozenset({"applied", "source", "rejected", "reason", "track"})
TRACKS = ("base", "canary")  # which release of a namespace with a canary the instance runs
Mode = Literal["live", "fallback"]


@dataclass(frozen=True, slots=True)
class Capability:
    """What a reporter presents to change or remove its record: the lease id and the secret."""

    lease: int
    secret: str | None  # None: a bare lease id from a server before capabilities (see module docstring)

    @classmethod
    def issue(cls, lease: int) -> Capability:
        """A fresh capability for a newly granted ``lease`` (64 random bits of secret)."""
        return cls(lease, secrets.token_hex(8))

    @property
    def text(self) -> str:
        """The wire form handed to the reporter (32 hex; a legacy one: the bare lease id)."""
        return f"{self.lease:x}" if self.secret is None else f"{self.lease:016x}{self.secret}"

    @property
    def holder(self) -> str | None:
        """The digest of the secret that the record stores (None for a legacy capability)."""
        return None if self.secret is None else holder_digest(self.secret)


def holder_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Report:
    """A validated report; ``state()`` is what gets stored (and compared) in etcd."""

    service: str
    labels: dict[str, str]
    selectors: list[str]
    mode: str
    namespaces: dict[str, dict[str, Any]]
    lease: Capability | None
    stored: str | None = None  # the digest of the report the instance last got stored (from that answer)

    def state(self, instance_id: str) -> dict[str, Any]:
        return {"id": instance_id, "service": self.service, "labels": self.labels, "selectors": self.selectors,
                "mode": self.mode, "namespaces": self.namespaces}


def instance_id(raw: str) -> str:
    if not INSTANCE_ID.fullmatch(raw):
        raise InvalidArgumentError(f"instance id {raw[:140]!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}",
                                   parameter="id")
    return raw


def capability(raw: Any, where: str = "lease") -> Capability | None:
    """The capability as the server handed it out (see the module docstring), or None."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _LEASE.fullmatch(raw):
        raise InvalidArgumentError(f"{where} must be the lease the server returned (hex)", parameter=where)
    if len(raw) == 32:
        return Capability(int(raw[:16], 16), raw[16:])
    return Capability(int(raw, 16), None)


def parse_report(raw: bytes) -> Report:
    """Parse and validate a report body (see the module docstring)."""
    if len(raw) > MAX_REPORT_BYTES:
        raise PayloadTooLargeError(f"report of {len(raw)} bytes exceeds the {MAX_REPORT_BYTES}-byte limit")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidBodyError(f"report is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidBodyError("report must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidBodyError(f"unknown report field(s): {', '.join(unknown)[:200]}", path=f"$.{unknown[0][:64]}")
    service = body.get("service")
    if not isinstance(service, str) or not _SERVICE.fullmatch(service):
        raise _bad("$.service", "service must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
    mode = body.get("mode")
    if mode not in ("live", "fallback"):
        raise _bad("$.mode", "mode must be 'live' or 'fallback'")
    stored = body.get("stored")
    if "stored" in body and (not isinstance(stored, str) or not _DIGEST.fullmatch(stored)):
        raise _bad("$.stored", "stored must be the digest of the previous answer")
    if "lease" in body and not isinstance(body["lease"], str):
        raise InvalidArgumentError("lease must be the lease the server returned (hex)", parameter="lease")
    return Report(service, _labels(body.get("labels", {})), _selectors(body.get("selectors", [])), mode,
                  _namespaces(body.get("namespaces", {})), capability(body.get("lease")), stored)


def _bad(path: str, message: str) -> InvalidBodyError:
    return InvalidBodyError(message, path=path)


def _labels(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or len(raw) > MAX_LABELS:
        raise _bad("$.labels", f"labels must be an object of at most {MAX_LABELS} entries")
    for key, value in raw.items():
        if not _LABEL_KEY.fullmatch(key):
            raise _bad("$.labels", f"label key {key[:70]!r} must match [A-Za-z0-9][A-Za-z0-9._/-]{{0,62}}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise _bad(f"$.labels.{key}", f"label values are strings of at most {MAX_LABEL_VALUE} characters")
    return dict(sorted(raw.items()))


def _selectors(raw: Any) -> list[str]:
    if not isinstance(raw, list) or len(raw) > MAX_SELECTORS or not all(isinstance(s, str) for s in raw):
        raise _bad("$.selectors", f"selectors must be a list of at most {MAX_SELECTORS} names or prefixes")
    for i, sel in enumerate(raw):
        try:
            validate_prefix(sel) if sel.endswith("/") or not sel else validate_namespace(sel)
        except ConfigCenterError as exc:
            raise _bad(f"$.selectors[{i}]", exc.message) from exc
    return sorted(set(raw))


def _namespaces(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or len(raw) > MAX_NAMESPACES:
        raise _bad("$.namespaces", f"namespaces must be an object of at most {MAX_NAMESPACES} entries")
    out: dict[str, dict[str, Any]] = {}
    for ns, entry in raw.items():
        try:
            validate_namespace(ns)
        except ConfigCenterError as exc:
            raise _bad("$.namespaces", exc.message) from exc
        out[ns] = _namespace_entry(f"$.namespaces.{ns}", entry)
    return dict(sorted(out.items()))


def _namespace_entry(path: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not set(entry) <= _NS_FIELDS:
        raise _bad(path, f"each namespace is an object with {', '.join(sorted(_NS_FIELDS))}")
    out: dict[str, Any] = {"applied": _revision(f"{path}.applied", entry.get("applied"))}
    source = entry.get("source", "live")
    if source not in ("live", "memory", "disk"):
        raise _bad(f"{path}.source", "source must be live, memory or disk")
    out["source"] = source
    track = entry.get("track", "base")
    if track not in TRACKS:
        raise _bad(f"{path}.track", "track must be base or canary")
    if track != "base":  # stored only when it says something: older reports and records stay identical
        out["track"] = track
    rejected = _revision(f"{path}.rejected", entry.get("rejected"))
    reason = entry.get("reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise _bad(f"{path}.reason", f"reason must be a string of at most {MAX_REASON} characters")
    if rejected is not None:
        out.update(rejected=rejected, reason=reason)
    return out


def _revision(path: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():  # JSON Schema's integer admits 4.0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REVISION:
        raise _bad(path, "revisions are integers >= 0")
    return value
