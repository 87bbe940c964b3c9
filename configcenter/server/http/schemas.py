"""The schema API: ``/v1/schemas`` (list), ``/v1/schemas/{target}`` (get, set, delete) and
``/v1/schema-history/{target}`` (``SchemaStore.check_push``, owned by the runtime, checks each push).

A target is a namespace (``orders/config``) or a prefix (``orders/``); which schema governs a
namespace is ``schema_rules.governing``.  Setting or deleting a schema needs the ``admin`` role
(a schema constrains every writer under it) and a scope covering the target, and is audited like a
push (``audit``, action ``schema``); reads are reads, the list filtered by the token's scope.
The body of a set is ``{schema, message?, author?}`` (JSON or YAML, bounded like a push).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from configcenter import errors
from configcenter.schema_rules import validate_target
from configcenter.server.runtime import RUNTIME
from configcenter.server.schemas import SchemaStore, SchemaWrite
from configcenter.server.security import Action, request_info

from .api import if_match, json_response, read_body, rt

TARGET = "{target:.+}"
_BODY_KEYS = frozenset({"schema", "message", "author"})


def store(request: web.Request) -> SchemaStore:
    return request.app[RUNTIME].schemas


def authorized_target(request: web.Request, action: Action) -> str:
    """Role (401/403), target name (400), scope (403), in that order, like namespace routes."""
    auth = rt(request).auth
    principal = auth.require(request, action)
    target = validate_target(request.match_info["target"])
    auth.check_scope(request, principal, action, target)
    return target


def force_param(request: web.Request) -> bool:
    raw = request.query.get("force", "false")
    if raw not in ("true", "false", "1", "0"):
        raise errors.InvalidArgumentError(f"force must be true or false, got {raw!r}", parameter="force")
    return raw in ("true", "1")


def parse_schema_body(data: Any) -> tuple[dict[str, Any], str, str]:
    """``{schema, message?, author?}`` -> (schema, message, author); ``InvalidBodyError`` when off."""
    if not isinstance(data, dict) or "schema" not in data:
        raise errors.InvalidBodyError("body must be a mapping {schema, message?, author?}")
    unknown = sorted(set(map(str, data)) - _BODY_KEYS)
    if unknown:
        raise errors.InvalidBodyError(f"unknown field(s) in body: {', '.join(unknown)}", fields=unknown)
    if not isinstance(data["schema"], dict):
        raise errors.InvalidBodyError("schema must be a mapping (a JSON Schema object)")
    for name in ("message", "author"):
        if not isinstance(data.get(name, ""), str):
            raise errors.InvalidBodyError(f"{name} must be a string")
    return data["schema"], data.get("message", ""), data.get("author", "")


async def list_schemas(request: web.Request) -> web.Response:
    """Like ``GET /v1/namespaces``: with ``auth.read_requires_token`` a scoped token lists only the targets
    inside its scope (those it may also get, ``auth.TokenAuth.visible``), never another team's."""
    auth = rt(request).auth
    principal = auth.require(request, "list")
    revision, found = await store(request).list_schemas()
    shown = [s.to_json(with_schema=False) for s in found if auth.visible(principal, s.target)]
    return json_response({"revision": revision, "schemas": shown})


async def get_schema(request: web.Request) -> web.Response:
    target = authorized_target(request, "get")
    return json_response((await store(request).get(target)).to_json())


async def schema_history(request: web.Request) -> web.Response:
    target = authorized_target(request, "history")
    entries = await store(request).history(target)
    return json_response({"target": target, "entries": [e.to_json(with_schema=False) for e in entries]})


async def set_schema(request: web.Request) -> web.Response:
    runtime = rt(request)
    target = authorized_target(request, "schema")
    force, expected = force_param(request), if_match(request)
    schema, message, author = parse_schema_body(await read_body(request))
    write = SchemaWrite(target, schema, message, author, request_info(request).origin(), expected, force)
    release = await store(request).write(write, runtime.store.releases_under, runtime.offload)
    request_info(request).revision = release.revision
    return json_response(release.to_json(), 201 if release.version == 1 else 200)


async def delete_schema(request: web.Request) -> web.Response:
    runtime = rt(request)
    target = authorized_target(request, "schema")
    write = SchemaWrite(target, None, request.query.get("message", ""), request.query.get("author", ""),
                        request_info(request).origin(), if_match(request))
    release = await store(request).write(write, runtime.store.releases_under, runtime.offload)
    request_info(request).revision = release.revision
    return json_response(release.to_json())


def add_schema_routes(app: web.Application) -> None:
    """Register the routes (the store is the runtime's: pushes are checked with or without these routes)."""
    app.router.add_get("/v1/schemas", list_schemas)
    app.router.add_get(f"/v1/schema-history/{TARGET}", schema_history)
    app.router.add_get(f"/v1/schemas/{TARGET}", get_schema)
    app.router.add_put(f"/v1/schemas/{TARGET}", set_schema)
    app.router.add_delete(f"/v1/schemas/{TARGET}", delete_schema)

