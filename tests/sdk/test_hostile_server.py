"""The SDK against a hostile SSE server (issue 16 row 7): a valid reset, then a ``data:`` line that never ends.

The hostile server is a small aiohttp app on a real socket that serves a snapshot copied from a real
configcenter server (a compromised replica would do exactly that), then streams one endless line. The
client must drop that connection at ``max_event_bytes``, count and log it, keep serving what it holds and
fail over to the good server, with its memory bounded by the limit and not by what the server sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from configcenter.cli.embedded_etcd import free_port
from configcenter_sdk import ConfigClient, EventTooLargeError
from configcenter_sdk._sse import DEFAULT_MAX_EVENT_BYTES, MAX_RELEASE_BYTES, SSEParser
from configcenter_sdk.errors import SDKError
from helpers import RunningServer, eventually

LIMIT = 2 * 1024 * 1024
CHUNK = b"x" * 65_536
DOC = {"service": "payment", "rules": [], "default": {"cluster": "good"}}


class Hostile:
    """``GET /v1/watch``: ``reset`` (the given namespaces), then ``data: xxxx…`` up to ``endless`` bytes, then
    silence with the connection held open (so a client that does not give up stays stuck on it)."""

    def __init__(self, reset: dict[str, Any], endless: int) -> None:
        self.reset, self.endless = reset, endless
        self.sent = 0
        self.connections = 0

    async def watch(self, request: web.Request) -> web.StreamResponse:
        self.connections += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        revision = self.reset["revision"]
        await response.write(b"id: %s:%d\nevent: reset\ndata: %s\n\n"
                             % (self.reset["cluster"].encode(), revision, orjson.dumps(self.reset)))
        await response.write(b"event: change\ndata: ")
        for _ in range(self.endless // len(CHUNK)):
            await response.write(CHUNK)
            self.sent += len(CHUNK)
        await asyncio.sleep(3600)
        return response


@contextlib.asynccontextmanager
async def hostile_server(hostile: Hostile) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/v1/watch", hostile.watch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def copied_reset(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, Any]:
    """The first event of a real watch of ``payment/routes``: what a compromised replica would replay."""
    body = {"kind": "routes", "doc": DOC, "message": "good"}
    async with http.put(f"{server.url}/v1/namespaces/payment/routes", json=body, headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
    async with http.get(f"{server.url}/v1/watch", params={"ns": "payment/routes"}) as resp:
        parser = SSEParser()
        while True:
            events = parser.feed(await resp.content.readany())
            if events:
                assert events[0].event == "reset"
                reset: dict[str, Any] = orjson.loads(events[0].data)
                return reset


async def test_endless_line_is_dropped_memory_bounded_and_client_fails_over(
        server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="configcenter_sdk.client")
    reset = await copied_reset(server, http)
    hostile = Hostile(reset, endless=16 * LIMIT)  # the old parser held all 32 MiB (and copied it per chunk)
    async with hostile_server(hostile) as bad_url:
        client = ConfigClient([bad_url, server.url], ["payment/routes"], report=False, backoff_max=0.2,
                              idle_timeout=5.0, max_event_bytes=LIMIT, start_timeout=5.0)
        tracemalloc.start()
        try:
            await client.start()
            assert client.get("payment/routes") == DOC  # the hostile server's valid reset was applied
            tracemalloc.reset_peak()
            await eventually(lambda: client.status().server == server.url and client.mode == "live", timeout=15)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await client.close()
    status = client.status()
    print(f"hostile server sent {hostile.sent / 2**20:.1f} MiB; client peak traced memory {peak / 2**20:.1f} MiB "
          f"(limit {LIMIT / 2**20:.0f} MiB)")
    assert peak < 3 * LIMIT, f"client held {peak} bytes for an endless line (limit {LIMIT})"
    assert status.oversized_events >= 1
    assert client.route("payment", {}).cluster == "good"  # served all along, from the good server now
    assert any("max_event_bytes" in r.getMessage() and bad_url in r.getMessage() for r in caplog.records)


async def test_keeps_serving_its_documents_while_the_only_server_is_hostile(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    reset = await copied_reset(server, http)
    hostile = Hostile(reset, endless=2 * LIMIT)
    async with hostile_server(hostile) as bad_url, ConfigClient(
            [bad_url], ["payment/routes"], report=False, backoff_initial=0.05, backoff_max=0.2,
            max_event_bytes=LIMIT) as client:
        await eventually(lambda: hostile.connections >= 3 and client.status().oversized_events >= 2)
        await eventually(lambda: client.mode == "fallback")  # between attempts: no server delivers
        assert client.get("payment/routes") == DOC
        assert client.route("payment", {}).cluster == "good"


async def test_a_server_trickling_bytes_without_events_is_left_after_idle_timeout(
        server: RunningServer, http: aiohttp.ClientSession) -> None:
    """Bytes that never complete an event do not count as life: the idle timer runs from the last event."""
    reset = await copied_reset(server, http)

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: reset\ndata: %s\n\n" % orjson.dumps(reset))
        while True:
            await response.write(b": still here\n")
            await asyncio.sleep(0.1)

    app = web.Application()
    app.router.add_get("/v1/watch", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with ConfigClient([f"http://127.0.0.1:{port}", server.url], ["payment/routes"], report=False,
                                idle_timeout=1.0, backoff_max=0.2) as client:
            await eventually(lambda: client.status().server == server.url, timeout=5)
            assert client.get("payment/routes") == DOC
    finally:
        await runner.cleanup()


def test_parser_refuses_past_the_limit_and_keeps_nothing() -> None:
    parser = SSEParser(8192)
    head = parser.feed(b"event: progress\ndata: {}\n\nevent: reset\ndata: ")
    assert [e.event for e in head] == ["progress"] and parser.error is None
    assert parser.feed(b"y" * 8000) == [] and parser.error is None
    completed = parser.feed(b"z\n\ndata: " + b"y" * 9000)  # the events before the limit are returned
    assert [(e.event, len(e.data)) for e in completed] == [("reset", 8001)]
    assert isinstance(parser.error, EventTooLargeError) and isinstance(parser.error, SDKError)
    with pytest.raises(EventTooLargeError):
        parser.feed(b"\n\n")


def test_parser_limit_counts_every_data_line_of_an_event() -> None:
    parser = SSEParser(8192)
    assert parser.feed(b"data: " + b"a" * 3000 + b"\n" + b"data: " + b"b" * 3000 + b"\n") == []
    assert parser.error is None
    parser.feed(b"data: " + b"c" * 3000 + b"\n")
    assert parser.error is not None


def test_default_limit_admits_a_reset_of_many_full_namespaces_and_bounds_memory() -> None:
    """The default follows the server's framing: a reset of 80 releases at the document limit fits; more
    is refused, and the parser never holds much more than the limit whatever it is fed."""
    assert DEFAULT_MAX_EVENT_BYTES == 80 * MAX_RELEASE_BYTES
    release = b'"x": "' + b"v" * (MAX_RELEASE_BYTES - 20) + b'", '
    parser = SSEParser()
    events = parser.feed(b"event: reset\ndata: {" + release * 79 + b'"end": 1}\n\n')
    assert [e.event for e in events] == ["reset"]
    tracemalloc.start()
    try:
        parser.feed(b"event: reset\ndata: ")
        chunk = b"w" * 1_048_576
        while parser.error is None:
            parser.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.3 * DEFAULT_MAX_EVENT_BYTES


def test_max_event_bytes_is_validated() -> None:
    for bad in (0, 100, True, 1.5e6, "1000000"):
        with pytest.raises(ValueError, match="max_event_bytes"):
            ConfigClient(["http://127.0.0.1:1"], ["a"], max_event_bytes=bad)  # type: ignore[arg-type]
