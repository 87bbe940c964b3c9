"""Test helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.app import create_app, start_site
from configcenter.server.runtime import RUNTIME, Runtime, wait_ready
from configcenter.server.settings import Limits, Settings, WatchTuning

WRITER = "test-writer-token"
READER = "test-reader-token"


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
        tokens={WRITER: "writer", READER: "reader"},
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
    event: str
    id: int | None
    data: dict[str, Any]


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
                    return SSEEvent(
                        fields.get("event", "message"),
                        int(fields["id"]) if "id" in fields else None,
                        orjson.loads(fields.get("data", "null")),
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
