"""Admin-set release-control records in etcd, one family each (review policies, change freezes).

Contract
--------
* A record belongs to a **target**: a namespace (``team/db``) or a prefix (``team/``), named by
  ``schema_rules.validate_target``.  ``<family>/<target>#`` holds the current record and
  ``<family-history>/<target>#<version:012d>`` every set and delete of it (``etcd/keys.py``: the
  trailing ``#`` keeps a name's keys apart from its prefix's and its children's), written in one
  transaction guarded by the current key's ``mod_revision`` and the history key not existing, so
  history survives etcd compaction and two concurrent writers cannot both win a version.
* The value is ``{version, op: set | delete, fields, message, principal, trace_id, time}``;
  ``fields`` is what the family defines (``policies.py``, ``freezes.py``), checked before any write.
* Without ``If-Match`` the last writer wins (retried a few times on a race); nothing is lost, every
  write is in the history.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from etcd3aio import Etcd3Client

from configcenter.errors import ConflictError, NotFoundError
from configcenter.model import Origin
from configcenter.server.etcd import Compare, ControlFamily, KeyLayout, etcd_errors, read_range

_CAS_ATTEMPTS = 8
NOUN = {"policies": "review policy", "freezes": "freeze"}


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One release of a target's record (``fields`` None for a deletion)."""

    family: ControlFamily
    target: str
    revision: int
    version: int
    op: str  # "set" | "delete"
    fields: dict[str, Any] | None
    message: str = ""
    principal: str = ""
    trace_id: str = ""
    time: float = 0.0

    def record(self) -> dict[str, Any]:
        return {"version": self.version, "op": self.op, "fields": self.fields, "message": self.message,
                "principal": self.principal, "trace_id": self.trace_id, "time": self.time}

    def to_json(self) -> dict[str, Any]:
        """The API form: target, revision and the record, its ``fields`` flattened in."""
        out = {"target": self.target, "revision": self.revision, **self.record()}
        out.update(out.pop("fields") or {})
        return out

    @classmethod
    def from_record(cls, family: ControlFamily, target: str, revision: int, record: dict[str, Any]) -> ControlRecord:
        fields = record.get("fields")
        return cls(family, target, revision, int(record["version"]), str(record["op"]),
                   fields if isinstance(fields, dict) else None, str(record.get("message", "")),
                   str(record.get("principal", "")), str(record.get("trace_id", "")), float(record.get("time", 0.0)))


def decode(family: ControlFamily, target: str, revision: int, value: bytes) -> ControlRecord | None:
    """A current record's value as read by the release gate; None if it is not one (garbage is ignored:
    an admin can always overwrite or delete it through the API)."""
    try:
        return ControlRecord.from_record(family, target, revision, orjson.loads(value))
    except (ValueError, KeyError, TypeError):
        return None


class ControlStore:
    """The records of one family under one key prefix (see the module contract)."""

    def __init__(self, client: Etcd3Client, layout: KeyLayout, family: ControlFamily, timeout: float = 5.0) -> None:
        self._client = client
        self.layout = layout
        self.family: ControlFamily = family
        self._timeout = timeout

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise RuntimeError("etcd client is not connected")
        return self._client.kv

    async def list_records(self) -> tuple[int, list[ControlRecord]]:
        """Every current record, sorted by target, and the revision of the read."""
        root = self.layout.control_root(self.family)
        with etcd_errors(f"list {self.family}"):
            header, items = await read_range(self._kv, root, _range_end(root), timeout=self._timeout)
        found = [r for kv in items if kv.key.endswith(b"#")
                 and (r := decode(self.family, self.layout.target_of_control_key(self.family, kv.key),
                                  kv.mod_revision, kv.value)) is not None]
        return int(header.revision), sorted(found, key=lambda r: r.target)

    async def get(self, target: str) -> ControlRecord:
        with etcd_errors(f"read the {NOUN[self.family]} of {target}"):
            resp = await self._kv.get(self.layout.control_key(self.family, target), timeout=self._timeout)
        found = decode(self.family, target, resp.kvs[0].mod_revision, resp.kvs[0].value) if resp.kvs else None
        if found is None:
            raise NotFoundError(f"no {NOUN[self.family]} is set for {target!r}", target=target)
        return found

    async def history(self, target: str, limit: int = 100) -> list[ControlRecord]:
        """The newest ``limit`` releases of ``target``'s record, newest first."""
        start, end = self.layout.control_history_range(self.family, target)
        with etcd_errors(f"read the {NOUN[self.family]} history of {target}"):
            _, items = await read_range(self._kv, start, end, timeout=self._timeout)
        entries = [ControlRecord.from_record(self.family, target, kv.mod_revision, orjson.loads(kv.value))
                   for kv in items[-limit:]]
        if not entries:
            raise NotFoundError(f"no {NOUN[self.family]} was ever set for {target!r}", target=target)
        return sorted(entries, key=lambda r: r.revision, reverse=True)

    async def write(self, target: str, fields: dict[str, Any] | None, origin: Origin,
                    message: str = "") -> ControlRecord:
        """Set (``fields``) or delete (None; 404 if there is none) the record of ``target``."""
        for _ in range(_CAS_ATTEMPTS):
            current, version = await self._state(target)
            if fields is None and not current:
                raise NotFoundError(f"no {NOUN[self.family]} is set for {target!r}", target=target)
            release = ControlRecord(self.family, target, 0, version + 1, "set" if fields is not None else "delete",
                                    fields, message, origin.principal, origin.trace_id, time.time())
            ok, revision = await self._commit(release, current)
            if ok:
                return ControlRecord.from_record(self.family, target, revision, release.record())
        raise ConflictError(f"the {NOUN[self.family]} of {target!r} keeps changing; retry", target=target)

    async def _state(self, target: str) -> tuple[int, int]:
        """(mod_revision of the current key or 0, the highest version in history or 0)."""
        start, end = self.layout.control_history_range(self.family, target)
        with etcd_errors(f"read the {NOUN[self.family]} of {target}"):
            cur = await self._kv.get(self.layout.control_key(self.family, target), keys_only=True,
                                     timeout=self._timeout)
            _, hist = await read_range(self._kv, start, end, keys_only=True, timeout=self._timeout)
        version = max((int(kv.key[len(start):]) for kv in hist), default=0)
        return (cur.kvs[0].mod_revision if cur.kvs else 0), version

    async def _commit(self, release: ControlRecord, current: int) -> tuple[bool, int]:
        kv = self._kv
        key = self.layout.control_key(self.family, release.target)
        hist_key = self.layout.control_history_key(self.family, release.target, release.version)
        value = orjson.dumps(release.record())
        compare = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=current),
                   kv.txn_compare_create_revision(hist_key, 0)]
        ops = [kv.txn_op_put(key, value) if release.fields is not None else kv.txn_op_delete(key),
               kv.txn_op_put(hist_key, value)]
        with etcd_errors(f"write the {NOUN[self.family]} of {release.target}"):
            resp = await kv.txn(compare, ops, timeout=self._timeout)
        return bool(resp.succeeded), int(resp.header.revision)


def _range_end(start: bytes) -> bytes:
    return start[:-1] + bytes([start[-1] + 1])
