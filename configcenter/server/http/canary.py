"""HTTP handlers for canary releases (registered by ``app.create_app`` before ``api.add_routes``).

* ``POST /v1/namespaces/{ns}/canary`` ``{kind?, doc, target, abort_on_reject?, message?, author?}``:
  start a canary (201, op ``canary_start``).  ``kind`` defaults to the namespace's; the candidate is
  validated exactly like a push (envelope, JSON Schema, route-table compile, the namespace's schema).
* ``PATCH /v1/namespaces/{ns}/canary`` ``{target, message?, author?}``: grow or shrink it (``canary_update``).
* ``DELETE /v1/namespaces/{ns}/canary?message=&author=``: abort it (``canary_abort``: everyone on the base).
* ``POST /v1/namespaces/{ns}/promote`` ``{message?, author?}`` (body optional): the candidate becomes the
  release of everyone (``promote``, ``from_canary``).

Authorization: action ``canary`` (start, change, abort) and ``promote``, both the writer role in the
namespace's scope, like a push; each is one audit line (``canary`` told apart by ``method``).
``If-Match`` works as for a push.  Errors: 404 unknown namespace, 409 a canary already active (start)
or none active (the others), 400 a bad target or body, 422 a bad candidate, 413 too large; nothing is
written on any of them.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from configcenter import errors
from configcenter.server.etcd import CanaryChange
from configcenter.server.security import request_info
from configcenter_sdk.canary import CanaryTarget, parse_target

from .api import NS, authorized, if_match, published, read_body, release_response, rt, validated_envelope

_START_FIELDS = frozenset({"target", "abort_on_reject"})  # besides the push envelope's


async def start_canary(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "canary")
    body = await read_body(request)
    if not isinstance(body, dict) or "target" not in body:
        raise errors.InvalidBodyError("body must be a mapping {kind?, doc, target, abort_on_reject?, message?, "
                                      "author?}")
    target = _target(body["target"])
    abort_on_reject = body.get("abort_on_reject", False)
    if not isinstance(abort_on_reject, bool):
        raise errors.InvalidBodyError("abort_on_reject must be true or false")
    envelope_fields = {k: v for k, v in body.items() if k not in _START_FIELDS}
    envelope_fields.setdefault("kind", (await runtime.current(ns)).kind)  # 404 for an unknown namespace
    envelope = await validated_envelope(request, ns, envelope_fields)
    await runtime.schemas.check_push(ns, envelope.kind, envelope.doc, runtime.offload)  # its schema, like a push
    release = await runtime.store.canary.start(
        ns, _change(request, envelope.message, envelope.author), kind=envelope.kind, doc=envelope.doc,
        target=target, abort_on_reject=abort_on_reject, if_match=if_match(request))
    await published(request, release)
    return release_response(release, runtime, 201)


async def update_canary(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "canary")
    body = _texts(await read_body(request), {"target"}, "{target, message?, author?}")
    if "target" not in body:
        raise errors.InvalidBodyError("body must be a mapping {target, message?, author?}")
    release = await runtime.store.canary.update(ns, _change(request, body.get("message", ""), body.get("author", "")),
                                                _target(body["target"]), if_match=if_match(request))
    await published(request, release)
    return release_response(release, runtime)


async def abort_canary(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "canary")
    change = _change(request, request.query.get("message", ""), request.query.get("author", ""))
    release = await runtime.store.canary.abort(ns, change, if_match=if_match(request))
    await published(request, release)
    return release_response(release, runtime)


async def promote(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "promote")
    raw = await read_body(request) if request.body_exists else {}
    body = _texts(raw, set(), "{message?, author?}")
    release = await runtime.store.canary.promote(ns, _change(request, body.get("message", ""), body.get("author", "")),
                                                 if_match=if_match(request))
    await published(request, release)
    return release_response(release, runtime)


def _target(raw: Any) -> CanaryTarget:
    """The canary's target (``configcenter_sdk.canary.parse_target``); 400 naming what is wrong."""
    if isinstance(raw, dict) and isinstance(raw.get("percent"), float) and raw["percent"].is_integer():
        raw = {**raw, "percent": int(raw["percent"])}  # JSON Schema counts 10.0 an integer: so does the API
    try:
        target = parse_target(raw)
    except ValueError as exc:
        raise errors.InvalidBodyError(str(exc), path="$.target") from exc
    if not target.labels and not target.instances and target.percent is None:
        raise errors.InvalidBodyError("target must name labels, instances or a percent (a canary for every "
                                      "instance is a push)", path="$.target")
    return target


def _texts(body: Any, extra: set[str], shape: str) -> dict[str, Any]:
    """``body`` checked to be a mapping of ``extra`` fields plus string ``message`` / ``author``."""
    if not isinstance(body, dict):
        raise errors.InvalidBodyError(f"body must be a mapping {shape}")
    unknown = sorted(set(body) - extra - {"message", "author"})
    if unknown:
        raise errors.InvalidBodyError(f"unknown field(s) in body: {', '.join(map(str, unknown))[:200]}",
                                      fields=unknown[:20])
    for name in ("message", "author"):
        if not isinstance(body.get(name, ""), str):
            raise errors.InvalidBodyError(f"{name} must be a string")
    return body


def _change(request: web.Request, message: str, author: str) -> CanaryChange:
    return CanaryChange(request_info(request).origin(), message, author)


def add_canary_routes(app: web.Application) -> None:
    """Before ``api.add_routes``: ``…/{ns}/canary`` must own its path, not ``/v1/namespaces/{ns}``."""
    base = "/v1/namespaces"
    app.router.add_post(f"{base}/{NS}/canary", start_canary)
    app.router.add_patch(f"{base}/{NS}/canary", update_canary)
    app.router.add_delete(f"{base}/{NS}/canary", abort_canary)
    app.router.add_post(f"{base}/{NS}/promote", promote)
