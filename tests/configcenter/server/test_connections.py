"""The listener's guard on real sockets: header deadline, connection cap, SSE streams untouched."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from configcenter.server.settings import Limits
from helpers import RunningServer, SSEStream, eventually

ROUTES = {"service": "payment", "rules": [], "default": {"cluster": "stable"}}
ServerFactory = Any


async def open_raw(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.settings.host, server.settings.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_incomplete_headers_are_closed_after_the_header_timeout(make_server: ServerFactory) -> None:
    server = await make_server(limits=_limits(header_timeout=0.5))
    reader, writer = await open_raw(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
    started = asyncio.get_running_loop().time()
    assert await closed_within(reader, 5) == b""
    assert 0.4 <= asyncio.get_running_loop().time() - started < 3
    writer.close()
    assert server.runtime.metrics.values["configcenter_header_timeouts_total"] >= 1


async def test_a_trickle_of_bytes_does_not_extend_the_deadline(make_server: ServerFactory) -> None:
    server = await make_server(limits=_limits(header_timeout=0.6))
    reader, writer = await open_raw(server)
    started = asyncio.get_running_loop().time()

    async def trickle() -> None:
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    try:
        assert await closed_within(reader, 5) == b""
    finally:
        task.cancel()
        writer.close()
    assert asyncio.get_running_loop().time() - started < 2


async def test_kept_alive_connection_gets_a_new_deadline_per_request(make_server: ServerFactory) -> None:
    server = await make_server(limits=_limits(header_timeout=0.5))
    reader, writer = await open_raw(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"}")  # the body
    await asyncio.sleep(0.8)  # idle longer than the header timeout: keep-alive is aiohttp's business
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await reader.readuntil(b"}")  # the body of the second answer
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # a third request that never completes
    assert await closed_within(reader, 5) == b""
    writer.close()


async def test_sse_stream_outlives_the_header_timeout(make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=_limits(header_timeout=0.3))
    async with http.get(f"{server.url}/v1/watch?ns=payment/") as resp:
        stream = SSEStream(resp)
        assert (await stream.next()).event == "reset"
        await asyncio.sleep(1.0)
        await server.runtime.store.push("payment/routes", "routes", ROUTES)
        events = await stream.until(lambda e: e.event == "change")
        assert events[-1].data["ns"] == "payment/routes"


async def test_connections_beyond_the_cap_are_refused_and_live_streams_keep_going(
        make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=_limits(max_connections=4, header_timeout=30))
    async with http.get(f"{server.url}/v1/watch?ns=payment/") as resp:
        stream = SSEStream(resp)
        assert (await stream.next()).event == "reset"
        held = [await open_raw(server) for _ in range(3)]  # 1 stream + 3 idle = the cap
        await asyncio.sleep(0.1)
        reader, writer = await open_raw(server)
        refusal = await closed_within(reader, 5)
        writer.close()
        head, _, body = refusal.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        assert server.runtime.metrics.values["configcenter_connections_refused_total"] == 1
        await server.runtime.store.push("payment/routes", "routes", ROUTES)  # the stream still gets changes
        assert (await stream.until(lambda e: e.event == "change"))[-1].data["ns"] == "payment/routes"
        for _, held_writer in held:
            held_writer.close()
        await asyncio.sleep(0.2)
        reader, writer = await open_raw(server)  # room again
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await closed_within(reader, 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_idle_stream_leaves_aiohttp_and_is_still_served_and_counted(
        make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    """Once its head and catch-up are out, a stream's connection is no longer aiohttp's (its request
    handler, parser and task are gone: server/_detached.py), yet it counts against the cap, gets
    changes and progress frames (progress_interval 0.5 s here), and leaves when the client does."""
    server = await make_server(limits=_limits(header_timeout=0.3))
    aiohttp_server = server.runner.server
    assert aiohttp_server is not None
    async with http.get(f"{server.url}/v1/watch?ns=payment/") as resp:
        stream = SSEStream(resp)
        assert (await stream.next()).event == "reset"
        await eventually(lambda: len(aiohttp_server.connections) == 0)
        assert server.runtime.connections.open == 1 and len(server.runtime.hub.subscriptions) == 1
        await asyncio.sleep(0.6)  # past the header timeout: no deadline for a detached stream
        pushed = await server.runtime.store.push("payment/routes", "routes", ROUTES)
        change = (await stream.until(lambda e: e.event == "change"))[-1]
        assert (change.data["ns"], change.id) == ("payment/routes", pushed.revision)
        started = asyncio.get_running_loop().time()
        progress = await stream.until(lambda e: e.event == "progress", timeout=3)
        assert asyncio.get_running_loop().time() - started < 1.5 and progress[-1].id == pushed.revision
    await eventually(lambda: not server.runtime.hub.subscriptions and server.runtime.connections.open == 0)


def _limits(**overrides: float) -> Limits:
    base = Limits(max_body_bytes=64 * 1024, subscriber_queue=256, history_ring=1000)
    return replace(base, **overrides)
