"""The aiohttp internals and behaviours configcenter relies on (``configcenter/server/net/_aiohttp.py``), each
pinned by name on real sockets, and the fallback when the one that lets go of a connection moves.

If a test here fails after an aiohttp upgrade, the upgrade changed something the server depends on:
adapt ``_aiohttp.py`` (and only it) before widening ``aiohttp<3.15`` in pyproject.toml.  No etcd here:
a bare aiohttp app behind the real listener (``GuardedSite`` + ``ConnectionGuard``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.base_protocol import BaseProtocol

from configcenter.server.metrics import Metrics
from configcenter.server.net import ConnectionGuard, GuardedSite
from configcenter.server.net import _aiohttp as _aiohttp

HELLO, WORLD, END = b"5\r\nhello\r\n", b"5\r\nworld\r\n", b"0\r\n\r\n"
FINISHED = web.AppKey("finished", asyncio.Event)  # set by aiohttp's access log: after its write_eof
GUARD = web.AppKey("guard", ConnectionGuard)
WAIT = 5.0  # seconds any single read may take before the test fails


class _DoneLogger(AbstractAccessLogger):
    """aiohttp logs a request after ``finish_response``'s ``write_eof``: the moment it is done with it."""

    def log(self, request: Any, response: Any, time: float) -> None:
        request.app[FINISHED].set()


class _Stream:
    """What ``watch/_detached.DetachedStream`` is to the guard: the connection's events once detached."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.received: asyncio.Future[bytes] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        if not self.received.done():
            self.received.set_result(data)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def listening(handler: Handler) -> AsyncIterator[tuple[GuardedSite, ConnectionGuard, web.AppRunner]]:
    guard = ConnectionGuard(100, 5.0, Metrics())
    app = web.Application()
    app[FINISHED] = asyncio.Event()
    app[GUARD] = guard
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log_class=_DoneLogger, shutdown_timeout=0.5)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    try:
        yield site, guard, runner
    finally:
        await runner.cleanup()


async def request(site: GuardedSite, version: str = "1.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send ``GET /`` and read the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    writer.write(f"GET / HTTP/{version}\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    return reader, writer, head


async def read(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), WAIT)


@pytest.fixture
def fresh_checks() -> Iterator[None]:
    """``release_unsupported_reason`` is computed once per process: recompute it around a test that patches."""
    _aiohttp.release_unsupported_reason.cache_clear()
    yield
    _aiohttp.release_unsupported_reason.cache_clear()


# --------------------------------------------------------------------------- names


def test_request_handler_keeps_its_transport_in_base_protocol_transport_and_closes_through_force_close() -> None:
    assert issubclass(web.RequestHandler, BaseProtocol)
    assert "transport" in BaseProtocol.__slots__
    assert list(web.RequestHandler.connection_lost.__code__.co_varnames[:2]) == ["self", "exc"]
    assert "force_close" in web.RequestHandler.connection_lost.__code__.co_names
    assert "transport" in web.RequestHandler.force_close.__code__.co_names
    assert _aiohttp.release_unsupported_reason() is None


async def test_handlers_are_not_cancelled_when_their_connection_is_lost_by_default() -> None:
    """``connection_lost`` cancels the running handler only with ``handler_cancellation`` on."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        assert runner.server is not None and runner.server.handler_cancellation is False
    finally:
        await runner.cleanup()


def test_the_stream_writer_can_be_told_to_send_its_head() -> None:
    """``AbstractStreamWriter.send_headers`` (public since 3.11): ``open_raw_body`` flushes the head with it."""
    from aiohttp.abc import AbstractStreamWriter

    assert callable(getattr(AbstractStreamWriter, "send_headers", None))


# --------------------------------------------------------------------------- writing a body behind StreamResponse


def _raw_body_handler(proceed: asyncio.Event) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        transport, chunked = await _aiohttp.open_raw_body(request, resp)
        transport.write(HELLO if chunked else b"hello")
        await proceed.wait()
        return resp

    return handler


async def test_a_body_written_behind_the_response_follows_the_head_and_aiohttp_ends_it_with_one_terminator() -> None:
    proceed = asyncio.Event()
    async with listening(_raw_body_handler(proceed)) as (site, _guard, _runner):
        reader, writer, head = await request(site)
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
        assert await read(reader, len(HELLO)) == HELLO  # while the handler still runs: nothing held back
        proceed.set()
        assert await read(reader, len(END)) == END  # the handler returned: exactly the terminator
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and the connection is still a clean keep-alive one
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).startswith(b"HTTP/1.1 200")
        assert await read(reader, len(HELLO) + len(END)) == HELLO + END
        writer.close()


