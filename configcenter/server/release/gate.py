"""The release gate: the store's hook that applies freezes and review policies to every write.

``Store`` reads the gate's keys (the freeze and the policy of the namespace and of each of its
prefixes: at most 4 targets per family, a namespace having at most 4 segments) in the round trip
of its write guard, calls ``admit`` with the release it is about to write, and compares the same
keys unchanged in the write's transaction (``etcd/store.py``).  So a freeze or a policy set after
``admit`` read them makes the commit fail, and the retry reads them again: the freeze wins.

``admit``, in order: a bad ``?override_freeze=`` is 400 (non-admin: 403); an active freeze refuses
any write but a rollback or a canary abort (423) unless an admin overrides it (the release records the reason); a
governing policy that requires review turns the write into a proposal (``HeldForReview``, 202),
unless it is the approval of one (by a principal other than its author, stamped ``approved_by``)
or a rollback the policy allows.  Writes of other ops (e.g. canary promotion) under review are
refused (409): they are not reviewable yet, and failing closed keeps the policy's promise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from configcenter.errors import ConflictError, ForbiddenError, HeldForReview
from configcenter.model import Release
from configcenter.schema_rules import governing
from configcenter.server.etcd import ControlFamily, GatedWrite, KeyLayout

from . import freezes
from .proposals import ProposalStore
from .records import ControlRecord, decode

REVIEWABLE = frozenset({"push", "rollback", "delete"})
RESTORING = frozenset({"rollback", "canary_abort"})  # writes that return to released content: never frozen


def targets_of(ns: str) -> list[str]:
    """``ns`` and every prefix of it: ``a/b/c`` -> ``[a/b/c, a/, a/b/]``."""
    segments = ns.split("/")
    return [ns, *("/".join(segments[:i]) + "/" for i in range(1, len(segments)))]


class ReleaseGate:
    """``etcd.WriteGate`` for freezes and review policies (see the module docstring)."""

    def __init__(self, layout: KeyLayout, proposals: ProposalStore, clock: Callable[[], float] = time.time) -> None:
        self.layout = layout
        self.proposals = proposals
        self.clock = clock

    def keys(self, ns: str) -> Sequence[bytes]:
        return [self.layout.control_key(family, target)
                for family in ("freezes", "policies") for target in targets_of(ns)]

    def records(self, write: GatedWrite, family: ControlFamily) -> dict[str, ControlRecord]:
        """The present records of ``family`` among what the guard read, by target."""
        found: dict[str, ControlRecord] = {}
        for target in targets_of(write.ns):
            mod, value = write.records.get(self.layout.control_key(family, target), (0, None))
            record = decode(family, target, mod, value) if value is not None else None
            if record is not None and record.fields is not None:
                found[target] = record
        return found

    async def admit(self, write: GatedWrite) -> Release:
        release = write.release
        override = freezes.check_override(write.origin.override_freeze)
        if override is not None and write.origin.role != "admin":
            raise ForbiddenError(f"principal {write.origin.principal!r} may not override a freeze: that needs the "
                                 "admin role", principal=write.origin.principal)
        freeze = freezes.governing_freeze(self.records(write, "freezes").values(), self.clock())
        if freeze is not None and release.op not in RESTORING:
            if override is None:
                raise freezes.frozen(write.ns, freeze)
            release = dataclasses.replace(release, freeze_override=f"{override} (freeze on {freeze.target} "
                                                                   f"by {freeze.principal})")
        return await self._review(write, release)

    async def _review(self, write: GatedWrite, release: Release) -> Release:
        approver = write.control.approved_by
        if approver:
            if approver == release.principal:
                raise ForbiddenError(f"principal {approver!r} proposed this change and may not approve it: another "
                                     "writer must", principal=approver)
            return dataclasses.replace(release, approved_by=approver)
        policies = self.records(write, "policies")
        target = governing(write.ns, policies)
        policy = (policies[target].fields or {}) if target is not None else {}
        if not policy.get("require_review"):
            return release
        if (release.op == "rollback" and policy.get("allow_rollback")) or release.op == "canary_abort":
            return release  # an abort only returns canary instances to the released base
        if release.op not in REVIEWABLE:
            raise ConflictError(f"{write.ns!r} is under the review policy of {target!r}: a {release.op} cannot be "
                                "reviewed yet, so it is refused", namespace=write.ns, policy=target)
        assert target is not None
        proposal = await self.proposals.create(write, target)
        raise HeldForReview(f"{write.ns!r} requires review (policy on {target!r}): proposal {proposal.id} created, "
                            "awaiting approval by another writer", proposal.to_json(with_doc=False))
