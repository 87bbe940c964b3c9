"""Test helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from etcd3aio import prefix_range_end

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.cpu import Lane
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


async def revoke_instance_leases(server: RunningServer, timeout: float = 2.0) -> int:
    """Revoke the leases of the SDK instance records under ``server``'s prefix; how many (best effort).

    Why: tests share one etcd, and a record a test leaves behind (a report without a goodbye)
    expires up to ``instance_ttl`` later, in another test, moving etcd's revision there; tests
    that check "nothing was written" read that revision. Revoked at teardown, every expiry stays
    inside the test that caused it."""
    kv, lease = server.runtime.client.kv, server.runtime.client.lease
    if kv is None or lease is None:
        return 0
    start = server.runtime.instances.key("")
    revoked = 0
    with contextlib.suppress(Exception):  # an etcd a fault test stopped: nothing left to expire there
        resp = await kv.get(start, range_end=prefix_range_end(start), keys_only=True, timeout=timeout)
        for item in resp.kvs:
            if item.lease:
                with contextlib.suppress(Exception):  # expired or revoked (a replica sharing the prefix)
                    await lease.revoke(item.lease, timeout=timeout)
                    revoked += 1
    return revoked


@asynccontextmanager
async def lane_held(server: RunningServer, lane: Lane, tmp_path: Path) -> AsyncIterator[None]:
    """One place of the server's CPU ``lane`` (``cpu/admission.py``) is taken, and one of its workers
    (thread or process) busy, by a job that ends when the block does: with one worker, the lane's
    requests wait in its queue meanwhile. The test's explicit signal instead of "slow enough" work."""
    import worker_jobs

    released, gate = threading.Event(), tmp_path / f"release-{lane}-{uuid.uuid4().hex[:8]}"
    async with server.runtime.admission.slot(lane) as slot:
        job = (slot.run_thread(lambda: released.wait(60)) if lane == "write"
               else slot.run(worker_jobs.wait_for, str(gate), 60.0))
        task = asyncio.ensure_future(job)
        try:
            yield
        finally:
            released.set()
            gate.touch()
            await asyncio.wait_for(task, 30)


def pushed_status(answer: Any) -> int:
    """The status a successful push answers (``http/api.py``): 201 for the namespace's first release
    (version 1), 200 for a later one. Helpers that push both ways assert this, not "200 or 201"."""
    return 201 if isinstance(answer, dict) and answer.get("version") == 1 else 200


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


async def start_server(settings: Settings, cluster: EtcdCluster, *, wait: bool = True,
                       shutdown_timeout: float = 0.5) -> RunningServer:
    """``shutdown_timeout``: how long ``stop()`` lets request handlers finish before cancelling them."""
    app = create_app(settings)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
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
