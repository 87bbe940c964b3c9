"""Per-namespace schemas (``/v1/schemas``) on a real server and a real etcd.

Each refusal also checks that etcd's revision did not move (nothing was written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from configcenter.errors import ConflictError, NotFoundError
from configcenter.server.schemas import SchemaWrite
from configcenter.server.security import Principal
from helpers import READER, TEST_PRINCIPALS, RunningServer, envelope

ORDERS = {"type": "object", "required": ["timeout_ms"],
          "properties": {"timeout_ms": {"type": "integer", "minimum": 1}, "name": {"pattern": "^[a-z]+$"}}}


async def etcd_revision(server: RunningServer) -> int:
    return await server.runtime.store.current_revision()


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def put_schema(http: aiohttp.ClientSession, server: RunningServer, target: str, schema: Any,
                     query: str = "", **kw: Any) -> tuple[int, Any]:
    return await call(http, "PUT", f"{server.url}/v1/schemas/{target}{query}", json={"schema": schema, **kw},
                      headers=server.auth())


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any],
               kind: str = "config") -> tuple[int, Any]:
    return await call(http, "PUT", f"{server.url}/v1/namespaces/{ns}", json=envelope(doc, kind),
                      headers=server.auth())


async def test_prefix_schema_validates_config_pushes(server: RunningServer, http: aiohttp.ClientSession) -> None:
    status, body = await put_schema(http, server, "orders/", ORDERS, message="orders need timeouts")
    assert status == 201 and body["target"] == "orders/" and body["version"] == 1 and body["schema"] == ORDERS
    assert (await push(http, server, "orders/config", {"timeout_ms": 5}))[0] == 201
    before = await etcd_revision(server)
    status, body = await push(http, server, "orders/config", {"timeout_ms": "slow", "name": "X1"})
    assert status == 422 and body["error"]["code"] == "schema_violation"
    paths = [v["path"] for v in body["error"]["details"]["violations"]]
    assert paths == ["$.name", "$.timeout_ms"] and body["error"]["details"]["schema"] == "orders/"
    assert await etcd_revision(server) == before
    # outside the prefix, and route tables, are not governed by it
    assert (await push(http, server, "billing/config", {"anything": True}))[0] == 201
    status, _ = await push(http, server, "orders/routes", {"service": "o", "rules": [], "default": {"cluster": "c"}},
                           kind="routes")
    assert status == 201


async def test_a_schema_with_valid_local_refs_is_accepted_and_enforced(server: RunningServer,
                                                                      http: aiohttp.ClientSession) -> None:
    """Local ``$ref``s (JSON pointer and ``$anchor``) resolve through ``referencing``'s public API."""
    schema = {"$defs": {"port": {"type": "integer", "minimum": 1}, "name": {"$anchor": "name", "type": "string"}},
              "type": "object", "properties": {"port": {"$ref": "#/$defs/port"}, "owner": {"$ref": "#name"}}}
    status, body = await put_schema(http, server, "refs/", schema)
    assert status == 201, body
    assert (await push(http, server, "refs/ok", {"port": 8080, "owner": "team"}))[0] == 201
    status, body = await push(http, server, "refs/bad", {"port": 0, "owner": 5})
    assert status == 422
    assert [v["path"] for v in body["error"]["details"]["violations"]] == ["$.owner", "$.port"]


async def test_most_specific_schema_wins(server: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await put_schema(http, server, "orders/", ORDERS))[0] == 201
    loose = {"type": "object", "properties": {"debug": {"type": "boolean"}}}
    assert (await put_schema(http, server, "orders/legacy", loose))[0] == 201
    assert (await push(http, server, "orders/legacy", {"debug": True}))[0] == 201  # no timeout_ms needed
    assert (await push(http, server, "orders/legacy", {"debug": "yes"}))[0] == 422
    assert (await push(http, server, "orders/other", {"debug": True}))[0] == 422  # the prefix's schema


