"""Admin API over real sockets against a real etcd: happy paths and every bad input.

Each rejected request is checked to have written nothing: etcd's global
revision must not move (nothing else writes during a test).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from configcenter.codec import dump_yaml
from helpers import READER, RunningServer, envelope

ROUTES = {
    "service": "payment",
    "rules": [{"id": "beta", "match": {"headers": [{"name": "x-release", "exact": "v2-beta"}]},
               "route": {"cluster": "canary"}}],
    "default": {"cluster": "stable"},
}


async def etcd_revision(server: RunningServer) -> int:
    return await server.runtime.store.current_revision()


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.text()
        return resp.status, body


async def test_push_get_list_history_diff_rollback(server: RunningServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.url}/v1/namespaces/payment/routes"
    status, first = await call(http, "PUT", url, json=envelope(ROUTES, "routes", "v1"), headers=server.auth())
    assert status == 201 and first["version"] == 1
    changed = {**ROUTES, "default": {"cluster": "stable-2"}}
    yaml_body = dump_yaml({"kind": "routes", "message": "v2", "doc": changed})
    status, second = await call(http, "PUT", url, data=yaml_body.encode(),
                                headers={**server.auth(), "Content-Type": "application/yaml"})
    assert status == 200 and second["doc"]["default"] == {"cluster": "stable-2"}

    status, current = await call(http, "GET", url)
    assert status == 200 and current["revision"] == second["revision"]
    status, old = await call(http, "GET", f"{url}?revision={first['revision']}")
    assert old["doc"] == ROUTES
    status, listing = await call(http, "GET", f"{server.url}/v1/namespaces")
    assert [n["ns"] for n in listing["namespaces"]] == ["payment/routes"]
    status, hist = await call(http, "GET", f"{url}/history")
    assert [e["message"] for e in hist["entries"]] == ["v2", "v1"]
    status, diff = await call(http, "GET", f"{url}/diff?from={first['revision']}&to={second['revision']}")
    assert diff["changes"] == [{"path": "$.default.cluster", "op": "changed", "old": "stable", "new": "stable-2"}]
    assert "-  cluster: stable\n+  cluster: stable-2" in diff["patch"]

    status, rolled = await call(http, "POST", f"{url}/rollback", json={"to_revision": first["revision"]},
                                headers=server.auth())
    assert status == 200 and rolled["op"] == "rollback" and rolled["from_revision"] == first["revision"]
    status, current = await call(http, "GET", url)
    assert current["doc"] == ROUTES and current["revision"] == rolled["revision"]

    status, decision = await call(http, "POST", f"{url}/route", json={"headers": {"X-Release": "v2-beta"}})
    assert (status, decision["cluster"], decision["rule_id"]) == (200, "canary", "beta")


async def test_delete(server: RunningServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.url}/v1/namespaces/gone/cfg"
    await call(http, "PUT", url, json=envelope({"a": 1}), headers=server.auth())
    status, body = await call(http, "DELETE", url, headers=server.auth())
    assert status == 200 and body["op"] == "delete"
    assert (await call(http, "GET", url))[0] == 404


BAD_REQUESTS = [
    # (name, method, path, kwargs, status, code)
    ("invalid yaml", "PUT", "/v1/namespaces/a/cfg", {"data": b"kind: config\ndoc: [oops\n"}, 400, "invalid_body"),
    ("invalid json", "PUT", "/v1/namespaces/a/cfg",
     {"data": b"{\"kind\": ", "headers": {"Content-Type": "application/json"}}, 400, "invalid_body"),
    ("not an envelope", "PUT", "/v1/namespaces/a/cfg", {"json": [1, 2]}, 400, "invalid_body"),
    ("unknown kind", "PUT", "/v1/namespaces/a/cfg", {"json": {"kind": "nope", "doc": {}}}, 400, "invalid_body"),
    ("schema violation", "PUT", "/v1/namespaces/a/routes",
     {"json": {"kind": "routes", "doc": {"service": "x", "rules": [{"id": "r"}], "default": {"cluster": "c"}}}},
     422, "schema_violation"),
    ("weights do not sum to 100", "PUT", "/v1/namespaces/a/routes",
     {"json": {"kind": "routes", "doc": {"service": "x", "rules": [], "default": {
         "weighted": [{"cluster": "a", "weight": 50}, {"cluster": "b", "weight": 20}]}}}}, 422, "schema_violation"),
    ("bad namespace", "PUT", "/v1/namespaces/Bad_Name", {"json": envelope({})}, 400, "invalid_namespace"),
    ("too many segments", "PUT", "/v1/namespaces/a/b/c/d/e", {"json": envelope({})}, 400, "invalid_namespace"),
    ("reserved last segment", "PUT", "/v1/namespaces/history", {"json": envelope({})}, 400, "invalid_namespace"),
    ("a history path", "PUT", "/v1/namespaces/a/history", {"json": envelope({})}, 405, "method_not_allowed"),
    ("oversized body", "PUT", "/v1/namespaces/a/cfg",
     {"json": envelope({"blob": "x" * 100_000})}, 413, "payload_too_large"),
    ("stale if-match", "PUT", "/v1/namespaces/seed/cfg", {"json": envelope({}), "headers": {"If-Match": "1"}},
     412, "precondition_failed"),
    ("non-numeric if-match", "PUT", "/v1/namespaces/seed/cfg", {"json": envelope({}), "headers": {"If-Match": "x"}},
     400, "invalid_argument"),
    ("rollback to unknown revision", "POST", "/v1/namespaces/seed/cfg/rollback", {"json": {"to_revision": 999999}},
     404, "not_found"),
    ("rollback body", "POST", "/v1/namespaces/seed/cfg/rollback", {"json": {"to_revision": "3"}}, 400, "invalid_body"),
    ("delete unknown", "DELETE", "/v1/namespaces/never/pushed", {}, 404, "not_found"),
]


@pytest.mark.parametrize(("name", "method", "path", "kwargs", "status", "code"), BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_input_is_rejected_and_writes_nothing(
    server: RunningServer, http: aiohttp.ClientSession,
    name: str, method: str, path: str, kwargs: dict[str, Any], status: int, code: str,
) -> None:
    seeded = await call(http, "PUT", f"{server.url}/v1/namespaces/seed/cfg", json=envelope({"v": 0}),
                        headers=server.auth())
    await call(http, "PUT", f"{server.url}/v1/namespaces/seed/cfg", json=envelope({"v": 1}), headers=server.auth())
    assert seeded[0] == 201
    before = await etcd_revision(server)
    headers = {**server.auth(), **kwargs.pop("headers", {})}
    got_status, body = await call(http, method, server.url + path, headers=headers, **kwargs)
    assert got_status == status, body
    assert body["error"]["code"] == code and body["error"]["message"]
    assert await etcd_revision(server) == before, f"{name}: a rejected request changed etcd"


async def test_schema_violation_names_the_paths(server: RunningServer, http: aiohttp.ClientSession) -> None:
    doc = {"service": "x", "rules": [{"id": "r", "route": {"cluster": 5}}], "default": {"cluster": "c"}}
    status, body = await call(http, "PUT", f"{server.url}/v1/namespaces/a/routes",
                              json=envelope(doc, "routes"), headers=server.auth())
    assert status == 422
    paths = [v["path"] for v in body["error"]["details"]["violations"]]
    assert any(p.startswith("$.rules[0].route") for p in paths), paths


async def test_auth_roles(server: RunningServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.url}/v1/namespaces/auth/cfg"
    before = await etcd_revision(server)
    assert (await call(http, "PUT", url, json=envelope({})))[0] == 401
    assert (await call(http, "PUT", url, json=envelope({}), headers=server.auth("wrong")))[0] == 401
    assert (await call(http, "PUT", url, json=envelope({}), headers=server.auth(READER)))[0] == 403
    assert await etcd_revision(server) == before
    assert (await call(http, "GET", f"{server.url}/v1/namespaces", headers=server.auth(READER)))[0] == 200


async def test_reads_can_require_a_token(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(read_requires_token=True)
    assert (await call(http, "GET", f"{server.url}/v1/namespaces"))[0] == 401
    assert (await call(http, "GET", f"{server.url}/v1/namespaces", headers=server.auth(READER)))[0] == 200


async def test_no_writer_token_means_read_only(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(tokens={})
    status, body = await call(http, "PUT", f"{server.url}/v1/namespaces/a/cfg", json=envelope({}))
    assert status == 403 and "no writer token" in body["error"]["message"]


async def test_health_ready_metrics(server: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await call(http, "GET", f"{server.url}/healthz")) == (200, {"status": "ok"})
    status, ready = await call(http, "GET", f"{server.url}/readyz")
    assert status == 200 and ready["status"] == "ready"
    status, text = await call(http, "GET", f"{server.url}/metrics")
    assert status == 200 and "configcenter_applied_revision" in text
    assert (await call(http, "GET", f"{server.url}/v1/nothing-here"))[0] == 404


@pytest.mark.slow
async def test_etcd_down_writes_503_reads_stale(make_server: Any, own_etcd: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(cluster=own_etcd)
    url = f"{server.url}/v1/namespaces/a/cfg"
    await call(http, "PUT", url, json=envelope({"v": 1}), headers=server.auth())
    own_etcd.members[0].stop()
    status, body = await call(http, "PUT", url, json=envelope({"v": 2}), headers=server.auth())
    assert status == 503 and body["error"]["code"] == "etcd_unavailable"
    async with http.get(url) as resp:
        assert resp.status == 200 and (await resp.json())["doc"] == {"v": 1}
        assert float(resp.headers["X-Configcenter-Stale"]) >= 0
    status, ready = await call(http, "GET", f"{server.url}/readyz")
    assert status == 503 and ready["status"] == "degraded"
    own_etcd.members[0].start()
    own_etcd.members[0].wait_ready()
    status, _ = await call(http, "PUT", url, json=envelope({"v": 3}), headers=server.auth())
    assert status == 200
    assert (await call(http, "GET", url))[1]["doc"] == {"v": 3}
    own_etcd_after = await etcd_revision(server)
    assert own_etcd_after > 0


async def test_pushes_through_two_replicas_and_at_once_lose_nothing(
    make_server: Any, http: aiohttp.ClientSession
) -> None:
    """Pushes alternating between two replicas, then bursts of concurrent pushes through both: each
    transaction is guarded by the document's mod_revision and the new history key, so the losers of a
    race retry; every push lands, versions are consecutive, the last write is the document."""
    a = await make_server()
    b = await make_server(prefix=a.settings.prefix)
    statuses = []
    for i in range(10):
        replica = (a, b)[i % 2]
        statuses.append((await call(http, "PUT", f"{replica.url}/v1/namespaces/two/cfg",
                                    json=envelope({"i": i}), headers=replica.auth()))[0])
    burst = await asyncio.gather(*[call(http, "PUT", f"{r.url}/v1/namespaces/two/cfg", json=envelope({"burst": j}),
                                        headers=r.auth()) for j, r in enumerate([a, b] * 4)])
    assert statuses == [201] + [200] * 9 and [s for s, _ in burst] == [200] * 8
    versions = [r.version for r in (await a.runtime.store.history("two/cfg", limit=100)).entries]
    assert versions == list(range(18, 0, -1))
    last = max(burst, key=lambda sb: sb[1]["revision"])[1]
    assert (await a.runtime.store.get("two/cfg")).doc == last["doc"]
