"""The listener's guard on real sockets: header deadline, connection cap, SSE streams untouched.

Also the per-client stream caps (429 past ``limits.max_streams_per_address`` / ``_per_principal``),
the drain deadline (a client that never reads its catch-up is cut, its buffer dropped) and a client
hanging up before its stream's head is written (counted, never logged as an error).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from configcenter.server.metrics import Metrics
from configcenter.server.net import ConnectionGuard, GuardedSite
from configcenter.server.settings import Limits
from helpers import READER, WRITER, RunningServer, SSEStream, eventually

ROUTES = {"service": "payment", "rules": [], "default": {"cluster": "stable"}}
ServerFactory = Any


async def open_raw(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(server.settings.host, server.settings.port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it stays open)."""
    return await asyncio.wait_for(reader.read(), seconds)


async def start_bare_site(host: str, *, ssl_context: Any = None) -> tuple[GuardedSite, ConnectionGuard, web.AppRunner]:
    """The listener alone (no etcd) in front of an app answering ``GET /ping``, on a port the kernel picks."""
    async def ping(_request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    guard = ConnectionGuard(10, 5.0, Metrics())
    site = GuardedSite(runner, host, 0, guard, ssl_context=ssl_context)
    assert site.port == 0  # before start: the requested port
    await site.start()
    return site, guard, runner


async def test_the_listener_reports_the_port_it_bound_and_a_url_that_answers(http: aiohttp.ClientSession) -> None:
    """Port 0 asks the kernel for a port: ``site.port`` and ``site.name`` are the bound one (the ``TCPSite.start``
    copy this listener replaced left them at 0), and the connection went through the guard."""
    site, guard, runner = await start_bare_site("127.0.0.1")
    try:
        assert runner.sites == {site} and site.port != 0
        assert site.name == f"http://127.0.0.1:{site.port}"
        async with http.get(f"{site.name}/ping") as resp:
            assert (resp.status, await resp.text()) == (200, "pong")
            assert guard.open == 1
    finally:
        await runner.cleanup()
    assert site not in runner.sites


async def test_the_listener_on_all_interfaces_or_ipv6_names_a_usable_url(http: aiohttp.ClientSession) -> None:
    site, _guard, runner = await start_bare_site("")
    try:
        assert site.name == f"http://0.0.0.0:{site.port}" and site.port != 0
    finally:
        await runner.cleanup()
    if not socket.has_ipv6:
        return
    try:
        site, _guard, runner = await start_bare_site("::1")
    except OSError:  # no IPv6 loopback on this machine
        return
    try:
        assert site.name == f"http://[::1]:{site.port}"
        async with http.get(f"{site.name}/ping") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


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
        await eventually(lambda: server.runtime.connections.open == 4)  # the server counts all of them
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
        await eventually(lambda: server.runtime.connections.open == 1)  # the server saw them go: the stream left
        reader, writer = await open_raw(server)  # room again
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await closed_within(reader, 5)).startswith(b"HTTP/1.1 200")
        writer.close()


