"""Per-namespace schemas in etcd: set, delete, read, history, and the check of every ``config`` push.

Contract
--------
* ``schemas/<target>`` holds the current schema record of a target (a namespace or a ``prefix/``,
  see ``configcenter/schema_rules.py``); ``schema-history/<target>#<version:012d>`` every release
  of it, written in the same transaction (guarded like documents: the current key's
  ``mod_revision`` and the history key not existing), so history survives compaction.
  ``#`` cannot occur in a namespace, so one target's history never mixes with another's.
* Setting a schema checks every current ``config`` document it would govern; violations refuse
  the write with ``ConflictError`` (409) listing them, unless ``force``.  The transaction also
  compares that no document under the target changed since they were read, so a push racing
  the check cannot slip a violating document in (it retries instead).
* The mirror does not see these keys.  ``governing_validator`` (called on every ``config`` push)
  reads the keys and mod revisions of ``schemas/`` (one small keys-only range read) and reuses
  the compiled validators of unchanged schemas, so every worker and replica validates against
  the schemas as etcd has them right now, and compiles each schema once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from etcd3aio import Etcd3Client, prefix_range_end

from configcenter.errors import ConflictError, NotFoundError, PreconditionFailedError
from configcenter.model import Origin, Release
from configcenter.schema_rules import check_schema, governing, validate_config, violations
from configcenter.server.etcd import Compare, KeyLayout, etcd_errors, read_range

_CAS_ATTEMPTS = 8
DocsReader = Callable[[str], Awaitable[tuple[int, list[Release]]]]
Offload = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SchemaRelease:
    """One release of a target's schema (``schema`` None for a deletion)."""

    target: str
    revision: int
    version: int
    op: str  # "set" | "delete"
    schema: dict[str, Any] | None
    message: str = ""
    author: str = ""
    time: float = 0.0
    principal: str = ""
    trace_id: str = ""

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "op": self.op, "schema": self.schema, "message": self.message,
                "author": self.author, "time": self.time, "principal": self.principal, "trace_id": self.trace_id}

    def to_json(self, *, with_schema: bool = True) -> dict[str, Any]:
        out = {"target": self.target, "revision": self.revision, **self.record()}
        if not with_schema:
            out.pop("schema")
        return out

    @classmethod
    def from_record(cls, target: str, revision: int, record: dict[str, Any]) -> SchemaRelease:
        return cls(target, revision, int(record["version"]), str(record["op"]), record.get("schema"),
                   str(record.get("message", "")), str(record.get("author", "")), float(record.get("time", 0.0)),
                   str(record.get("principal", "")), str(record.get("trace_id", "")))


@dataclass(frozen=True, slots=True)
class SchemaWrite:
    """What a set or delete asks for."""

    target: str
    schema: dict[str, Any] | None  # None: delete
    message: str = ""
    author: str = ""
    origin: Origin = field(default_factory=Origin)
    if_match: int | None = None
    force: bool = False


