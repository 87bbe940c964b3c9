"""HTTP handlers for SDK instances and rollouts (registered by ``app.create_app``).

* ``POST /v1/instances/{id}/report``: an SDK's report (``_instance_report``); needs what a watch
  needs (open, or a reader token with ``auth.read_requires_token``; a scoped token may report only
  namespaces and selectors inside its scope). Answers ``{id, lease, ttl, heartbeat, written}``.
* ``DELETE /v1/instances/{id}?lease=L``: goodbye (204; 404 if ``L`` is not the instance's lease).
* ``GET /v1/instances[?service=S&ns=NS]``: the fleet.
* ``GET /v1/namespaces/{ns}/rollout[?revision=R]``: the rollout of R (default: the current revision).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import web

from .. import errors
from ..model import validate_namespace
from ._instance_report import MAX_REPORT_BYTES, instance_id, lease_id, parse_report
from .api import NS, authorized, int_param, json_response, rt
from .auth import Principal
from .instances import classify, rollout


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
    lease, written = await runtime.instances.report(iid, body)
    registry = runtime.instances
    return json_response({"id": iid, "lease": f"{lease:x}", "ttl": registry.ttl, "heartbeat": registry.heartbeat,
                          "written": written, "digest": registry.digest(body.state(iid))})


async def goodbye(request: web.Request) -> web.Response:
    runtime = rt(request)
    runtime.auth.require(request, "watch")
    iid = instance_id(request.match_info["id"])
    lease = lease_id(request.query.get("lease"))
    if lease is None:
        raise errors.InvalidArgumentError("goodbye needs ?lease=<the lease of the last report>", parameter="lease")
    if not await runtime.instances.goodbye(iid, lease):
        raise errors.NotFoundError(f"no instance {iid!r} with that lease", instance=iid)
    return web.Response(status=204)


async def list_instances(request: web.Request) -> web.Response:
    runtime = rt(request)
    principal = runtime.auth.require(request, "list")
    service = request.query.get("service")
    ns = request.query.get("ns")
    if ns is not None:
        validate_namespace(ns)
    items = []
    for item in await runtime.instances.fleet():
        if (service is not None and item.get("service") != service) or (
                ns is not None and classify(item, ns, 0) is None):
            continue
        items.append(_visible(runtime.auth.visible, principal, item))
    return json_response({"instances": items, "count": len(items), "ttl": runtime.instances.ttl})


def _visible(visible: Any, principal: Principal | None, item: dict[str, Any]) -> dict[str, Any]:
    """The instance with only the namespaces the principal may see."""
    namespaces = item.get("namespaces", {})
    return {**item, "namespaces": {ns: e for ns, e in namespaces.items() if visible(principal, ns)}}


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
