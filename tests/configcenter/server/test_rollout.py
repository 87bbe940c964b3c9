"""Rollout visibility: real ConfigClients report to two replicas on one real etcd (issue 10)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.errors import InvalidNamespaceError
from configcenter.model import validate_namespace
from configcenter.server.fleet import classify
from configcenter.server.security import Principal
from configcenter.server.settings import WatchTuning
from configcenter_sdk import ConfigClient
from helpers import READER, TEST_PRINCIPALS, RunningServer, eventually, pushed_status

TTL = 2.0
FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=TTL)
# RE2 program size 24: accepted by the server (limit 100), rejected by an SDK limited to 20
STRICT_REGEX = "v[0-9]+-(alpha|beta|gamma)"


def table(cluster: str, regex: str | None = None) -> dict[str, Any]:
    rules: list[dict[str, Any]] = [{"id": "all", "route": {"cluster": cluster}}]
    if regex is not None:
        rules.insert(0, {"id": "rx", "match": {"headers": [{"name": "x-release", "regex": regex}]},
                         "route": {"cluster": "canary"}})
    return {"service": "payment", "rules": rules, "default": {"cluster": cluster}}


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any],
               kind: str = "routes") -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json={"kind": kind, "doc": doc},
                        headers=server.auth()) as resp:
        answer = await resp.json()
        assert resp.status == pushed_status(answer), answer
        return int(answer["revision"])


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with http.get(url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def client(url: str, namespaces: list[str], service: str, **kw: Any) -> ConfigClient:
    return ConfigClient([url], namespaces, service=service, backoff_max=0.3, idle_timeout=2.0, **kw)


@pytest.fixture
async def replicas(make_server: Any) -> tuple[RunningServer, RunningServer]:
    first = await make_server(watch=FAST)
    second = await make_server(watch=FAST, prefix=first.prefix)
    return first, second


async def rollout_of(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> dict[str, Any]:
    result: dict[str, Any] = await get_json(http, f"{server.url}/v1/namespaces/{ns}/rollout")
    return result


async def test_rollout_seen_from_both_replicas(replicas: tuple[RunningServer, RunningServer],
                                               http: aiohttp.ClientSession) -> None:
    a, b = replicas
    await push(http, a, "payment/routes", table("v1"))
    await push(http, a, "orders/config", {"limit": 1}, kind="config")
    async with AsyncExitStack() as stack:
        checkout = await stack.enter_async_context(client(a.url, ["payment/routes"], "checkout",
                                                          labels={"zone": "eu-1"}))
        billing = await stack.enter_async_context(client(b.url, ["payment/", "orders/config"], "billing"))
        strict = await stack.enter_async_context(client(b.url, ["payment/routes"], "checkout",
                                                        max_regex_program_size=20))
        revision = await push(http, b, "payment/routes", table("v2", STRICT_REGEX))

        async def settled() -> dict[str, Any] | None:
            body = await rollout_of(http, a, "payment/routes")
            return body if body["summary"]["pending"] == 0 and body["summary"]["subscribed"] == 3 else None

        body = await eventually(settled, timeout=10)
        assert body["revision"] == revision == body["current_revision"]
        assert body["summary"] == {"subscribed": 3, "applied": 2, "pending": 0, "rejected": 1, "fallback": 0}
        assert body["complete"] is False
        rows = {row["id"]: row for row in body["instances"]}
        assert rows[checkout.identity.instance_id]["status"] == "applied"
        assert rows[billing.identity.instance_id]["applied"] == revision
        bad = rows[strict.identity.instance_id]
        assert bad["status"] == "rejected" and bad["rejected"] == revision and bad["applied"] < revision
        assert "program size 24 exceeds the limit of 20" in bad["reason"]
        assert strict.route("payment", {}).cluster == "v1"  # it kept its last good table
        assert (await rollout_of(http, b, "payment/routes"))["summary"] == body["summary"]  # the other replica
        fleet = await get_json(http, f"{b.url}/v1/instances", params={"service": "checkout"})
        assert {i["id"] for i in fleet["instances"]} == {checkout.identity.instance_id, strict.identity.instance_id}
        labels = next(i for i in fleet["instances"] if i["id"] == checkout.identity.instance_id)["labels"]
        assert labels["zone"] == "eu-1" and labels["pid"] == str(os.getpid()) and labels["sdk_version"]
        orders = await get_json(http, f"{a.url}/v1/instances", params={"ns": "orders/config"})
        assert [i["id"] for i in orders["instances"]] == [billing.identity.instance_id]
        assert (await rollout_of(http, a, "orders/config"))["complete"] is True

        fixed = await push(http, a, "payment/routes", table("v3"))
        done = await eventually(lambda: _complete(http, b, "payment/routes"), timeout=10)
        assert done["revision"] == fixed and done["summary"]["applied"] == 3
        assert "rejected" not in next(r for r in done["instances"] if r["id"] == strict.identity.instance_id)


async def _complete(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> dict[str, Any] | None:
    body = await rollout_of(http, server, ns)
    return body if body["complete"] and body["summary"]["subscribed"] else None


async def test_goodbye_and_lease_expiry_of_a_killed_instance(replicas: tuple[RunningServer, RunningServer],
                                                             http: aiohttp.ClientSession) -> None:
    a, b = replicas
    await push(http, a, "payment/routes", table("v1"))
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, a.url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        killed_id = (await asyncio.to_thread(proc.stdout.readline)).strip()
        async with client(b.url, ["payment/routes"], "polite") as polite:
            listed = await eventually(lambda: _ids(http, b, {killed_id, polite.identity.instance_id}), timeout=10)
            assert listed
            polite_id = polite.identity.instance_id
        assert polite_id not in await _ids(http, a, set())  # goodbye: gone at once, not after the TTL
        assert killed_id in await _ids(http, a, set())
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye: only the lease's expiry can remove it
        await eventually(lambda: _gone(http, b, killed_id), timeout=30, interval=0.1)  # 30 s: a hang guard
    finally:
        proc.kill()
        proc.wait()


async def _ids(http: aiohttp.ClientSession, server: RunningServer, wanted: set[str]) -> set[str]:
    fleet = await get_json(http, f"{server.url}/v1/instances")
    ids = {i["id"] for i in fleet["instances"]}
    return ids if wanted <= ids else set()


async def _gone(http: aiohttp.ClientSession, server: RunningServer, iid: str) -> bool:
    return iid not in await _ids(http, server, set())


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from configcenter_sdk import ConfigClient
    async def main():
        async with ConfigClient([sys.argv[1]], ["payment/routes"], service="doomed") as c:
            while c.reports_sent == 0:
                await asyncio.sleep(0.02)
            print(c.identity.instance_id, flush=True)
            await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_a_steady_fleet_writes_nothing(make_server: Any, own_etcd: Any, http: aiohttp.ClientSession) -> None:
    # A private etcd: its revision moves only for this fleet. On the session's shared etcd it also moves when
    # a lease left by an earlier test expires (a report that never said goodbye): that failed this test once.
    a = await make_server(cluster=own_etcd, watch=FAST)
    b = await make_server(cluster=own_etcd, watch=FAST, prefix=a.prefix)
    await push(http, a, "payment/routes", table("v1"))
    async with client(a.url, ["payment/routes"], "s1"), client(b.url, ["payment/routes"], "s2"):
        await eventually(lambda: _applied_by(http, b, "payment/routes", 2), timeout=10)
        # settled: each replica has since answered a report with a keep-alive, so each SDK's state is stored
        settled = _keepalives(a), _keepalives(b)
        await eventually(lambda: _keepalives(a) > settled[0] and _keepalives(b) > settled[1], timeout=10)
        before = await a.runtime.store.current_revision()
        writes = _writes(a) + _writes(b)
        base = _keepalives(a), _keepalives(b)
        # 7 heartbeats each, TTL/3 apart: over two lease lifetimes (without renewals both records would be gone)
        await eventually(lambda: _keepalives(a) >= base[0] + 7 and _keepalives(b) >= base[1] + 7, timeout=30)
        assert await a.runtime.store.current_revision() == before  # not one etcd write
        assert _writes(a) + _writes(b) == writes
        assert (await rollout_of(http, b, "payment/routes"))["summary"]["applied"] == 2


async def _applied_by(http: aiohttp.ClientSession, server: RunningServer, ns: str, count: int) -> bool:
    return bool((await rollout_of(http, server, ns))["summary"]["applied"] == count)


def _writes(server: RunningServer) -> float:
    return server.runtime.metrics.values["configcenter_instance_writes_total"]


def _keepalives(server: RunningServer) -> float:
    return server.runtime.metrics.values["configcenter_instance_keepalives_total"]


async def test_metrics_pending_rejected_and_ack_latency(replicas: tuple[RunningServer, RunningServer],
                                                        http: aiohttp.ClientSession) -> None:
    a, _ = replicas
    await push(http, a, "payment/routes", table("v1"))
    async with client(a.url, ["payment/routes"], "ok"), \
            client(a.url, ["payment/routes"], "strict", max_regex_program_size=20):
        await eventually(lambda: _complete(http, a, "payment/routes"), timeout=10)
        await push(http, a, "payment/routes", table("v2", STRICT_REGEX))

        async def exposed() -> str | None:
            async with http.get(f"{a.url}/metrics") as resp:
                text = await resp.text()
            return text if 'configcenter_rollout_rejected_instances{ns="payment/routes"} 1.0' in text else None

        text = await eventually(exposed, timeout=10)
    assert 'configcenter_rollout_pending_instances{ns="payment/routes"} 0.0' in text
    count = next(line for line in text.splitlines() if line.startswith("configcenter_rollout_ack_seconds_count"))
    assert float(count.split()[1]) >= 1  # the instance that applied v2 acknowledged it


@pytest.fixture
async def guarded(make_server: Any) -> RunningServer:
    scoped = Principal.from_token("payment-reader", "payment-reader-token", "reader", ["payment/"])
    server: RunningServer = await make_server(watch=FAST, read_requires_token=True,
                                              tokens=(*TEST_PRINCIPALS, scoped))
    return server


def report_body(**overrides: Any) -> dict[str, Any]:
    body = {"service": "svc", "labels": {"zone": "a"}, "selectors": ["payment/"], "mode": "live",
            "namespaces": {"payment/routes": {"applied": 5, "source": "live"}}}
    return {**body, **overrides}


async def post_report(http: aiohttp.ClientSession, server: RunningServer, iid: str, body: Any,
                      token: str | None = READER) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(f"{server.url}/v1/instances/{iid}/report", data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_report_auth(guarded: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await guarded.runtime.store.current_revision()
    assert (await post_report(http, guarded, "svc-1", report_body(), token=None))[0] == 401
    outside = report_body(selectors=["orders/"], namespaces={})
    assert (await post_report(http, guarded, "svc-1", outside, token="payment-reader-token"))[0] == 403
    sneaky = report_body(namespaces={"orders/config": {"applied": 1}})
    assert (await post_report(http, guarded, "svc-1", sneaky, token="payment-reader-token"))[0] == 403
    assert await guarded.runtime.store.current_revision() == before
    status, answer = await post_report(http, guarded, "svc-1", report_body(), token="payment-reader-token")
    assert status == 200 and answer["written"] is True and answer["ttl"] == TTL
    status, again = await post_report(http, guarded, "svc-1", report_body(lease=answer["lease"]))
    assert status == 200 and again == {**answer, "written": False}  # a heartbeat: lease renewed only
    held = await guarded.runtime.store.current_revision()
    for foreign in (report_body(lease="1"), report_body(), report_body(lease=answer["lease"][:16])):
        status, stolen = await post_report(http, guarded, "svc-1", foreign)  # never another's record
        assert (status, stolen["error"]["code"]) == (409, "conflict")
    assert await guarded.runtime.store.current_revision() == held


async def test_rollout_is_a_reserved_word(guarded: RunningServer, http: aiohttp.ClientSession) -> None:
    # the path is namespace payment's rollout view, which only reads: 405 naming the methods it has
    async with http.put(f"{guarded.url}/v1/namespaces/payment/rollout", json={"kind": "config", "doc": {}},
                        headers=guarded.auth()) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD"
    with pytest.raises(InvalidNamespaceError, match="reserved word 'rollout'"):  # and no name can end in it
        validate_namespace("payment/rollout")
    async with http.get(f"{guarded.url}/v1/namespaces/payment/none/rollout", headers=guarded.auth(READER)) as resp:
        assert resp.status == 404


def test_classify() -> None:
    inst = {"id": "i", "service": "s", "mode": "live", "selectors": ["payment/"],
            "namespaces": {"payment/routes": {"applied": 5, "rejected": 7, "reason": "bad", "source": "live"}}}
    assert classify(inst, "orders/x", 1) is None
    assert classify(inst, "payment/other", 1)["status"] == "pending"  # type: ignore[index]
    assert classify(inst, "payment/routes", 5)["status"] == "applied"  # type: ignore[index]
    assert classify(inst, "payment/routes", 7)["status"] == "rejected"  # type: ignore[index]
    assert classify(inst, "payment/routes", 8)["status"] == "pending"  # type: ignore[index]
    assert classify({**inst, "mode": "fallback"}, "payment/routes", 8)["status"] == "fallback"  # type: ignore[index]
    assert classify({**inst, "selectors": []}, "any/ns", 1) is not None  # no selectors: everything


async def test_a_report_equal_to_what_another_replica_stored_is_a_heartbeat(
        replicas: tuple[RunningServer, RunningServer], http: aiohttp.ClientSession) -> None:
    """The instance sends back the digest it got stored, so replica caches can never hide a change."""
    a, b = replicas
    live, fallback = report_body(mode="live"), report_body(mode="fallback")

    async def send(server: RunningServer, body: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
        sent = {**body, **({"lease": previous["lease"], "stored": previous["digest"]} if previous else {})}
        status, answer = await post_report(http, server, "flappy-1", sent, token=None)
        assert status == 200, answer
        return answer

    first = await send(a, live, None)  # a remembers: stored 'live'
    second = await send(b, fallback, first)  # fail-over: b stores 'fallback'
    assert second["written"] and second["lease"] == first["lease"]
    third = await send(a, live, second)  # back on a with 'live': a's memory says 'live', etcd says 'fallback'
    assert third["written"] is True
    fleet = await get_json(http, f"{b.url}/v1/instances")
    assert [i["mode"] for i in fleet["instances"] if i["id"] == "flappy-1"] == ["live"]
    fourth = await send(b, live, third)  # b never stored 'live' itself, but the instance did: a heartbeat
    assert fourth["written"] is False


async def test_a_scoped_instance_is_subscribed_only_inside_its_scope(guarded: RunningServer,
                                                                     http: aiohttp.ClientSession) -> None:
    everything = report_body(selectors=[], namespaces={})  # "all namespaces", as its watch would be narrowed
    status, _ = await post_report(http, guarded, "scoped-1", everything, token="payment-reader-token")
    assert status == 200
    fleet = await get_json(http, f"{guarded.url}/v1/instances", headers=guarded.auth(READER))
    assert [i["selectors"] for i in fleet["instances"] if i["id"] == "scoped-1"] == [["payment/"]]
    orders = await get_json(http, f"{guarded.url}/v1/instances", params={"ns": "orders/config"},
                            headers=guarded.auth(READER))
    assert orders["count"] == 0  # a rollout of orders/config does not wait for it
