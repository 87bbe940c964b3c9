"""ConfigClient over HTTPS against real TLS servers: CA bundle, client certificates, fail-over, sync wrapper."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from configcenter_sdk import ConfigClient, SyncConfigClient, UnknownServiceError
from helpers import Certs, RunningServer, eventually

NS = "payment/routes"


def table(n: int) -> dict[str, Any]:
    return {"service": "payment", "rules": [{"id": f"r{n}", "route": {"cluster": f"v{n}"}}],
            "default": {"cluster": f"v{n}"}}


@pytest.fixture
async def https(certs: Certs) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.client_cert, certs.client_key)  # also fine for servers without mTLS
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def push(http: aiohttp.ClientSession, server: RunningServer, n: int) -> int:
    body = {"kind": "routes", "doc": table(n), "message": f"v{n}"}
    async with http.put(f"{server.url}/v1/namespaces/{NS}", json=body, headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


def cluster(client: ConfigClient | SyncConfigClient) -> str | None:
    """The cluster every request goes to (the tables route everything alike), None before a table."""
    try:
        return client.route("payment", {}).cluster
    except UnknownServiceError:
        return None


def client_for(*urls: str, **kw: Any) -> ConfigClient:
    return ConfigClient(list(urls), [NS], backoff_max=0.3, idle_timeout=1.5, **kw)


async def test_client_over_https_receives_a_pushed_change(
    make_tls_server: Any, certs: Certs, https: aiohttp.ClientSession,
) -> None:
    server: RunningServer = await make_tls_server()
    async with client_for(server.url, ca_file=certs.ca) as client:
        assert client.mode == "live" and client.status().server == server.url
        revision = await push(https, server, 1)
        await eventually(lambda: cluster(client) == "v1")
        assert client.route("payment", {}).revision == revision


async def test_client_without_the_ca_bundle_cannot_subscribe(make_tls_server: Any) -> None:
    server: RunningServer = await make_tls_server()
    async with client_for(server.url, start_timeout=1.0) as client:
        assert client.mode == "fallback" and client.status().server is None


async def test_client_certificate_for_an_mtls_server(
    make_tls_server: Any, certs: Certs, https: aiohttp.ClientSession,
) -> None:
    server: RunningServer = await make_tls_server(mtls=True)
    async with client_for(server.url, ca_file=certs.ca, start_timeout=1.0) as anonymous:
        assert anonymous.mode == "fallback"  # refused in the handshake
    async with client_for(server.url, ca_file=certs.ca, client_cert=certs.client_cert,
                          client_key=certs.client_key) as client:
        assert client.mode == "live"
        await push(https, server, 2)
        await eventually(lambda: cluster(client) == "v2")


@pytest.mark.slow
async def test_failover_between_two_https_replicas(
    make_tls_server: Any, certs: Certs, https: aiohttp.ClientSession,
) -> None:
    a: RunningServer = await make_tls_server()
    b: RunningServer = await make_tls_server(prefix=a.prefix)
    async with client_for(a.url, b.url, ca_file=str(certs.ca)) as client:
        await push(https, a, 1)
        await eventually(lambda: cluster(client) == "v1")
        assert client.status().server == a.url
        await a.stop()
        revision = await push(https, b, 2)
        await eventually(lambda: cluster(client) == "v2")
        status = client.status()
        assert status.server == b.url and status.gaps == 0 and status.revision >= revision


async def test_sync_client_passes_the_tls_options_through(
    make_tls_server: Any, certs: Certs, https: aiohttp.ClientSession,
) -> None:
    server: RunningServer = await make_tls_server(mtls=True)
    client = SyncConfigClient([server.url], [NS], backoff_max=0.3, idle_timeout=1.5, ca_file=str(certs.ca),
                              client_cert=str(certs.client_pem))
    await asyncio.to_thread(client.start)
    try:
        assert client.mode == "live"
        await push(https, server, 3)
        await eventually(lambda: cluster(client) == "v3")
    finally:
        await asyncio.to_thread(client.close)


def test_unusable_tls_files_are_refused_at_construction(certs: Certs, tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"^CA file .*missing\.pem: not a readable PEM CA bundle"):
        ConfigClient(["https://127.0.0.1:1"], [NS], ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=r"^client certificate .*: cannot load"):
        ConfigClient(["https://127.0.0.1:1"], [NS], ca_file=certs.ca, client_cert=certs.ca)
    with pytest.raises(ValueError, match=r"^client_key given without client_cert$"):
        ConfigClient(["https://127.0.0.1:1"], [NS], client_key=certs.client_key)
