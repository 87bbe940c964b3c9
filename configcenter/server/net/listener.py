"""The listening socket: a cap on open connections and a deadline for request headers.

aiohttp holds a connection open for as long as its peer keeps it open, even one
that never finishes sending its request headers ("slowloris"): a few thousand
of those exhaust the server's file descriptors.  ``GuardedSite`` wraps every
connection's protocol in ``_GuardedProtocol``, which

* refuses a connection beyond ``limits.max_connections`` with a complete
  ``503 too_many_connections`` response and closes it (live connections, SSE
  streams included, are never touched to make room);
* closes a connection whose request headers are not complete within
  ``limits.header_timeout`` seconds of its opening, or of the first byte of a
  later request on a kept-alive connection.  A request whose headers were read
  (its handler started: ``request_started``, called by the app's middleware)
  has no deadline here, so SSE streams live as long as they like.

TLS is passed through: the guard wraps the application protocol, after the
handshake (which must finish within ``header_timeout`` too).  TLS connections share one
read buffer (``_tls_listener``) instead of asyncio's 256 KiB each.

``detach`` hands a connection over from aiohttp to an event stream once the
response head is out (``watch/_detached.py``): aiohttp lets go of it
(``_aiohttp.release_connection``, the one place on aiohttp's internals: it drops
its request handler, parser and task and never touches the transport again), and
the guard forwards the connection's events to the stream instead.  The
connection still counts against the cap, with no header deadline.

``GuardedSite`` is the listener, on aiohttp's public API only: a ``web.BaseSite``
(registered with its runner, so ``runner.cleanup()`` stops it before shutting the
connections down) over ``loop.create_server`` with the guarded ``runner.server``
as protocol factory; ``site.port`` / ``site.name`` give the bound port.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import orjson
from aiohttp import web

from configcenter.server.metrics import Metrics

from ._aiohttp import release_connection
from ._tls_listener import tls_protocol_factory

log = logging.getLogger("configcenter.listener")


def _refusal() -> bytes:
    body = orjson.dumps({"error": {"code": "too_many_connections", "details": {},
                                   "message": "the server is at its connection limit (limits.max_connections)"}})
    head = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    return head + body


class ConnectionGuard:
    """Counts open connections and keeps one header deadline per connection."""

    def __init__(self, max_connections: int, header_timeout: float, metrics: Metrics) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.metrics = metrics
        self.open = 0
        self._by_transport: dict[Any, _GuardedProtocol] = {}

    def wrap(self, factory: Any) -> Any:
        """A protocol factory for ``loop.create_server`` around aiohttp's ``factory``."""
        return lambda: _GuardedProtocol(factory(), self)

    def request_started(self, transport: Any) -> None:
        """The headers of a request on ``transport`` are complete: lift its deadline."""
        guarded = self._by_transport.get(transport)
        if guarded is not None:
            guarded.in_request(True)

    def request_finished(self, transport: Any) -> None:
        guarded = self._by_transport.get(transport)
        if guarded is not None:
            guarded.in_request(False)

    def detach(self, transport: Any, stream: Any) -> bool:
        """Give ``transport`` to ``stream`` (an ``asyncio.Protocol``-like object without
        ``connection_made``); False, nothing changed, if this guard does not hold it or aiohttp
        cannot let go of it (``_aiohttp.release_connection``: the stream then keeps its task)."""
        guarded = self._by_transport.get(transport)
        if guarded is None or guarded.detached:
            return False
        return guarded.detach(stream)

    def _opened(self, transport: Any, guarded: _GuardedProtocol) -> bool:
        if self.open >= self.max_connections:
            self.metrics.inc("configcenter_connections_refused_total")
            return False
        self.open += 1
        self._by_transport[transport] = guarded
        self.metrics.set("configcenter_open_connections", self.open)
        return True

    def _closed(self, transport: Any) -> None:
        if self._by_transport.pop(transport, None) is not None:
            self.open -= 1
            self.metrics.set("configcenter_open_connections", self.open)


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's ``RequestHandler``; adds the refusal and the deadline."""

    __slots__ = ("_busy", "_deadline", "_guard", "_inner", "_refused", "_transport", "detached")

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: Any = None
        self._refused = False
        self._busy = False
        self._deadline: asyncio.TimerHandle | None = None
        self.detached = False

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        if not self._guard._opened(transport, self):
            self._refused = True
            transport.write(_refusal())
            transport.close()
            return
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._busy and self._deadline is None:
            self._arm()  # the first byte of the next request on a kept-alive connection
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard._closed(self._transport)
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    def in_request(self, busy: bool) -> None:
        self._busy = busy or self.detached
        self._disarm()

    def detach(self, stream: Any) -> bool:
        if not release_connection(self._inner, self._transport):
            return False
        self._inner = stream
        self.detached = self._busy = True
        self._disarm()
        return True

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._busy:
            return
        self._guard.metrics.inc("configcenter_header_timeouts_total")
        log.info("closing a connection whose request headers did not complete within %.1fs",
                 self._guard.header_timeout)
        self._transport.close()


class GuardedSite(web.BaseSite):
    """A listener for ``runner``'s app whose connections go through a :class:`ConnectionGuard`.

    aiohttp's public API only: ``BaseSite.start``/``stop`` register and unregister the site with its
    runner (``runner.cleanup()`` stops its sites first), ``runner.server`` is the protocol factory, and the
    listening socket is our own ``loop.create_server``.  Before ``start`` ``port`` is the requested port
    (0: any); after, the bound one (the first socket's, as ``web.TCPSite``).
    """

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, guard: ConnectionGuard,
                 *, ssl_context: ssl.SSLContext | None = None, reuse_port: bool | None = None,
                 backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._app_runner = runner
        self._listen = (host, port, backlog, reuse_port)
        self._tls = ssl_context
        self._guard = guard
        self._listening: asyncio.Server | None = None

    @property
    def port(self) -> int:
        sockets = self._listening.sockets if self._listening is not None else ()
        return int(sockets[0].getsockname()[1]) if sockets else self._listen[1]

    @property
    def name(self) -> str:
        """``scheme://host:port`` (host as given, ``0.0.0.0`` for all interfaces; the bound port once started)."""
        host = self._listen[0] or "0.0.0.0"
        return f"{'https' if self._tls else 'http'}://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        """Listen; ``OSError`` if the address cannot be bound."""
        await super().start()  # registers the site with its runner
        server = self._app_runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        factory, context = self._guard.wrap(server), self._tls
        tls: dict[str, Any] = {}
        if context is not None:
            lean = tls_protocol_factory(factory, context, handshake_timeout=self._guard.header_timeout)
            if lean is not None:  # TLS without a read buffer per connection (_tls_listener)
                factory, context = lean, None
            else:
                tls = {"ssl_handshake_timeout": self._guard.header_timeout}
        host, port, backlog, reuse_port = self._listen
        self._listening = await asyncio.get_running_loop().create_server(
            factory, host, port, ssl=context, backlog=backlog, reuse_port=reuse_port, **tls)

    async def stop(self) -> None:
        """Stop listening (open connections are the runner's to shut down) and unregister from the runner."""
        if self._listening is not None:
            self._listening.close()
        await super().stop()
