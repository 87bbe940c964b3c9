"""The release-control API: review policies, change freezes and proposals (``configcenter.server.release``).

* ``/v1/policies`` (list), ``/v1/policies/{target}`` (get, set, delete), ``/v1/policy-history/{target}``;
  the same for ``/v1/freezes`` and ``/v1/freeze-history``.  Setting or removing one needs the
  ``admin`` role and a scope covering the target; reads are reads, lists filtered by the token's scope.
* ``/v1/proposals?ns=`` (list), ``/v1/proposals/{id}`` (the change and its diff against the current
  release, computed in the read lane), ``POST /v1/proposals/{id}/approve`` and ``…/reject`` (a writer
  whose scope covers the namespace; approval by anyone but the proposal's author).
* Every set, removal, approval and rejection is audited (actions ``policy``, ``freeze``, ``approve``,
  ``reject``).  The checks themselves are not here: the runtime's release gate applies them to every
  write, whichever route made it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from configcenter.diffing import encoded_diff
from configcenter.errors import NotFoundError
from configcenter.model import Release, validate_namespace
from configcenter.server.release import ControlRecord, ControlStore, Proposal, freeze_json, parse_freeze, parse_policy
from configcenter.server.runtime import Runtime
from configcenter.server.security import Action, request_info

from .api import json_response, read_body, rt
from .schemas import TARGET, authorized_target

Parse = Callable[[Any, float], tuple[dict[str, Any], str]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PROPOSAL_ID = "{id}"  # any segment: a malformed id is a 400 (proposals.check_id), not an unknown path


def _policy_json(record: ControlRecord) -> dict[str, Any]:
    return record.to_json()


FAMILIES: dict[str, tuple[Action, Parse, Callable[[ControlRecord], dict[str, Any]]]] = {
    "policies": ("policy", lambda body, _now: parse_policy(body), _policy_json),
    "freezes": ("freeze", parse_freeze, freeze_json),
}


def _store(runtime: Runtime, family: str) -> ControlStore:
    return runtime.release.policies if family == "policies" else runtime.release.freezes


def record_handlers(family: str) -> dict[str, Handler]:
    """list / get / history / set / delete of one family's records."""
    action, parse, to_json = FAMILIES[family]

    async def list_records(request: web.Request) -> web.Response:
        runtime = rt(request)
        principal = runtime.auth.require(request, "list")
        revision, found = await _store(runtime, family).list_records()
        shown = [to_json(r) for r in found if runtime.auth.visible(principal, r.target)]
        return json_response({"revision": revision, family: shown})

    async def get_record(request: web.Request) -> web.Response:
        target = authorized_target(request, "get")
        return json_response(to_json(await _store(rt(request), family).get(target)))

    async def history(request: web.Request) -> web.Response:
        target = authorized_target(request, "history")
        entries = await _store(rt(request), family).history(target)
        return json_response({"target": target, "entries": [r.to_json() for r in entries]})

    async def set_record(request: web.Request) -> web.Response:
        target = authorized_target(request, action)
        fields, message = parse(await read_body(request), time.time())
        record = await _store(rt(request), family).write(target, fields, request_info(request).origin(), message)
        request_info(request).revision = record.revision
        return json_response(to_json(record), 201 if record.version == 1 else 200)

    async def delete_record(request: web.Request) -> web.Response:
        target = authorized_target(request, action)
        message = request.query.get("message", "")[:500]
        record = await _store(rt(request), family).write(target, None, request_info(request).origin(), message)
        request_info(request).revision = record.revision
        return json_response(record.to_json())

    return {"list": list_records, "get": get_record, "history": history, "set": set_record, "delete": delete_record}


async def list_proposals(request: web.Request) -> web.Response:
    """``?ns=`` one namespace's open proposals (a scoped read: 403 outside the scope), else every visible one."""
    runtime = rt(request)
    principal = runtime.auth.require(request, "list")
    ns = request.query.get("ns")
    if ns is not None:
        validate_namespace(ns)
        runtime.auth.check_scope(request, principal, "get", ns)
    found = await runtime.release.proposals.list_open(ns)
    shown = [p.to_json(with_doc=False) for p in found if runtime.auth.visible(principal, p.ns)]
    return json_response({"proposals": shown})


async def authorized_proposal(request: web.Request, action: Action) -> Proposal:
    """Role (401/403), id (400), existence (404), scope on its namespace (403)."""
    runtime = rt(request)
    principal = runtime.auth.require(request, action)
    proposal = await runtime.release.proposals.find(request.match_info["id"])
    runtime.auth.check_scope(request, principal, action, proposal.ns)
    return proposal


async def get_proposal(request: web.Request) -> web.Response:
    """The proposal with its diff against the namespace's current release (in the read lane: bounded)."""
    runtime = rt(request)
    proposal = await authorized_proposal(request, "get")
    try:
        current: Release | None = await runtime.current(proposal.ns)
    except NotFoundError:
        current = None
    base = current.revision if current is not None else 0
    head = {"ns": proposal.ns, "from": base, "to": f"proposal {proposal.id}"}
    diff = await runtime.offload_read(encoded_diff, current.doc if current is not None else None, proposal.doc,
                                      f"{proposal.ns}@{base}", f"{proposal.ns}@proposal-{proposal.id}", head)
    body = {"proposal": proposal.to_json(), "current_revision": base, "stale": base != proposal.base_revision,
            "diff": orjson.Fragment(diff)}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def approve(request: web.Request) -> web.Response:
    runtime = rt(request)
    proposal = await authorized_proposal(request, "approve")
    info = request_info(request)

    def check(found: Proposal) -> Awaitable[None] | None:  # the namespace's schema, as at push
        if found.doc is None:
            return None
        return runtime.schemas.check_push(found.ns, found.kind, found.doc, runtime.offload)

    release = await runtime.release.approve(proposal.id, info.principal or "", info.origin(), check)
    info.revision = release.revision
    await runtime.visible(release.revision)
    body = release.to_json(with_doc=False)
    body["proposal"] = proposal.id
    return json_response(body, 201 if release.version == 1 else 200, runtime.staleness_headers())


async def reject(request: web.Request) -> web.Response:
    runtime = rt(request)
    proposal = await authorized_proposal(request, "reject")
    revision = await runtime.release.proposals.remove(proposal)
    request_info(request).revision = revision
    return json_response({"proposal": proposal.to_json(with_doc=False), "rejected_by": request_info(request).principal,
                          "revision": revision})


def add_release_control_routes(app: web.Application) -> None:
    """Register the routes (the gate is the runtime's: writes are checked with or without these routes)."""
    for family, history in (("policies", "policy-history"), ("freezes", "freeze-history")):
        handlers = record_handlers(family)
        app.router.add_get(f"/v1/{family}", handlers["list"])
        app.router.add_get(f"/v1/{history}/{TARGET}", handlers["history"])
        app.router.add_get(f"/v1/{family}/{TARGET}", handlers["get"])
        app.router.add_put(f"/v1/{family}/{TARGET}", handlers["set"])
        app.router.add_delete(f"/v1/{family}/{TARGET}", handlers["delete"])
    app.router.add_get("/v1/proposals", list_proposals)
    app.router.add_get(f"/v1/proposals/{_PROPOSAL_ID}", get_proposal)
    app.router.add_post(f"/v1/proposals/{_PROPOSAL_ID}/approve", approve)
    app.router.add_post(f"/v1/proposals/{_PROPOSAL_ID}/reject", reject)
