"""Shared fixtures: a real etcd (session-wide and per-test), real servers on real sockets.

Isolation: tests share one etcd process but each server gets its own key
prefix, so they never see each other's namespaces.  Fault tests that stop or
compact etcd take ``own_etcd`` instead, a private etcd for that test alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster
from helpers import RunningServer, revoke_instance_leases, server_settings, start_server


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One etcd member for the whole session (tests isolate by key prefix)."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    """A private etcd for tests that stop, restart or compact it."""
    with EtcdCluster(1) as cluster:
        yield cluster


ServerFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(etcd: EtcdCluster) -> AsyncIterator[ServerFactory]:
    """Start servers with custom settings: ``await make_server(cluster=..., **settings_overrides)``."""
    started: list[RunningServer] = []

    async def factory(cluster: EtcdCluster | None = None, wait: bool = True, **overrides: Any) -> RunningServer:
        cluster = cluster or etcd
        server = await start_server(server_settings(cluster, **overrides), cluster, wait=wait)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.etcd is etcd:  # the shared one: no instance lease may expire later, under another test
            await revoke_instance_leases(server)
        await server.stop()


@pytest.fixture
async def server(make_server: ServerFactory) -> RunningServer:
    """A server on the shared etcd with its own key prefix."""
    return await make_server()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Throw-away CA, server and client certificates (``helpers.Certs``), made once per session."""
    from helpers import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def make_tls_server(etcd: EtcdCluster, certs: Any) -> AsyncIterator[ServerFactory]:
    """Start HTTPS servers: ``await make_tls_server(mtls=False, cluster=..., **settings_overrides)``."""
    from helpers import server_tls, start_tls_server

    started: list[RunningServer] = []

    async def factory(cluster: EtcdCluster | None = None, mtls: bool = False, wait: bool = True,
                      **overrides: Any) -> RunningServer:
        cluster = cluster or etcd
        overrides.setdefault("tls", server_tls(certs, mtls=mtls))
        server = await start_tls_server(server_settings(cluster, **overrides), cluster, wait=wait)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.etcd is etcd:
            await revoke_instance_leases(server)
        await server.stop()
