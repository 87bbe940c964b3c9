"""The SDK's instance identity and reports (``configcenter_sdk._report``) against a real server and etcd."""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import free_port
from configcenter.server.settings import WatchTuning
from configcenter_sdk import ConfigClient, UnknownServiceError
from configcenter_sdk._report import make_identity, sdk_version
from helpers import RunningServer, eventually

FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=3.0)


def test_identity_defaults_and_validation() -> None:
    ident = make_identity("checkout", {"zone": "eu-1"}, None)
    assert ident.instance_id.startswith("checkout-") and len(ident.instance_id) == len("checkout-") + 16
    assert ident.labels == {"host": socket.gethostname(), "pid": str(os.getpid()), "sdk_version": sdk_version(),
                            "zone": "eu-1"}
    assert make_identity(None, None, "my-id").service == "unknown"
    for bad in ({"service": "has space"}, {"instance_id": "-x"}, {"instance_id": "x" * 129},
                {"labels": {"bad key": "v"}}, {"labels": {"k": "v" * 257}},
                {"labels": {f"k{i}": "v" for i in range(14)}}):
        kwargs: dict[str, Any] = {"service": "s", "labels": None, "instance_id": None, **bad}
        with pytest.raises(ValueError):
            make_identity(kwargs["service"], kwargs["labels"], kwargs["instance_id"])
    with pytest.raises(ValueError):
        ConfigClient(["http://127.0.0.1:1"], ["a/b"], service="no spaces please")


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json={"kind": "config", "doc": doc},
                        headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        return int((await resp.json())["revision"])


async def fleet(http: aiohttp.ClientSession, server: RunningServer) -> dict[str, dict[str, Any]]:
    async with http.get(f"{server.url}/v1/instances") as resp:
        assert resp.status == 200
        return {i["id"]: i for i in (await resp.json())["instances"]}


async def test_reports_follow_changes_and_heartbeat(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(watch=FAST)
    first = await push(http, server, "app/config", {"v": 1})
    async with ConfigClient([server.url], ["app/"], service="api", labels={"tier": "web"}, idle_timeout=2.0) as c, \
            ConfigClient([server.url], ["app/"], service="quiet", report=False, idle_timeout=2.0) as quiet:
        await eventually(lambda: c.reports_sent)
        assert c._reporter is not None and c._reporter.heartbeat == pytest.approx(1.0)  # the server's ttl / 3
        listed = (await fleet(http, server))[c.identity.instance_id]
        assert listed["service"] == "api" and listed["labels"]["tier"] == "web" and listed["mode"] == "live"
        assert listed["selectors"] == ["app/"]
        assert listed["namespaces"] == {"app/config": {"applied": first, "source": "live"}}
        second = await push(http, server, "app/config", {"v": 2})

        async def moved() -> bool:
            return bool((await fleet(http, server))[c.identity.instance_id]["namespaces"]["app/config"]["applied"]
                        == second)

        await eventually(moved, timeout=5)
        assert quiet.reports_sent == 0 and quiet.identity.instance_id not in await fleet(http, server)


async def test_reports_retry_after_an_outage_with_the_latest_state(make_server: Any, etcd: Any,
                                                                  http: aiohttp.ClientSession) -> None:
    port = free_port()
    client = ConfigClient([f"http://127.0.0.1:{port}"], ["app/"], service="patient", start_timeout=0.3,
                          backoff_max=0.2, idle_timeout=2.0)
    await client.start()
    try:
        assert client.mode == "fallback"
        assert client._reporter is not None
        await eventually(lambda: client._reporter is not None and client._reporter.failures >= 1, timeout=5)
        with pytest.raises(UnknownServiceError):  # route()/get() answer at once meanwhile (nothing loaded)
            client.route("app", {})
        assert client.get("app/config") is None
        server = await make_server(watch=FAST, port=port)
        revision = await push(http, server, "app/config", {"v": 1})

        async def reported() -> bool:
            item = (await fleet(http, server)).get(client.identity.instance_id)
            return bool(item and item["mode"] == "live" and item["namespaces"].get("app/config", {}).get("applied")
                        == revision)

        await eventually(reported, timeout=15, interval=0.1)
        # what was sent while the server was away is not replayed: one state, at most a write per change
        assert server.runtime.metrics.values["configcenter_instance_writes_total"] <= 3
    finally:
        await client.close()


async def test_a_lost_record_is_registered_again(make_server: Any, http: aiohttp.ClientSession) -> None:
    """The instance's lease expired (here: revoked in etcd behind everyone's back): its next report
    creates the record again under a new capability, which the SDK keeps using."""
    server = await make_server(watch=FAST)
    async with ConfigClient([server.url], ["app/"], service="phoenix", idle_timeout=2.0) as c:
        await eventually(lambda: c.reports_sent)
        reporter = c._reporter
        assert reporter is not None and reporter._lease is not None and len(reporter._lease) == 32
        old = reporter._lease
        lease = server.runtime.client.lease
        assert lease is not None
        await lease.revoke(int(old[:16], 16))
        assert c.identity.instance_id not in await fleet(http, server)

        async def back() -> bool:
            return c.identity.instance_id in await fleet(http, server) and reporter._lease != old

        await eventually(back, timeout=5, interval=0.1)
        sent = reporter.sent
        await eventually(lambda: reporter.sent > sent + 1, timeout=5)  # heartbeats on the new capability
        assert reporter.failures == 0 and c.identity.instance_id in await fleet(http, server)


async def test_a_fixed_id_still_held_waits_for_the_old_lease(make_server: Any, http: aiohttp.ClientSession) -> None:
    """A process restarted with a fixed ``instance_id`` while its predecessor's record is live: 409,
    it waits the server's Retry-After (the TTL) and registers once the old lease expired."""
    server = await make_server(watch=FAST)
    old = {"service": "before", "selectors": ["app/"], "mode": "live", "namespaces": {}}
    async with http.post(f"{server.url}/v1/instances/fixed-1/report", json=old) as resp:
        assert resp.status == 200  # nobody renews it: gone within the TTL
    async with ConfigClient([server.url], ["app/"], service="after", instance_id="fixed-1", idle_timeout=2.0) as c:
        await eventually(lambda: c._reporter is not None and c._reporter.failures >= 1, timeout=5)

        async def registered() -> bool:
            item = (await fleet(http, server)).get("fixed-1")
            return bool(item and item["service"] == "after")

        await eventually(registered, timeout=12, interval=0.2)
        assert c.reports_sent >= 1