async def test_get_list_history_and_delete(server: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await put_schema(http, server, "orders/config", ORDERS, message="v1"))[0] == 201
    stricter = {**ORDERS, "additionalProperties": False}
    status, second = await put_schema(http, server, "orders/config", stricter, message="v2")
    assert status == 200 and second["version"] == 2
    status, body = await call(http, "GET", f"{server.url}/v1/schemas/orders/config")
    assert status == 200 and body["schema"] == stricter and body["revision"] == second["revision"]
    status, listing = await call(http, "GET", f"{server.url}/v1/schemas")
    assert status == 200 and [s["target"] for s in listing["schemas"]] == ["orders/config"]
    assert "schema" not in listing["schemas"][0]
    status, removed = await call(http, "DELETE", f"{server.url}/v1/schemas/orders/config", headers=server.auth())
    assert status == 200 and removed["op"] == "delete" and removed["version"] == 3
    assert (await call(http, "GET", f"{server.url}/v1/schemas/orders/config"))[0] == 404
    assert (await push(http, server, "orders/config", {"free": "again"}))[0] == 201  # no schema any more
    status, hist = await call(http, "GET", f"{server.url}/v1/schema-history/orders/config")
    assert status == 200 and [e["message"] for e in hist["entries"]] == ["", "v2", "v1"]
    assert [e["op"] for e in hist["entries"]] == ["delete", "set", "set"]


async def test_schema_that_current_documents_violate_is_409_unless_forced(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await push(http, server, "orders/config", {"timeout_ms": 0}))[0] == 201
    assert (await push(http, server, "orders/eu", {"timeout_ms": 10}))[0] == 201
    before = await etcd_revision(server)
    status, body = await put_schema(http, server, "orders/", ORDERS)
    assert status == 409 and body["error"]["code"] == "conflict"
    docs = body["error"]["details"]["documents"]
    assert [d["ns"] for d in docs] == ["orders/config"] and docs[0]["violations"][0]["path"] == "$.timeout_ms"
    assert await etcd_revision(server) == before
    status, body = await put_schema(http, server, "orders/", ORDERS, query="?force=true")
    assert status == 201


