"""Release control: review policies ("four eyes"), change freezes and proposals, applied to every write
by the store's gate in the write's own transaction (``gate.py``).  Owned by the runtime, never by a route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from etcd3aio import Etcd3Client

from configcenter.errors import ConflictError, ForbiddenError, NotFoundError, PreconditionFailedError
from configcenter.model import Origin, Release
from configcenter.server.etcd import KeyLayout, Store

from .freezes import freeze_json, iso, parse_freeze
from .gate import ReleaseGate, targets_of
from .policies import parse_policy
from .proposals import MAX_OPEN, Proposal, ProposalStore, check_id
from .records import ControlRecord, ControlStore


class ReleaseControl:
    """Policies, freezes and proposals under one key prefix; installs its gate on ``store``."""

    def __init__(self, client: Etcd3Client, layout: KeyLayout, store: Store, *, timeout: float,
                 max_request_bytes: int) -> None:
        self.store = store
        self.policies = ControlStore(client, layout, "policies", timeout)
        self.freezes = ControlStore(client, layout, "freezes", timeout)
        self.proposals = ProposalStore(client, layout, timeout, max_request_bytes)
        self.gate = ReleaseGate(layout, self.proposals)
        store.gate = self.gate

    async def approve(self, proposal_id: str, approver: str, origin: Origin,
                      check: Callable[[Proposal], Awaitable[None] | None] | None = None) -> Release:
        """Release the proposal, recording its author (``principal``) and ``approver`` (``approved_by``).

        403 if ``approver`` is its author; 409 if the namespace moved since the proposal (stale base) or
        the proposal was approved or rejected meanwhile; 423 under a freeze (unless overridden).
        ``origin`` is the approving request's (trace id, client, override); the principal is the author's.
        ``check(proposal)``: the namespace's schema check, run with the write's guard reads.
        """
        proposal = await self.proposals.find(proposal_id)
        if approver == proposal.principal:
            raise ForbiddenError(f"principal {approver!r} proposed {proposal_id} and may not approve it: another "
                                 "writer must", principal=approver, proposal=proposal_id)
        stamped = Origin(proposal.principal, origin.trace_id, origin.client, origin.user_agent, origin.role,
                         origin.override_freeze)
        control = self.proposals.approval(proposal, approver)
        try:
            if proposal.op == "delete":
                return await self.store.delete(proposal.ns, author=proposal.author, message=proposal.message,
                                               if_match=proposal.base_revision, origin=stamped, control=control)
            assert proposal.doc is not None
            return await self.store.push(
                proposal.ns, proposal.kind, proposal.doc, author=proposal.author, message=proposal.message,
                if_match=proposal.base_revision, op="rollback" if proposal.op == "rollback" else "push",
                from_revision=proposal.from_revision, origin=stamped, control=control,
                check=check(proposal) if check is not None else None)
        except (PreconditionFailedError, NotFoundError) as exc:
            raise await self._approval_refused(proposal, exc) from exc

    async def _approval_refused(self, proposal: Proposal, exc: Exception) -> Exception:
        """Why an approval's write failed: the proposal is gone, or its base is stale (both 409)."""
        try:
            await self.proposals.find(proposal.id)
        except NotFoundError:
            return ConflictError(f"proposal {proposal.id} was approved or rejected meanwhile", proposal=proposal.id)
        current = getattr(exc, "details", {}).get("current")
        return ConflictError(
            f"proposal {proposal.id} was made against revision {proposal.base_revision} of {proposal.ns!r}, which "
            f"has changed since{f' (now {current})' if current else ''}: reject it and propose the change again",
            proposal=proposal.id, namespace=proposal.ns, base_revision=proposal.base_revision, current=current)


__all__ = ["MAX_OPEN", "ControlRecord", "ControlStore", "Proposal", "ProposalStore", "ReleaseControl", "ReleaseGate",
           "check_id", "freeze_json", "iso", "parse_freeze", "parse_policy", "targets_of"]
