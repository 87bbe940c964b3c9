"""Fault tests: server restart, etcd outage, replica fail-over, start from disk snapshots."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter_sdk import ConfigClient
from configcenter_sdk.snapshot import filename_for
from helpers import RunningServer, eventually

NS = "payment/routes"


def versioned(n: int) -> dict[str, Any]:
    return {"service": "payment", "rules": [{"id": f"r{n}", "route": {"cluster": f"v{n}"}}],
            "default": {"cluster": f"v{n}"}}


async def push(http: aiohttp.ClientSession, server: RunningServer, n: int, ns: str = NS) -> int:
    body = {"kind": "routes", "doc": versioned(n), "message": f"v{n}"}
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=body, headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


async def push_when_ready(http: aiohttp.ClientSession, server: RunningServer, n: int) -> int:
    """Push, retrying while the server answers 503 (etcd coming back)."""
    body = {"kind": "routes", "doc": versioned(n), "message": f"v{n}"}

    async def attempt() -> int | None:
        async with http.put(f"{server.url}/v1/namespaces/{NS}", json=body, headers=server.auth()) as resp:
            return (await resp.json())["revision"] if resp.status in (200, 201) else None

    revision: int = await eventually(attempt, timeout=15, interval=0.2)
    return revision


def client_for(*urls: str, **kw: Any) -> ConfigClient:
    kw.setdefault("backoff_max", 0.3)
    kw.setdefault("idle_timeout", 1.5)
    return ConfigClient(list(urls), [NS], **kw)


def recorder(client: ConfigClient) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    client.on_change(None, lambda ns, doc, rev: seen.append((ns, rev)))
    return seen


def assert_unique_and_ordered(seen: list[tuple[str, int]]) -> None:
    revisions = [rev for _, rev in seen]
    assert len(set(seen)) == len(seen), f"duplicate callbacks: {seen}"
    assert revisions == sorted(revisions), f"callbacks out of order: {seen}"


@pytest.mark.slow
async def test_server_restart_fallback_then_catch_up(make_server: Any, http: aiohttp.ClientSession,
                                                     tmp_path: Path) -> None:
    first = await make_server()
    modes: list[tuple[str, str]] = []
    client = client_for(first.url, cache_dir=tmp_path, on_mode_change=lambda old, new: modes.append((old, new)))
    seen = recorder(client)
    async with client:
        rev1 = await push(http, first, 1)
        await eventually(lambda: ("payment/routes", rev1) in seen)
        await first.stop()
        await eventually(lambda: client.mode == "fallback")
        assert client.route("payment", {}).cluster == "v1"
        entered = client.status().namespaces[NS].age_seconds
        status = await eventually(lambda: (s := client.status().namespaces[NS]).age_seconds > entered and s)
        assert status.stale and status.source == "memory"  # an age that grows while the server is away
        other = await make_server(prefix=first.prefix)  # another replica, elsewhere, while the first is down
        missed = [await push(http, other, n) for n in (2, 3, 4)]
        await other.stop()
        await make_server(port=first.settings.port, prefix=first.prefix)
        await eventually(lambda: client.mode == "live" and client.route("payment", {}).cluster == "v4")
        # the restarted server rebuilds its catch-up ring from history, so every release made
        # meanwhile reaches the client, once each and in order
        await eventually(lambda: seen[-1] == (NS, missed[-1]))
        assert seen == [(NS, rev1)] + [(NS, rev) for rev in missed]
        assert client.status().gaps == 0
        assert modes[-2:] == [("live", "fallback"), ("fallback", "live")]
        assert client.status().namespaces[NS].stale is False


@pytest.mark.slow
async def test_etcd_outage_keeps_routing(make_server: Any, own_etcd: EtcdCluster,
                                         http: aiohttp.ClientSession) -> None:
    server = await make_server(cluster=own_etcd)
    client = client_for(server.url)
    seen = recorder(client)
    async with client:
        rev1 = await push(http, server, 1)
        await eventually(lambda: (NS, rev1) in seen)
        member = own_etcd.members[0]
        await asyncio.to_thread(member.stop)
        await eventually(lambda: client.status().server_stale, timeout=10)
        assert client.route("payment", {}).cluster == "v1"
        assert client.status().namespaces[NS].stale
        await asyncio.to_thread(member.start)
        await asyncio.to_thread(member.wait_ready)
        rev2 = await push_when_ready(http, server, 2)
        await eventually(lambda: client.route("payment", {}).revision == rev2, timeout=10)
        assert_unique_and_ordered(seen)


@pytest.mark.slow
async def test_failover_between_replicas_resumes_by_revision(make_server: Any,
                                                             http: aiohttp.ClientSession) -> None:
    a = await make_server()
    b = await make_server(prefix=a.prefix)
    client = client_for(a.url, b.url)
    seen = recorder(client)
    async with client:
        revs = [await push(http, a, n) for n in (1, 2)]
        await eventually(lambda: len(seen) == 2)
        assert client.status().server == a.url
        await a.stop()
        revs += [await push(http, b, n) for n in (3, 4)]
        await eventually(lambda: client.route("payment", {}).cluster == "v4")
        status = client.status()
        assert status.server == b.url and status.gaps == 0
        assert [rev for _, rev in seen] == revs
        assert_unique_and_ordered(seen)


async def test_start_from_disk_snapshot_when_backend_down(server: RunningServer, http: aiohttp.ClientSession,
                                                          tmp_path: Path) -> None:
    async with client_for(server.url, cache_dir=tmp_path) as client:
        rev = await push(http, server, 7)
        await eventually(lambda: client.status().namespaces.get(NS))
    assert (tmp_path / filename_for(NS)).exists()

    dead = f"http://127.0.0.1:{free_port()}"
    later = client_for(dead, cache_dir=tmp_path)
    seen = recorder(later)
    async with later:
        assert later.mode == "fallback"
        decision = later.route("payment", {})
        assert (decision.cluster, decision.revision) == ("v7", rev)
        status = later.status().namespaces[NS]
        assert (status.source, status.stale, status.revision) == ("disk", True, rev)
        assert seen == [(NS, rev)]


async def test_corrupt_snapshot_starts_empty_with_warning(server: RunningServer, http: aiohttp.ClientSession,
                                                          tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with client_for(server.url, cache_dir=tmp_path) as client:
        await push(http, server, 7)
        await eventually(lambda: client.status().namespaces.get(NS))
    path = tmp_path / filename_for(NS)
    path.write_bytes(path.read_bytes()[:-20] + b"garbage")
    caplog.set_level(logging.WARNING)
    async with client_for(f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path) as later:
        assert later.mode == "fallback" and later.status().namespaces == {}
    assert any(str(path) in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records)