async def test_invalid_schemas_are_refused(server: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await etcd_revision(server)
    cases = [
        ({"type": "nope"}, "$.type"),
        ({"properties": {"a": {"$ref": "https://example.com/s.json"}}}, "$.properties.a.$ref"),
        ({"properties": {"a": {"pattern": "(?<=x)y"}}}, "$.properties.a.pattern"),
        ({"$ref": "#/$defs/missing"}, "$"),
        ({"$ref": "#"}, "$"),  # infinite recursion: refused, never evaluated at push time
    ]
    for schema, path in cases:
        status, body = await put_schema(http, server, "orders/", schema)
        assert status == 422, (schema, body)
        assert body["error"]["details"]["violations"][0]["path"] == path, body
    for body_text in (b'{"schema": 3}', b'{"schema": {}, "extra": 1}', b"[]"):
        status, body = await call(http, "PUT", f"{server.url}/v1/schemas/orders/", data=body_text,
                                  headers={**server.auth(), "Content-Type": "application/json"})
        assert status == 400 and body["error"]["code"] == "invalid_body", body
    assert (await put_schema(http, server, "Orders/", ORDERS))[0] == 400
    assert (await put_schema(http, server, "orders/", ORDERS, query="?force=maybe"))[0] == 400
    assert await etcd_revision(server) == before


async def test_schema_writes_need_admin(server: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await etcd_revision(server)
    url = f"{server.url}/v1/schemas/orders/"
    status, body = await call(http, "PUT", url, json={"schema": ORDERS})
    assert status == 401 and body["error"]["code"] == "unauthorized", body  # no token at all
    status, body = await call(http, "PUT", url, json={"schema": ORDERS}, headers=server.auth(READER))
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert await etcd_revision(server) == before


async def test_if_match_and_redos_safe_patterns(server: RunningServer, http: aiohttp.ClientSession) -> None:
    status, first = await put_schema(http, server, "orders/", {"properties": {"k": {"pattern": "^(a+)+$"}}})
    assert status == 201
    stale = {**server.auth(), "If-Match": str(first["revision"] - 1)}
    status, _ = await call(http, "PUT", f"{server.url}/v1/schemas/orders/", json={"schema": ORDERS}, headers=stale)
    assert status == 412
    # a catastrophic-backtracking input for Python's re: RE2 answers at once
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _ = await push(http, server, "orders/config", {"k": "a" * 5000 + "!"})
    assert status == 422 and loop.time() - started < 2.0


async def test_scoped_admin_sets_schemas_only_inside_its_scope(
        make_server: Callable[..., Awaitable[RunningServer]], http: aiohttp.ClientSession) -> None:
    scoped = Principal.from_token("team-admin", "team-admin-token", "admin", ["in/"])
    server = await make_server(tokens=(*TEST_PRINCIPALS, scoped))
    headers = server.auth("team-admin-token")
    for target, status in (("in/", 201), ("in/app", 201), ("out/", 403), ("out/app", 403)):
        async with http.put(f"{server.url}/v1/schemas/{target}", json={"schema": {}}, headers=headers) as resp:
            assert resp.status == status, (target, await resp.text())


async def test_a_push_racing_the_schema_check_cannot_slip_in(server: RunningServer) -> None:
    """The documents are read, then a violating push lands before the schema is written: the
    transaction's guard on the documents fails, the retry sees the new document and refuses (409)."""
    runtime = server.runtime
    schemas = server.runtime.schemas
    await runtime.store.push("race/cfg", "config", {"timeout_ms": 5})
    raced = False

    async def read_docs_then_race(prefix: str) -> tuple[int, list[Any]]:
        nonlocal raced
        answer = await runtime.store.list_releases(prefix)
        if not raced:
            raced = True
            await runtime.store.push("race/cfg", "config", {"timeout_ms": "slow"})  # after the read
        return answer

    write = SchemaWrite("race/", ORDERS)
    with pytest.raises(ConflictError) as refused:
        await schemas.write(write, read_docs_then_race, runtime.offload)
    assert [d["ns"] for d in refused.value.details["documents"]] == ["race/cfg"]
    assert raced and (await runtime.store.get("race/cfg")).doc == {"timeout_ms": "slow"}
    with pytest.raises(NotFoundError):
        await schemas.get("race/")


async def test_schemas_set_through_another_replica_bind_every_push_at_once(
    make_server: Any, http: aiohttp.ClientSession
) -> None:
    """A schema set or deleted through replica B binds pushes through replica A at once, on each key
    that could govern the namespace (itself and its prefixes): a violating push is refused (422)
    with nothing written, and allowed again once the schema is gone.  (A replica that pinned the
    schemas it read last instead of reading them per push was tried: see docs/architecture.md.)"""
    a = await make_server()
    b = await make_server(prefix=a.settings.prefix)
    assert (await push(http, a, "pin/deep/cfg", {"timeout_ms": "slow"}))[0] == 201  # A's last read: no schema
    assert (await push(http, a, "pin/deep/cfg", {"timeout_ms": "slower"}))[0] == 200  # the hinted path
    for target in ("pin/", "pin/deep/", "pin/deep/cfg"):  # each key that could govern the namespace
        assert (await put_schema(http, b, target, ORDERS))[0] == 409  # the current document violates it
        status, _ = await put_schema(http, b, target, ORDERS, query="?force=true")
        assert status == 201
        before = await etcd_revision(a)
        status, body = await push(http, a, "pin/deep/cfg", {"timeout_ms": "late"})
        assert status == 422 and body["error"]["details"]["schema"] == target, (target, body)
        assert await etcd_revision(a) == before
        assert (await push(http, a, "pin/deep/cfg", {"timeout_ms": 7}))[0] == 200
        async with http.delete(f"{b.url}/v1/schemas/{target}", headers=b.auth()) as resp:
            assert resp.status == 200, await resp.text()
        assert (await push(http, a, "pin/deep/cfg", {"timeout_ms": "free again"}))[0] == 200
    versions = [r.version for r in (await a.runtime.store.history("pin/deep/cfg", limit=100)).entries]
    assert versions == list(range(len(versions), 0, -1)) and len(versions) == 8  # none skipped or reused


async def test_schema_list_shows_a_scoped_token_only_its_scope(
        make_server: Callable[..., Awaitable[RunningServer]], http: aiohttp.ClientSession) -> None:
    """Issue 16 item 8: ``GET /v1/schemas`` listed every team's schema targets to any token."""
    scoped = Principal.from_token("team-in", "team-in-token", "reader", ["in/"])
    server = await make_server(tokens=(*TEST_PRINCIPALS, scoped), read_requires_token=True)
    for target in ("in/", "in/app", "out/", "out/app", "inside"):
        assert (await put_schema(http, server, target, {}))[0] == 201
    status, mine = await call(http, "GET", f"{server.url}/v1/schemas", headers=server.auth("team-in-token"))
    assert status == 200 and [s["target"] for s in mine["schemas"]] == ["in/", "in/app"]
    status, everything = await call(http, "GET", f"{server.url}/v1/schemas", headers=server.auth(READER))
    assert status == 200 and len(everything["schemas"]) == 5
    assert (await call(http, "GET", f"{server.url}/v1/schemas"))[0] == 401
