"""ConfigClient against a real etcd and a real server: apply, callbacks, rejection, gaps."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from configcenter_sdk import ConfigClient, RouteTableError, UnknownServiceError
from configcenter_sdk._sse import SSEParser
from configcenter_sdk._state import Incoming, classify_change, parse_release
from helpers import RunningServer, eventually, pushed_status

CANARY: dict[str, Any] = {
    "service": "payment",
    "rules": [{"id": "beta", "match": {"headers": [{"name": "x-release", "exact": "v2-beta"}]},
               "route": {"cluster": "canary"}}],
    "default": {"cluster": "stable"},
}


def versioned(n: int) -> dict[str, Any]:
    """Table version n: every request goes to cluster v{n} by rule r{n}."""
    return {"service": "payment", "rules": [{"id": f"r{n}", "route": {"cluster": f"v{n}"}}],
            "default": {"cluster": f"v{n}"}}


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any],
               kind: str = "routes") -> dict[str, Any]:
    body = {"kind": kind, "doc": doc, "message": "test"}
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=body, headers=server.auth()) as resp:
        result: dict[str, Any] = await resp.json()
        assert resp.status == pushed_status(result), result
        return result


def client_for(*urls: str, namespaces: tuple[str, ...] = ("payment/routes",), **kw: Any) -> ConfigClient:
    kw.setdefault("backoff_max", 0.3)
    kw.setdefault("idle_timeout", 1.5)
    return ConfigClient(list(urls), list(namespaces), **kw)


def test_sse_parser_handles_split_frames_and_crlf() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 5\r\nevent: change\r\ndata: {\"a\"") == []
    events = parser.feed(b": 1}\r\n\r\n: comment\n\nevent: invalid\ndata: x\n\n")
    assert [(e.event, e.data, e.id) for e in events] == [("change", '{"a": 1}', "5"), ("invalid", "x", None)]
    assert parser.feed(b"data: y\r") == []
    assert [(e.data) for e in parser.feed(b"\n\r\n")] == ["y"]


async def test_route_table_push_is_applied(server: RunningServer, http: aiohttp.ClientSession) -> None:
    applied: dict[int, float] = {}
    async with client_for(server.url) as client:
        assert client.mode == "live"
        with pytest.raises(UnknownServiceError):
            client.route("payment", {})
        client.on_change("payment/routes", lambda ns, doc, rev: applied.__setitem__(rev, time.perf_counter()))
        started = time.perf_counter()
        release = await push(http, server, "payment/routes", CANARY)
        await eventually(lambda: release["revision"] in applied)
        print(f"push request start -> SDK apply: {(applied[release['revision']] - started) * 1000:.1f} ms")
        assert client.route("payment", {"X-Release": "v2-beta"}).cluster == "canary"
        decision = client.route("payment", {"x-release": "v1"})
        assert (decision.cluster, decision.rule_id, decision.revision) == ("stable", "default", release["revision"])
        status = client.status()
        assert status.mode == "live" and status.server == server.url and status.revision >= release["revision"]
        ns_status = status.namespaces["payment/routes"]
        assert (ns_status.source, ns_status.stale, ns_status.revision) == ("live", False, release["revision"])


async def test_config_changes_and_deletion_reach_listeners(server: RunningServer,
                                                          http: aiohttp.ClientSession) -> None:
    seen: list[tuple[str, Any, int]] = []

    async def async_listener(ns: str, doc: Any, rev: int) -> None:
        seen.append((ns, doc, rev))

    async with client_for(server.url, namespaces=("orders/",)) as client:
        client.on_change("orders/", async_listener)
        first = await push(http, server, "orders/config", {"limit": 1}, kind="config")
        second = await push(http, server, "orders/config", {"limit": 2}, kind="config")
        await eventually(lambda: client.get("orders/config") == {"limit": 2})
        async with http.delete(f"{server.url}/v1/namespaces/orders/config", headers=server.auth()) as resp:
            deleted = (await resp.json())["revision"]
        await eventually(lambda: client.get("orders/config") is None)
        assert seen == [("orders/config", {"limit": 1}, first["revision"]),
                        ("orders/config", {"limit": 2}, second["revision"]),
                        ("orders/config", None, deleted)]
        assert "orders/config" not in client.status().namespaces


async def test_uncompilable_table_is_rejected_and_last_good_kept(server: RunningServer,
                                                                http: aiohttp.ClientSession) -> None:
    errors: list[tuple[str, int, Exception]] = []
    async with client_for(server.url) as client:
        client.on_error(lambda ns, rev, exc: errors.append((ns, rev, exc)))
        good = await push(http, server, "payment/routes", CANARY)
        await eventually(lambda: client.status().namespaces.get("payment/routes"))
        # the API refuses such a table, so write it through the store (as a bad record in etcd would arrive)
        bad_doc = {**CANARY, "rules": [CANARY["rules"][0], CANARY["rules"][0]]}  # duplicate rule id
        bad = await server.runtime.store.push("payment/routes", "routes", bad_doc)
        await eventually(lambda: errors)
        assert errors[0][:2] == ("payment/routes", bad.revision) and isinstance(errors[0][2], RouteTableError)
        assert client.route("payment", {}).revision == good["revision"]
        assert client.status().errors[-1].revision == bad.revision


def test_classify_change_decisions() -> None:
    change = Incoming("a/b", 10, "config", {}, prev_revision=7)
    assert classify_change(None, 0, change) == "apply"
    assert classify_change(7, 8, change) == "apply"
    assert classify_change(10, 0, change) == "duplicate"
    assert classify_change(5, 11, change) == "duplicate"
    assert classify_change(7, 10, change) == "apply"  # another namespace of the transaction at the stream revision
    assert classify_change(5, 9, change) == "gap"


async def test_gap_fetches_snapshot_from_server(server: RunningServer, http: aiohttp.ClientSession) -> None:
    releases = [await push(http, server, "payment/routes", versioned(n)) for n in range(1, 5)]
    changes = []
    prev = 0
    for release in releases:
        changes.append(parse_release({**release, "prev_revision": prev}))
        prev = release["revision"]
    client = client_for(server.url)
    seen: list[int] = []
    client.on_change(None, lambda ns, doc, rev: seen.append(rev))
    client._session = aiohttp.ClientSession()  # exercise the decision path without a subscription
    try:
        await client._apply_change(changes[0])
        await client._apply_change(changes[2])  # the change at releases[1] was "missed"
    finally:
        await client._session.close()
    assert client.status().gaps == 1
    assert seen == [releases[0]["revision"], releases[3]["revision"]]  # fetched the newest snapshot
    assert client.route("payment", {}).cluster == "v4"


async def test_unreachable_backend_without_snapshot(tmp_path: Any) -> None:
    from configcenter.cli.embedded_etcd import free_port
    from configcenter_sdk import BackendUnavailableError

    url = f"http://127.0.0.1:{free_port()}"

    async def start_and_close(**kw: Any) -> None:
        async with client_for(url, **kw) as client:
            assert client.mode == "fallback" and client.status().namespaces == {}

    # start_timeout of an hour: start() returns once every server failed once, not at the timeout
    # (the 30 s are a hang guard, no timing)
    await asyncio.wait_for(start_and_close(cache_dir=tmp_path, start_timeout=3600), 30)
    with pytest.raises(BackendUnavailableError):
        await asyncio.wait_for(start_and_close(require_initial=True, start_timeout=3600), 30)


async def test_resume_after_reconnect_has_no_duplicates(server: RunningServer, http: aiohttp.ClientSession) -> None:
    seen: list[int] = []
    async with client_for(server.url) as client:
        client.on_change(None, lambda ns, doc, rev: seen.append(rev))
        for n in range(3):
            await push(http, server, "payment/routes", versioned(n))
        await eventually(lambda: len(seen) == 3)
        before = client.status().revision
        # drop the live connection: the client resumes with Last-Event-ID
        assert client._session is not None
        await client._session.close()
        client._session = aiohttp.ClientSession()
        await eventually(lambda: client.status().reconnects >= 1 and client.mode == "live")
        await push(http, server, "payment/routes", versioned(9))
        await eventually(lambda: len(seen) == 4)
        # a marker instead of "wait a while": events arrive in order, so a duplicate would come before it
        marker = await push(http, server, "payment/routes", versioned(10))
        await eventually(lambda: marker["revision"] in seen)
        assert len(seen) == 5 and seen == sorted(set(seen)) and client.status().revision > before
