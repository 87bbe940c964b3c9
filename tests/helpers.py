"""Test helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.http import create_app, start_site
from configcenter.server.runtime import RUNTIME, Runtime, wait_ready
from configcenter.server.security import Principal
from configcenter.server.settings import Limits, Settings, WatchTuning

WRITER = "test-writer-token"  # principal "test-writer", role admin: writes and also deletes
READER = "test-reader-token"  # principal "test-reader", role reader
TEST_PRINCIPALS = (Principal.from_token("test-writer", WRITER, "admin"),
                   Principal.from_token("test-reader", READER, "reader"))


def start_cluster(size: int = 3) -> EtcdCluster:
    """A multi-member etcd on loopback for fault tests; the caller closes it."""
    return EtcdCluster(size).start()


@dataclass
class RunningServer:
    url: str
    runtime: Runtime
    runner: web.AppRunner
    etcd: EtcdCluster

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def prefix(self) -> str:
        return self.settings.prefix

    def auth(self, token: str = WRITER) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def stop(self) -> None:
        await self.runner.cleanup()


def server_settings(cluster: EtcdCluster, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=free_port(),
        etcd_endpoints=tuple(cluster.endpoints),
        prefix=f"/cc-test/{uuid.uuid4().hex[:12]}/",
        tokens=TEST_PRINCIPALS,
        limits=Limits(max_body_bytes=64 * 1024, subscriber_queue=256, history_ring=1000),
        watch=WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0),
    )
    return replace(base, **overrides)


async def start_server(settings: Settings, cluster: EtcdCluster, *, wait: bool = True) -> RunningServer:
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await start_site(runner, settings.host, settings.port)
    runtime = app[RUNTIME]
    if wait:
        await wait_ready(runtime, 10)
    return RunningServer(f"http://{settings.host}:{settings.port}", runtime, runner, cluster)


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns a truthy value (or awaitable of one); fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@dataclass
class SSEEvent:
    """``id`` is the revision part of the event id; ``raw_id`` the id as sent (``<cluster hex>:<revision>``)."""

    event: str
    id: int | None
    data: dict[str, Any]
    raw_id: str | None = None


class SSEStream:
    """A minimal Server-Sent Events reader over an aiohttp response (test side only)."""

    def __init__(self, response: Any) -> None:
        self.response = response

    async def next(self, timeout: float = 10.0) -> SSEEvent:
        return await asyncio.wait_for(self._read_event(), timeout)

    async def _read_event(self) -> SSEEvent:
        fields: dict[str, str] = {}
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise ConnectionError("stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                if fields:
                    raw_id = fields.get("id")
                    return SSEEvent(
                        fields.get("event", "message"),
                        int(raw_id.rpartition(":")[2]) if raw_id is not None else None,
                        orjson.loads(fields.get("data", "null")),
                        raw_id,
                    )
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    async def until(self, predicate: Callable[[SSEEvent], bool], timeout: float = 10.0) -> list[SSEEvent]:
        """Read events until one satisfies ``predicate``; return all read (including that one)."""
        seen: list[SSEEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next(max(0.01, deadline - loop.time()))
            seen.append(event)
            if predicate(event):
                return seen

    async def changes(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        """The next ``count`` change events (skipping progress)."""
        got: list[SSEEvent] = []
        await self.until(lambda e: e.event == "change" and (got.append(e) or len(got) >= count), timeout)
        return got


def envelope(doc: dict[str, Any], kind: str = "config", message: str = "") -> dict[str, Any]:
    return {"kind": kind, "doc": doc, "message": message}


# --------------------------------------------------------------------------- TLS (server, SDK, CLI, etcd)


@dataclass(frozen=True)
class Certs:
    """PEM files of a throw-away CA (``trustme``): a server certificate for 127.0.0.1 and localhost,
    a client certificate (also as one file with its key), and a second CA with its own client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_pem: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def make_certs(directory: Path) -> Certs:
    import trustme

    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client, stranger = ca.issue_cert("configcenter-client"), other.issue_cert("stranger")
    files = {
        "ca": ca.cert_pem, "server_cert": server.cert_chain_pems[0], "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0], "client_key": client.private_key_pem,
        "client_pem": client.private_key_and_cert_chain_pem, "other_ca": other.cert_pem,
        "other_client_cert": stranger.cert_chain_pems[0], "other_client_key": stranger.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(directory / f"{name}.pem"))
    return Certs(**{name: directory / f"{name}.pem" for name in files})


def server_tls(certs: Certs, *, mtls: bool = False) -> Any:
    """``Settings.tls`` for a server with ``certs``' server certificate (client certificates required if ``mtls``)."""
    from configcenter.server.settings import ServerTLS

    return ServerTLS(str(certs.server_cert), str(certs.server_key), str(certs.ca) if mtls else None)


async def start_tls_server(settings: Settings, cluster: EtcdCluster, *, wait: bool = True) -> RunningServer:
    """Like ``start_server`` but listening with ``settings.tls`` (the URL is https://)."""
    from configcenter.server.security import server_ssl_context

    assert settings.tls is not None
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await start_site(runner, settings.host, settings.port, ssl_context=server_ssl_context(settings.tls))
    if wait:
        await wait_ready(app[RUNTIME], 10)
    return RunningServer(f"https://{settings.host}:{settings.port}", app[RUNTIME], runner, cluster)