async def test_an_idle_stream_leaves_aiohttp_and_is_still_served_and_counted(
        make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    """Once its head and catch-up are out, a stream's connection is no longer aiohttp's (its request
    handler, parser and task are gone: server/watch/_detached.py), yet it counts against the cap, gets
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


WATCH = b"GET /v1/watch?ns=big/ HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_streams_past_the_per_address_cap_are_refused_with_429_and_retry_after(
        make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=_limits(max_streams_per_address=2))
    url = f"{server.url}/v1/watch?ns=payment/"
    async with http.get(url) as first, http.get(url, headers=server.auth(READER)) as second:
        assert (first.status, second.status) == (200, 200)
        async with http.get(url, headers=server.auth(WRITER)) as third:  # the address is full, token or not
            assert third.status == 429 and int(third.headers["Retry-After"]) >= 1
            error = (await third.json())["error"]
            assert error["code"] == "too_many_requests" and error["details"]["limit"] == "max_streams_per_address"
        assert server.runtime.metrics.values["configcenter_streams_refused_total"] == 1
        assert (await SSEStream(second).next()).event == "reset"  # the admitted ones are untouched
    await eventually(lambda: not server.runtime.hub.subscriptions)
    async with http.get(url) as again:  # the places were given back
        assert again.status == 200


async def test_streams_past_the_per_principal_cap_are_refused_but_other_clients_are_not(
        make_server: ServerFactory, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=_limits(max_streams_per_principal=1))
    url = f"{server.url}/v1/watch?ns=payment/"
    async with http.get(url, headers=server.auth(READER)) as first:
        assert first.status == 200
        async with http.get(url, headers=server.auth(READER)) as second:
            assert second.status == 429 and "Retry-After" in second.headers
            assert (await second.json())["error"]["details"]["limit"] == "max_streams_per_principal"
        async with http.get(url, headers=server.auth(WRITER)) as other, http.get(url) as anonymous:
            assert (other.status, anonymous.status) == (200, 200)


async def test_a_client_that_never_reads_its_catch_up_is_cut_after_the_drain_timeout(
        make_server: ServerFactory) -> None:
    """The reset is larger than the kernel's socket buffers can hold, so it stays in the server's memory
    while the client reads nothing; after ``drain_timeout`` the connection is aborted and that memory is
    released (the transport's buffer emptied, the subscription and its connection gone)."""
    server = await make_server(limits=_limits(drain_timeout=0.5, header_timeout=30))
    await _push_big(server, _kernel_buffers() + 1_048_576)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (server.settings.host, server.settings.port))
    await asyncio.get_running_loop().sock_sendall(sock, WATCH)
    hub = server.runtime.hub
    subs = await eventually(lambda: list(hub.subscriptions))
    channel = subs[0].channel
    assert channel is not None
    transport = channel.transport
    await eventually(lambda: transport.get_write_buffer_size() > 1_048_576)  # pinned in the server
    started = asyncio.get_running_loop().time()
    await eventually(lambda: not hub.subscriptions and server.runtime.connections.open == 0, timeout=10)
    assert asyncio.get_running_loop().time() - started < 5
    assert transport.get_write_buffer_size() == 0 and transport.is_closing()
    assert server.runtime.metrics.values["configcenter_streams_stalled_total"] == 1
    sock.close()


async def test_a_client_that_reads_its_catch_up_within_the_deadline_is_not_cut(
        make_server: ServerFactory) -> None:
    server = await make_server(limits=_limits(drain_timeout=3.0))
    total = _kernel_buffers() + 1_048_576
    await _push_big(server, total)
    reader, writer = await open_raw(server)
    writer.write(WATCH)
    received = 0
    while received < total:  # 64 KiB per 10 ms: the catch-up leaves the server over a second or so
        received += len(await asyncio.wait_for(reader.read(65536), 10))
        await asyncio.sleep(0.01)
    # not cut: the stream still delivers the next change (instead of "wait a while and see")
    await server.runtime.store.push("big/after", "config", {"small": True})
    tail = b""
    async with asyncio.timeout(10):  # a hang guard
        while b"event: change" not in tail:
            chunk = await reader.read(65536)
            assert chunk, "the stream was closed"
            tail = tail[-64:] + chunk
    assert server.runtime.metrics.values["configcenter_streams_stalled_total"] == 0
    assert len(server.runtime.hub.subscriptions) == 1
    writer.close()


async def test_a_client_hanging_up_before_its_stream_head_is_counted_not_logged_as_an_error(
        make_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The request and a TCP reset arrive together: the handler finds the connection gone when it
    writes the head (aiohttp's ClientConnectionResetError from ``resp.prepare``)."""
    server = await make_server()
    caplog.set_level(logging.INFO)
    for _ in range(40):
        _, writer = await open_raw(server)
        writer.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends a reset
        writer.write(b"GET /v1/watch?ns=payment/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        writer.transport.abort()
        await asyncio.sleep(0.005)
    await eventually(lambda: server.runtime.connections.open == 0 and not server.runtime.hub.subscriptions)
    # grpc's aio poller may still call back into an earlier test's closed loop ("Event loop is closed" from
    # PollerCompletionQueue): a test-isolation artefact of one event loop per test, not this server's doing
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "PollerCompletionQueue" not in r.getMessage()]
    assert not errors, [r.getMessage() for r in errors]
    assert server.runtime.metrics.values["configcenter_client_disconnects_total"] >= 1
    assert any("left GET /v1/watch" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def _kernel_buffers() -> int:
    """The most a socket's send buffer can grow to here (``tcp_wmem``'s maximum)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


async def _push_big(server: RunningServer, total: int) -> None:
    """Documents under ``big/`` adding up to at least ``total`` bytes (the catch-up of ``WATCH``)."""
    size = 400_000
    for i in range(total // size + 1):
        await server.runtime.store.push(f"big/n{i}", "config", {"blob": "x" * size})
    await eventually(lambda: len(server.runtime.mirror.state) >= total // size + 1)


def _limits(**overrides: float) -> Limits:
    base = Limits(max_body_bytes=64 * 1024, subscriber_queue=256, history_ring=1000)
    return replace(base, **overrides)
