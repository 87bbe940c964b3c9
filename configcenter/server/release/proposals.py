"""Proposals: changes held for review under a review policy, until another principal approves or rejects them.

Contract
--------
* A proposal is ``proposals/<ns>#<slot:02d>`` (the full change: op, kind, document, author, message,
  the proposer's origin, the base revision it was made against) plus ``proposal-ids/<id>`` naming its
  slot; both are written in one transaction that also compares the namespace's document and the
  gate's keys unchanged since the write's guard read them.  A namespace has at most ``MAX_OPEN``
  slots, so no caller can write unbounded state into etcd: the next push is refused (409) until one
  is approved or rejected.  A proposal's record must leave room for its release (stored twice) in
  etcd's request limit, or it is refused (413) rather than created unapprovable.
* Approving writes the release through the store with ``if_match`` = the base revision (a stale base
  is refused: 409) and, in the same transaction, compares the proposal unchanged and deletes it
  (``approval``): a proposal is released at most once, and never after it was rejected.
* Ids are 12 random hex digits; a slot reused by a new proposal has a new id, so an old id is 404.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from etcd3aio import Etcd3Client

from configcenter.errors import ConflictError, InvalidArgumentError, NotFoundError, PayloadTooLargeError
from configcenter.server.etcd import Compare, GatedWrite, KeyLayout, WriteControl, etcd_errors, read_range

MAX_OPEN = 16  # open proposals per namespace
_ATTEMPTS = 4
_ID = re.compile(r"[0-9a-f]{12}")
_RELEASE_OVERHEAD = 4096  # keys, history copy framing, compares of the release transaction


@dataclass(frozen=True, slots=True)
class Proposal:
    """One open proposal (``revision``: the mod_revision of its slot key)."""

    id: str
    ns: str
    slot: int
    revision: int
    op: str  # push | rollback | delete
    kind: str
    doc: dict[str, Any] | None
    base_revision: int  # the namespace's revision it was made against (0: did not exist)
    policy: str  # the target of the policy that required review
    author: str = ""
    message: str = ""
    from_revision: int | None = None
    principal: str = ""
    trace_id: str = ""
    client: str = ""
    user_agent: str = ""
    time: float = 0.0

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        del out["revision"]
        return out

    def to_json(self, *, with_doc: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_doc:
            del out["doc"]
        return out

    @classmethod
    def from_kv(cls, kv: Any) -> Proposal:
        record = orjson.loads(kv.value)
        record["revision"] = int(kv.mod_revision)
        return cls(**{name: record.get(name) for name in cls.__dataclass_fields__ if name in record})


def check_id(proposal_id: str) -> str:
    if not _ID.fullmatch(proposal_id):
        raise InvalidArgumentError(f"a proposal id is 12 hex digits, got {proposal_id[:40]!r}", parameter="id")
    return proposal_id


class ProposalStore:
    """Proposals under one key prefix (see the module contract)."""

    def __init__(self, client: Etcd3Client, layout: KeyLayout, timeout: float, max_request_bytes: int) -> None:
        self._client = client
        self.layout = layout
        self._timeout = timeout
        self._max_request_bytes = max_request_bytes

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise RuntimeError("etcd client is not connected")
        return self._client.kv

    async def create(self, write: GatedWrite, policy: str) -> Proposal:
        """Hold ``write`` for review as a new proposal; 409 when ``MAX_OPEN`` are open or the namespace
        keeps changing, 413 when its release could never fit etcd's request limit."""
        release, ns = write.release, write.ns
        for _ in range(_ATTEMPTS):
            used = {self._slot_of(kv.key) for kv in await self._read(self.layout.proposal_range(ns), keys_only=True)}
            free = next((slot for slot in range(MAX_OPEN) if slot not in used), None)
            if free is None:
                raise ConflictError(f"{ns!r} has {MAX_OPEN} open proposals (the limit): approve or reject some "
                                    "first (configcenter proposals " + ns + ")", namespace=ns, limit=MAX_OPEN)
            proposal = Proposal(secrets.token_hex(6), ns, free, 0, release.op, release.kind, release.doc,
                                write.base_revision, policy, release.author, release.message, release.from_revision,
                                release.principal, release.trace_id, release.client, release.user_agent, time.time())
            if await self._commit(proposal, write):
                return proposal
        raise ConflictError(f"{ns!r} or its release control changed while the proposal was being made; push again",
                            namespace=ns)

    async def _commit(self, proposal: Proposal, write: GatedWrite) -> bool:
        kv = self._kv
        value = orjson.dumps(proposal.record())
        if 2 * len(value) + _RELEASE_OVERHEAD > self._max_request_bytes:
            raise PayloadTooLargeError(
                f"the proposal for {proposal.ns!r} ({len(value)} bytes) could not be released within etcd's request "
                f"limit etcd.max_request_bytes ({self._max_request_bytes}): make the document or message smaller",
                namespace=proposal.ns, bytes=len(value))
        slot_key = self.layout.proposal_key(proposal.ns, proposal.slot)
        id_key = self.layout.proposal_id_key(proposal.id)
        compare = [kv.txn_compare_create_revision(slot_key, 0), kv.txn_compare_create_revision(id_key, 0),
                   _mod(self.layout.doc_key(proposal.ns), write.base_revision)]
        compare += [_mod(key, mod) for key, (mod, _) in write.records.items()]
        ops = [kv.txn_op_put(slot_key, value),
               kv.txn_op_put(id_key, orjson.dumps({"ns": proposal.ns, "slot": proposal.slot}))]
        with etcd_errors(f"write a proposal for {proposal.ns}"):
            resp = await kv.txn(compare, ops, timeout=self._timeout)
        return bool(resp.succeeded)

    async def find(self, proposal_id: str) -> Proposal:
        """The open proposal ``proposal_id``; 400 for a malformed id, 404 when there is none (any more)."""
        check_id(proposal_id)
        with etcd_errors(f"read proposal {proposal_id}"):
            where = await self._kv.get(self.layout.proposal_id_key(proposal_id), timeout=self._timeout)
            if where.kvs:
                place = orjson.loads(where.kvs[0].value)
                found = await self._kv.get(self.layout.proposal_key(str(place["ns"]), int(place["slot"])),
                                           timeout=self._timeout)
                if found.kvs:
                    proposal = Proposal.from_kv(found.kvs[0])
                    if proposal.id == proposal_id:
                        return proposal
        raise NotFoundError(f"no open proposal {proposal_id!r} (approved, rejected or never made)",
                            proposal=proposal_id)

    async def list_open(self, ns: str | None = None) -> list[Proposal]:
        """The open proposals of ``ns`` (or of every namespace), oldest first."""
        root = self.layout.proposals_root
        span = self.layout.proposal_range(ns) if ns is not None else (root, root[:-1] + b"0")
        return sorted((Proposal.from_kv(kv) for kv in await self._read(span)), key=lambda p: (p.time, p.id))

    def approval(self, proposal: Proposal, approver: str) -> WriteControl:
        """What the release transaction of an approval adds: the proposal unchanged, then deleted."""
        kv = self._kv
        slot_key = self.layout.proposal_key(proposal.ns, proposal.slot)
        id_key = self.layout.proposal_id_key(proposal.id)
        return WriteControl(approved_by=approver, compares=(_mod(slot_key, proposal.revision),),
                            ops=(kv.txn_op_delete(slot_key), kv.txn_op_delete(id_key)))

    async def remove(self, proposal: Proposal) -> int:
        """Delete (reject) ``proposal`` if it is unchanged; the revision of the deletion, 409 otherwise."""
        control = self.approval(proposal, "")
        with etcd_errors(f"reject proposal {proposal.id}"):
            resp = await self._kv.txn(list(control.compares), list(control.ops), timeout=self._timeout)
        if not resp.succeeded:
            raise ConflictError(f"proposal {proposal.id} was approved or rejected meanwhile", proposal=proposal.id)
        return int(resp.header.revision)

    async def _read(self, span: tuple[bytes, bytes], *, keys_only: bool = False) -> list[Any]:
        with etcd_errors("read proposals"):
            _, items = await read_range(self._kv, span[0], span[1], keys_only=keys_only, timeout=self._timeout)
        return items

    @staticmethod
    def _slot_of(key: bytes) -> int:
        return int(key.rpartition(b"#")[2])


def _mod(key: bytes, revision: int) -> Any:
    return Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=revision)