class SchemaStore:
    """Schemas under one key prefix (see the module contract)."""

    def __init__(self, client: Etcd3Client, layout: KeyLayout, timeout: float = 5.0) -> None:
        self._client = client
        self._layout = layout
        self.current_prefix = layout.schemas_prefix
        self._timeout = timeout
        self._validators: dict[str, tuple[int, Any]] = {}  # target -> (mod_revision, compiled validator)

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise RuntimeError("etcd client is not connected")
        return self._client.kv

    def _key(self, target: str) -> bytes:
        return self._layout.schema_key(target)

    def _history_key(self, target: str, version: int) -> bytes:
        return self._layout.schema_history_key(target, version)

    async def list_schemas(self) -> tuple[int, list[SchemaRelease]]:
        """Every current schema, sorted by target, and the revision of the read."""
        start = self.current_prefix
        with etcd_errors("list schemas"):
            header, items = await read_range(self._kv, start, prefix_range_end(start), timeout=self._timeout)
        found = [SchemaRelease.from_record(kv.key[len(start):].decode(), kv.mod_revision, orjson.loads(kv.value))
                 for kv in items]
        return int(header.revision), sorted(found, key=lambda s: s.target)

    async def get(self, target: str) -> SchemaRelease:
        with etcd_errors(f"read the schema of {target}"):
            resp = await self._kv.get(self._key(target), timeout=self._timeout)
        if not resp.kvs:
            raise NotFoundError(f"no schema is registered for {target!r}", target=target)
        return SchemaRelease.from_record(target, resp.kvs[0].mod_revision, orjson.loads(resp.kvs[0].value))

    async def history(self, target: str) -> list[SchemaRelease]:
        """Every release of the schema of ``target``, newest first."""
        start = self._layout.schema_history_prefix(target)
        with etcd_errors(f"read the schema history of {target}"):
            _, items = await read_range(self._kv, start, prefix_range_end(start), timeout=self._timeout)
        entries = [SchemaRelease.from_record(target, kv.mod_revision, orjson.loads(kv.value)) for kv in items]
        if not entries:
            raise NotFoundError(f"no schema was ever registered for {target!r}", target=target)
        return sorted(entries, key=lambda s: s.revision, reverse=True)

    async def check_push(self, ns: str, kind: str, doc: dict[str, Any], offload: Offload) -> None:
        """``SchemaViolationError`` (422) if ``doc``, a document about to be pushed to ``ns``, breaks the
        schema governing ``ns``; only ``config`` documents are checked.  Owned by the runtime, so every
        push is checked however the application's routes were assembled."""
        if kind != "config":
            return
        found = await self.governing_validator(ns, offload)
        if found is not None:
            target, validator = found
            await offload(validate_config, ns, target, validator, doc)

    async def governing_validator(self, ns: str, offload: Offload) -> tuple[str, Any] | None:
        """(target, compiled validator) of the schema governing ``ns`` now, or None (see module contract)."""
        revisions = await self._targets()
        for stale in set(self._validators) - set(revisions):
            del self._validators[stale]
        target = governing(ns, revisions)
        if target is None:
            return None
        cached = self._validators.get(target)
        if cached is None or cached[0] != revisions[target]:
            release = await self.get(target)
            if release.schema is None:
                return None
            validator = await offload(check_schema, release.schema, target)  # compiled off the event loop
            cached = self._validators[target] = (release.revision, validator)
        return target, cached[1]

    async def _targets(self) -> dict[str, int]:
        """target -> mod_revision of every current schema (keys only: small and fast)."""
        start = self.current_prefix
        with etcd_errors("read the schemas"):
            _, keys = await read_range(self._kv, start, prefix_range_end(start), keys_only=True, timeout=self._timeout)
        return {kv.key[len(start):].decode(): kv.mod_revision for kv in keys}

    async def write(self, request: SchemaWrite, read_docs: DocsReader,
                    offload: Offload) -> SchemaRelease:
        """Set (or delete, ``schema`` None) the schema of a target; 404/409/412 as the contract says."""
        validator = await offload(check_schema, request.schema, request.target) if request.schema is not None else None
        for _ in range(_CAS_ATTEMPTS):
            current, version = await self._state(request.target)
            if request.if_match is not None and request.if_match != current:
                raise _stale(request.target, request.if_match, current)
            if request.schema is None and not current:
                raise NotFoundError(f"no schema is registered for {request.target!r}", target=request.target)
            docs_revision, docs = await read_docs(request.target) if validator is not None else (0, [])
            if validator is not None and not request.force:
                await self._refuse_violations(request.target, validator, docs, offload)
            release = SchemaRelease(request.target, 0, version + 1, "set" if request.schema is not None else "delete",
                                    request.schema, request.message, request.author, time.time(),
                                    request.origin.principal, request.origin.trace_id)
            ok, revision = await self._commit(release, current, docs_revision, guard_docs=not request.force)
            if ok:
                return SchemaRelease.from_record(request.target, revision, release.record())
            if request.if_match is not None and (await self._state(request.target))[0] != current:
                raise _stale(request.target, request.if_match, None)
        raise ConflictError(f"the schema of {request.target!r} or its documents keep changing; retry",
                            target=request.target)

    async def _refuse_violations(self, target: str, validator: Any, docs: list[Release],
                                 offload: Offload) -> None:
        """409 listing the current config documents ``target``'s new schema would govern and refuse."""
        targets = set(await self._targets()) | {target}
        governed = [r for r in docs if r.kind == "config" and r.doc is not None and governing(r.ns, targets) == target]
        bad = []
        for release in governed:
            found = await offload(violations, validator, release.doc)
            if found:
                bad.append({"ns": release.ns, "revision": release.revision, "violations": found[:5]})
        if bad:
            names = ", ".join(b["ns"] for b in bad[:5]) + (" …" if len(bad) > 5 else "")
            raise ConflictError(f"{len(bad)} current document(s) would violate the new schema of {target!r}: {names} "
                                "(fix them first, or set the schema with ?force=true)", target=target,
                                documents=bad[:50])

    async def _state(self, target: str) -> tuple[int, int]:
        """(mod_revision of the current key or 0, the highest version in history or 0)."""
        start = self._layout.schema_history_prefix(target)
        with etcd_errors(f"read the schema of {target}"):
            cur = await self._kv.get(self._key(target), keys_only=True, timeout=self._timeout)
            _, hist = await read_range(self._kv, start, prefix_range_end(start), keys_only=True,
                                       timeout=self._timeout)
        version = max((int(kv.key.rsplit(b"#", 1)[1]) for kv in hist), default=0)
        return (cur.kvs[0].mod_revision if cur.kvs else 0), version

    async def _commit(self, release: SchemaRelease, current: int, docs_revision: int,
                      *, guard_docs: bool) -> tuple[bool, int]:
        kv = self._kv
        key, hist_key = self._key(release.target), self._history_key(release.target, release.version)
        value = orjson.dumps(release.record())
        compare = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=current),
                   kv.txn_compare_create_revision(hist_key, 0)]
        if guard_docs and release.schema is not None:
            start = self._layout.doc_key(release.target)
            # a prefix target ("team/") governs the names under it; an exact one only its own key
            # (a range of "team" would also guard "teams" and "team/db")
            end = prefix_range_end(start) if release.target.endswith("/") else start + b"\0"
            compare.append(Compare(result=Compare.LESS, target=Compare.MOD, key=start,
                                   range_end=end, mod_revision=docs_revision + 1))
        ops = [kv.txn_op_put(key, value) if release.schema is not None else kv.txn_op_delete(key),
               kv.txn_op_put(hist_key, value)]
        with etcd_errors(f"write the schema of {release.target}"):
            resp = await kv.txn(compare, ops, timeout=self._timeout)
        return bool(resp.succeeded), int(resp.header.revision)


def _stale(target: str, expected: int, current: int | None) -> PreconditionFailedError:
    now = f"; current revision is {current}" if current is not None else ""
    return PreconditionFailedError(f"If-Match revision {expected} of the schema of {target!r} is stale{now}",
                                   target=target, expected=expected, current=current)
