"""Canary releases through the API (issue 18): real etcd, real servers on real sockets, real SDKs.

A canary lives inside ``docs/<ns>``'s record (``docs/architecture.md``, "Canary releases"): start,
grow, abort and promote are releases of the namespace, so history, GET, watch (change, reset,
resume) and replicas carry them with no change to the watch pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.errors import InvalidNamespaceError
from configcenter.model import validate_namespace
from configcenter.server.settings import WatchTuning
from configcenter_sdk import ConfigClient
from configcenter_sdk.canary import CANARY_SEED
from configcenter_sdk.routing import stable_bucket
from helpers import READER, RunningServer, SSEStream, eventually

NS = "shop/cfg"
TTL = 2.0
FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=TTL)
STRICT_REGEX = "v[0-9]+-(alpha|beta|gamma)"  # RE2 program size 24: the server allows 100, a strict SDK 20


async def call(http: aiohttp.ClientSession, server: RunningServer, method: str, path: str, expect: int,
               token: str | None = None, **kw: Any) -> Any:
    headers = {**server.auth(*(token,) if token else ()), **kw.pop("headers", {})}
    async with http.request(method, f"{server.url}{path}", headers=headers, **kw) as resp:
        text = await resp.text()
        assert resp.status == expect, text
        return orjson.loads(text) if text else None


async def push(http: aiohttp.ClientSession, server: RunningServer, doc: dict[str, Any], ns: str = NS,
               kind: str = "config") -> dict[str, Any]:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json={"kind": kind, "doc": doc},
                        headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


def canary_path(ns: str = NS) -> str:
    return f"/v1/namespaces/{ns}/canary"


async def start(http: aiohttp.ClientSession, server: RunningServer, doc: dict[str, Any], target: dict[str, Any],
                expect: int = 201, ns: str = NS, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    return await call(http, server, "POST", canary_path(ns), expect, json={"doc": doc, "target": target, **extra},
                      headers=headers or {})


async def history(http: aiohttp.ClientSession, server: RunningServer, ns: str = NS) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = (await call(http, server, "GET", f"/v1/namespaces/{ns}/history", 200))["entries"]
    return entries


async def test_start_grow_promote_and_abort_are_releases_in_history(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    base = await push(http, server, {"limit": 1})
    started = await start(http, server, {"limit": 2}, {"percent": 10}, message="try 2",
                          headers={"X-Request-ID": "trace-start"})
    assert started["op"] == "canary_start" and started["doc"] == {"limit": 1} and started["version"] == 2
    canary = started["canary"]
    assert canary["started"] == started["revision"] > base["revision"]
    assert canary["target"] == {"percent": 10} and canary["candidate"] == {"kind": "config", "doc": {"limit": 2}}
    assert (canary["principal"], canary["message"], canary["abort_on_reject"]) == ("test-writer", "try 2", False)
    assert canary["trace_id"] == "trace-start"
    got = await call(http, server, "GET", f"/v1/namespaces/{NS}", 200)
    assert got["doc"] == {"limit": 1} and got["canary"] == canary  # base and candidate

    grown = await call(http, server, "PATCH", canary_path(), 200, json={"target": {"percent": 50}, "message": "50"})
    assert grown["op"] == "canary_update" and grown["canary"]["started"] == canary["started"]
    assert grown["canary"]["target"] == {"percent": 50} and grown["canary"]["candidate"] == canary["candidate"]

    promoted = await call(http, server, "POST", f"/v1/namespaces/{NS}/promote", 200, json={"message": "ship"})
    assert promoted["op"] == "promote" and promoted["doc"] == {"limit": 2} and "canary" not in promoted
    assert promoted["from_canary"] == canary["started"]
    await start(http, server, {"limit": 3}, {"labels": {"zone": "az1"}})
    aborted = await call(http, server, "DELETE", canary_path(), 200, params={"message": "not now"})
    assert aborted["op"] == "canary_abort" and aborted["doc"] == {"limit": 2} and "canary" not in aborted
    assert (await call(http, server, "GET", f"/v1/namespaces/{NS}", 200))["doc"] == {"limit": 2}

    entries = await history(http, server)
    assert [e["op"] for e in entries] == ["canary_abort", "canary_start", "promote", "canary_update",
                                          "canary_start", "push"]
    assert entries[2]["from_canary"] == canary["started"] and entries[4]["trace_id"] == "trace-start"
    assert all(e["principal"] == "test-writer" for e in entries)
    assert "doc" not in entries[1]["canary"]["candidate"] and entries[1]["canary"]["candidate"]["kind"] == "config"
    at_start = await call(http, server, "GET", f"/v1/namespaces/{NS}", 200, params={"revision": canary["started"]})
    assert at_start["canary"]["candidate"]["doc"] == {"limit": 2}  # a past release keeps its canary
    audit = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "configcenter.audit"]
    assert [(a["action"], a["method"]) for a in audit if a["action"] in ("canary", "promote")] == [
        ("canary", "POST"), ("canary", "PATCH"), ("promote", "POST"), ("canary", "POST"), ("canary", "DELETE")]


async def test_push_and_delete_wait_for_the_canary_and_a_rollback_ends_it(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    first = await push(http, server, {"limit": 1})
    await push(http, server, {"limit": 2})
    started = await start(http, server, {"limit": 3}, {"instances": ["web-1"]})
    for method, kw in (("PUT", {"json": {"kind": "config", "doc": {"limit": 9}}}), ("DELETE", {})):
        refused = await call(http, server, method, f"/v1/namespaces/{NS}", 409, **kw)
        assert f"has an active canary started at revision {started['revision']}" in refused["error"]["message"]
        assert "promote or abort it first" in refused["error"]["message"]
    again = await start(http, server, {"limit": 4}, {"percent": 5}, expect=409)
    assert "start a second canary" in again["error"]["message"]
    assert len(await history(http, server)) == 3  # nothing written

    rolled = await call(http, server, "POST", f"/v1/namespaces/{NS}/rollback", 200,
                        json={"to_revision": first["revision"]})
    assert rolled["op"] == "rollback" and rolled["doc"] == {"limit": 1} and "canary" not in rolled
    assert (await push(http, server, {"limit": 5}))["op"] == "push"  # the canary is over
    await call(http, server, "POST", f"/v1/namespaces/{NS}/promote", 409)


async def test_bad_requests_are_clear_and_write_nothing(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(etcd_max_request_bytes=100_000)
    await push(http, server, {"blob": "x" * 30_000})
    before = await server.runtime.store.current_revision()
    bad_targets = [({"percent": 200}, "percent"), ({"percent": True}, "percent"), ({"zone": "a"}, "unknown fields"),
                   ({}, "labels, instances or a percent"), ([], "mapping"), ({"instances": "web-1"}, "instances"),
                   ({"labels": {"zone": 1}}, "labels")]
    for target, words in bad_targets:
        answer = await start(http, server, {"v": 1}, target, expect=400)  # type: ignore[arg-type]
        assert words in answer["error"]["message"], (target, answer)
    await call(http, server, "POST", canary_path(), 400, json={"doc": {"v": 1}})  # no target
    await call(http, server, "POST", canary_path(), 400, json={"doc": {"v": 1}, "target": {"percent": 1},
                                                              "abort_on_reject": "yes"})
    await call(http, server, "POST", canary_path(), 400, json={"doc": {"v": 1}, "target": {"percent": 1}, "x": 1})
    await start(http, server, {"v": 1}, {"percent": 1}, expect=404, ns="no/such")
    await start(http, server, {"rules": "nope"}, {"percent": 1}, expect=422, kind="routes")
    promote_path = f"/v1/namespaces/{NS}/promote"
    for method, path in (("PATCH", canary_path()), ("DELETE", canary_path()), ("POST", promote_path)):
        body = {"target": {"percent": 5}} if method == "PATCH" else None
        answer = await call(http, server, method, path, 409, json=body)
        assert "has no active canary" in answer["error"]["message"]
        await call(http, server, method, path.replace(NS, "no/such"), 404, json=body)
    await call(http, server, "POST", canary_path(), 403, token=READER, json={"doc": {"v": 1}, "target": {"percent": 1}})
    await call(http, server, "POST", canary_path(), 412, json={"doc": {"v": 1}, "target": {"percent": 1}},
               headers={"If-Match": "1"})
    too_big = await start(http, server, {"blob": "y" * 30_000}, {"percent": 10}, expect=413)
    assert "canary" in too_big["error"]["message"] and "4 documents" in too_big["error"]["message"]
    # "canary" and "promote" are sub-resources, never namespace names
    await call(http, server, "PUT", "/v1/namespaces/shop/canary", 405, json={"kind": "config", "doc": {}})
    with pytest.raises(InvalidNamespaceError, match="reserved word 'promote'"):
        validate_namespace("shop/promote")
    assert await server.runtime.store.current_revision() == before  # nothing was written
    await start(http, server, {"v": 1}, {"percent": 1})
    await call(http, server, "PATCH", canary_path(), 400, json={"target": {"percent": -1}})
    await call(http, server, "PATCH", canary_path(), 400, json={"target": {"percent": 5}, "doc": {}})
    await call(http, server, "POST", f"/v1/namespaces/{NS}/promote", 400, json={"message": 5})


@asynccontextmanager
async def watch(http: aiohttp.ClientSession, server: RunningServer, resume: str | None = None
                ) -> AsyncIterator[SSEStream]:
    headers = {"Last-Event-ID": resume} if resume else {}
    async with http.get(f"{server.url}/v1/watch", params={"ns": "shop/"}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        yield SSEStream(resp)


async def test_a_replica_started_mid_canary_serves_it_and_resume_replays_canary_ops(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    a = await make_server()
    await push(http, a, {"limit": 1})
    started = await start(http, a, {"limit": 2}, {"percent": 10})
    b = await make_server(prefix=a.prefix)  # starts with the canary already in etcd
    got = await call(http, b, "GET", f"/v1/namespaces/{NS}", 200)
    assert got["canary"] == started["canary"] and got["doc"] == {"limit": 1}
    async with watch(http, b) as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["namespaces"][NS]["canary"] == started["canary"]

    grown = await call(http, a, "PATCH", canary_path(), 200, json={"target": {"percent": 50}})
    promoted = await call(http, a, "POST", f"/v1/namespaces/{NS}/promote", 200)
    async with watch(http, b, resume=reset.raw_id) as stream:
        changes = await stream.changes(2)
    assert [(c.id, c.data["op"]) for c in changes] == [(grown["revision"], "canary_update"),
                                                     (promoted["revision"], "promote")]
    assert changes[0].data["canary"]["target"] == {"percent": 50} and changes[0].data["doc"] == {"limit": 1}
    assert changes[1].data["doc"] == {"limit": 2} and "canary" not in changes[1].data


def table(cluster: str, regex: str | None = None) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [{"id": "all", "route": {"cluster": cluster}}]
    if regex is not None:
        rules.insert(0, {"id": "rx", "match": {"headers": [{"name": "x-release", "regex": regex}]},
                         "route": {"cluster": "special"}})
    return {"service": "payment", "rules": rules, "default": {"cluster": cluster}}


def sdk(server: RunningServer, ns: str, instance_id: str, **kw: Any) -> ConfigClient:
    return ConfigClient([server.url], [ns], service="payment", instance_id=instance_id, backoff_max=0.3,
                        idle_timeout=2.0, **kw)


def ids_in_bucket(below: int, count: int, *, outside: bool = False) -> list[str]:
    """``count`` instance ids whose canary bucket is below ``below`` (or at/above it, ``outside``)."""
    found = [f"web-{i}" for i in range(10_000)
             if (stable_bucket(f"web-{i}", CANARY_SEED) < below) != outside]
    return found[:count]


async def rollout(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> dict[str, Any]:
    body: dict[str, Any] = await call(http, server, "GET", f"/v1/namespaces/{ns}/rollout", 200)
    return body


async def test_rollout_splits_by_track_and_a_rejecting_member_aborts_the_canary(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    a = await make_server(watch=FAST)
    b = await make_server(watch=FAST, prefix=a.prefix)
    ns = "payment/routes"
    await push(http, a, table("v1"), ns=ns, kind="routes")
    member, strict = ids_in_bucket(10, 2)
    (other,) = ids_in_bucket(50, 1, outside=True)
    async with AsyncExitStack() as stack:
        ok = await stack.enter_async_context(sdk(a, ns, member))
        base = await stack.enter_async_context(sdk(b, ns, other))
        picky = await stack.enter_async_context(sdk(b, ns, strict, max_regex_program_size=20))

        started = await start(http, a, table("v2"), {"percent": 10}, ns=ns)

        async def settled(server: RunningServer) -> dict[str, Any] | None:
            body = await rollout(http, server, ns)
            return body if body.get("canary", {}).get("complete") and body["base"]["complete"] \
                and body["summary"]["subscribed"] == 3 else None

        body = await eventually(lambda: settled(b), timeout=15)
        assert body["canary"]["summary"]["applied"] == 2 and body["base"]["summary"]["applied"] == 1
        assert body["canary"]["started"] == started["revision"] and body["canary"]["target"] == {"percent": 10}
        tracks = {row["id"]: row["track"] for row in body["instances"]}
        assert tracks == {member: "canary", strict: "canary", other: "base"}
        assert ok.route("payment", {}).cluster == "v2" and base.route("payment", {}).cluster == "v1"
        assert picky.route("payment", {}).cluster == "v2"

        # a candidate the strict member cannot compile: it rejects it, and the canary aborts itself
        await call(http, a, "POST", f"/v1/namespaces/{ns}/promote", 200)
        bad = await start(http, a, table("v3", STRICT_REGEX), {"percent": 10}, ns=ns, abort_on_reject=True)

        async def aborted() -> dict[str, Any] | None:
            entries = await history(http, a, ns)
            return entries[0] if entries[0]["op"] == "canary_abort" else None

        entry = await eventually(aborted, timeout=15)
        assert entry["message"].startswith(f"aborted: instance {strict} rejected revision {bad['revision']}: ")
        assert "program size 24 exceeds the limit of 20" in entry["message"]
        assert entry["principal"] == "configcenter"
        assert a.runtime.canary_guard.aborted + b.runtime.canary_guard.aborted == 1
        await eventually(lambda: ok.route("payment", {}).cluster == "v2", timeout=10)  # back on the base
        assert picky.route("payment", {}).cluster == "v2"
