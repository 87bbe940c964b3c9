"""HTTP handlers for SDK instances and rollouts (registered by ``app.create_app``).

* ``POST /v1/instances/{id}/report``: an SDK's report (``fleet.report``); needs what a watch
  needs (open, or a reader token with ``auth.read_requires_token``; a scoped token may report only
  namespaces and selectors inside its scope). Answers ``{id, lease, ttl, heartbeat, written, digest}``:
  ``lease`` is the record's capability, to present with the next reports and the goodbye (409 for
  a live id reported without it; 429 past the caps on new records: ``fleet/_admission.py``).
* ``DELETE /v1/instances/{id}?lease=L``: goodbye (204; 404 if the instance is gone, 409 if ``L``
  does not hold it). Without ``lease``: an operator's removal, admin only (a scoped admin: of an
  instance whose namespaces and selectors all lie in its scope). Both are in the audit log.
* ``GET /v1/instances[?service=S&ns=NS]``: the fleet, never a lease. Where reads are scoped
  (``auth.read_requires_token``), a scoped token sees an instance only if some of its namespaces
  or selectors lie in the scope, with only those; ``ns`` outside the scope is 403.
* ``GET /v1/namespaces/{ns}/rollout[?revision=R]``: the rollout of R (default: the current revision);
  ``ns`` is scope-checked like a get, and each row is about ``ns`` only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from configcenter import errors
from configcenter.model import validate_namespace
from configcenter.server.fleet import MAX_REPORT_BYTES, capability, classify, instance_id, parse_report, rollout
from configcenter.server.fleet._admission import owner_of
from configcenter.server.security import request_info
from configcenter.server.security.auth import Principal, TokenAuth, intersect

from .api import NS, authorized, int_param, json_response, rt


async def report(request: web.Request) -> web.Response:
    runtime = rt(request)
    principal = runtime.auth.require(request, "watch")
    iid = instance_id(request.match_info["id"])
    if request.content_length is not None and request.content_length > MAX_REPORT_BYTES:
        raise errors.PayloadTooLargeError(f"report of {request.content_length} bytes exceeds the "
                                          f"{MAX_REPORT_BYTES}-byte limit")
    body = parse_report(await request.read())
    if principal is not None and runtime.auth.scoped(principal, "watch"):
        for ns in body.namespaces:
            runtime.auth.check_scope(request, principal, "watch", ns)
        # what its watch gets: the selectors cut to the scope (403 if one is entirely outside)
        body = replace(body, selectors=sorted(runtime.auth.narrow(request, principal, body.selectors)))
    owner = owner_of(principal.name if principal else None, request_info(request).client)
    cap, written = await runtime.instances.report(iid, body, owner)
    registry = runtime.instances
    return json_response({"id": iid, "lease": cap.text, "ttl": registry.ttl, "heartbeat": registry.heartbeat,
                          "written": written, "digest": registry.digest(body.state(iid))})


async def goodbye(request: web.Request) -> web.Response:
    runtime = rt(request)
    if "lease" not in request.query:
        return await evict(request)
    runtime.auth.require(request, "watch")
    request_info(request).action = "goodbye"  # audited like a write
    iid = instance_id(request.match_info["id"])
    cap = capability(request.query["lease"])
    if cap is None or not await runtime.instances.goodbye(iid, cap):
        raise errors.NotFoundError(f"no live instance {iid!r}", instance=iid)
    return web.Response(status=204)


async def evict(request: web.Request) -> web.Response:
    """An operator removes an instance (e.g. one squatting an id): admin, inside its scope."""
    runtime = rt(request)
    principal = runtime.auth.require(request, "evict")
    iid = instance_id(request.match_info["id"])

    def allowed(record: dict[str, Any]) -> None:
        namespaces = record.get("namespaces")
        for ns in [*(namespaces if isinstance(namespaces, dict) else ()), *(record.get("selectors") or [""])]:
            runtime.auth.check_scope(request, principal, "evict", str(ns))
        request_info(request).namespace = None  # the audit line names the instance (path), not one namespace

    if not await runtime.instances.evict(iid, allowed):
        raise errors.NotFoundError(f"no live instance {iid!r}", instance=iid)
    return web.Response(status=204)


async def list_instances(request: web.Request) -> web.Response:
    runtime = rt(request)
    principal = runtime.auth.require(request, "list")
    service = request.query.get("service")
    ns = request.query.get("ns")
    if ns is not None:
        validate_namespace(ns)
        runtime.auth.check_scope(request, principal, "list", ns)
    items = []
    for item in await runtime.instances.fleet():
        if (service is not None and item.get("service") != service) or (
                ns is not None and classify(item, ns, 0) is None):
            continue
        shown = in_scope(runtime.auth, principal, item)
        if shown is not None:
            items.append(shown)
    return json_response({"instances": items, "count": len(items), "ttl": runtime.instances.ttl})


def in_scope(auth: TokenAuth, principal: Principal | None, item: dict[str, Any]) -> dict[str, Any] | None:
    """The instance as ``principal`` may see it: only its namespaces and selectors inside the scope
    (selectors cut to the scope); None if nothing of it is inside."""
    if principal is None or principal.namespaces is None or not auth.scoped(principal, "list"):
        return item
    scope = principal.namespaces
    namespaces = {ns: e for ns, e in item.get("namespaces", {}).items() if principal.covers(ns)}
    selectors: list[str] = []
    for selector in item.get("selectors") or [""]:
        parts = list(scope) if selector == "" else [intersect(selector, entry) for entry in scope]
        selectors += [p for p in parts if p is not None and p not in selectors]
    if not namespaces and not selectors:
        return None
    return {**item, "namespaces": namespaces, "selectors": selectors}


async def namespace_rollout(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "get")
    current = await runtime.current(ns)
    target = int_param(request, "revision", minimum=1) or current.revision
    body = rollout(await runtime.instances.fleet(), current, target)
    return json_response(body, headers=runtime.staleness_headers())


def add_instance_routes(app: web.Application) -> None:
    """Before ``api.add_routes``: ``/v1/namespaces/{ns}/rollout`` must win over ``/v1/namespaces/{ns}``."""
    app.router.add_post("/v1/instances/{id}/report", report)
    app.router.add_delete("/v1/instances/{id}", goodbye)
    app.router.add_get("/v1/instances", list_instances)
    app.router.add_get(f"/v1/namespaces/{NS}/rollout", namespace_rollout)