async def test_an_http_1_0_body_is_raw_and_ends_with_the_connection() -> None:
    proceed = asyncio.Event()
    async with listening(_raw_body_handler(proceed)) as (site, _guard, _runner):
        reader, writer, head = await request(site, "1.0")
        assert head.startswith(b"HTTP/1.0 200") and b"transfer-encoding" not in head.lower()
        assert await read(reader, 5) == b"hello"
        proceed.set()
        assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed, nothing more written
        writer.close()


# --------------------------------------------------------------------------- letting go of a connection


def _detaching_handler(stream: _Stream, held: list[Any]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        transport, _chunked = await _aiohttp.open_raw_body(request, resp)
        transport.write(HELLO)
        held.append(transport)
        held.append(request.app[GUARD].detach(transport, stream))
        return resp

    return handler



async def test_a_released_connection_stays_open_and_aiohttp_writes_nothing_more_to_it() -> None:
    stream, held = _Stream(), list[Any]()
    async with listening(_detaching_handler(stream, held)) as (site, guard, runner):
        reader, writer, _head = await request(site)
        await asyncio.wait_for(runner.app[FINISHED].wait(), WAIT)  # aiohttp is done with the request
        transport, detached = held
        assert detached is True and not transport.is_closing()
        assert runner.server is not None and not runner.server.connections  # aiohttp forgot the connection
        assert guard.open == 1  # the guard did not
        transport.write(WORLD)
        assert await read(reader, len(HELLO) + len(WORLD)) == HELLO + WORLD  # no terminator from aiohttp between
        writer.write(b"ping")
        assert await asyncio.wait_for(stream.received, WAIT) == b"ping"  # the connection's events are the stream's
        transport.write(END)
        transport.close()
        assert await asyncio.wait_for(reader.read(), WAIT) == END
        assert await asyncio.wait_for(stream.lost, WAIT) is None
        assert guard.open == 0
        writer.close()


async def test_release_refuses_what_is_not_aiohttp_s_protocol_for_that_transport() -> None:
    """Nothing changes (False) unless ``handler`` is aiohttp's protocol holding that very transport."""
    transport = object()
    assert _aiohttp.release_connection(object(), transport) is False  # type: ignore[arg-type]
    unconnected = _server()()  # a RequestHandler before connection_made: it holds no transport
    assert isinstance(unconnected, web.RequestHandler)
    assert _aiohttp.release_connection(unconnected, transport) is False  # type: ignore[arg-type]


async def test_a_connection_lost_that_no_longer_closes_through_force_close_keeps_the_stream_on_aiohttp(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_checks: None) -> None:
    """The fallback: an aiohttp whose ``connection_lost`` changed shape is not asked to let go; the stream
    keeps its task and aiohttp ends the body as usual (one warning says why)."""
    original = web.RequestHandler.connection_lost

    def connection_lost(self: web.RequestHandler, exc: BaseException | None) -> None:
        original(self, exc)  # same behaviour, other shape: no force_close in its code

    monkeypatch.setattr(web.RequestHandler, "connection_lost", connection_lost)
    stream, held = _Stream(), list[Any]()
    async with listening(_detaching_handler(stream, held)) as (site, _guard, _runner):
        reader, writer, _head = await request(site)
        assert await read(reader, len(HELLO) + len(END)) == HELLO + END
        assert held[1] is False
        writer.close()
    assert any("no longer closes through force_close" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the listener's public API


async def test_base_site_registers_with_its_runner_which_stops_it_first_on_cleanup() -> None:
    """``GuardedSite`` relies on ``BaseSite.start``/``stop`` (un)registering it and on ``runner.cleanup()``
    stopping registered sites; ``runner.server`` is the protocol factory it wraps."""
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None and isinstance(runner.server(), web.RequestHandler)
    site = GuardedSite(runner, "127.0.0.1", 0, ConnectionGuard(10, 5.0, Metrics()))
    await site.start()
    port = site.port
    assert site in runner.sites and port != 0
    await runner.cleanup()
    assert site not in runner.sites
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def _server() -> web.Server:
    async def handler(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    return web.Server(handler)

