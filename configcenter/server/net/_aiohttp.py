"""Every use of aiohttp's internals and undocumented behaviour, in one place (aiohttp 3.14).

Why we reach past aiohttp's public API at all: an SSE subscriber is a long-lived response whose body
the hub writes itself, and an idle one should cost its transport and our state, not aiohttp's request
handler, parser, request, response and task (~13 KiB against ~2.7: docs/architecture.md, "Idle
streams are served without a task, and without aiohttp").  Two things need aiohttp's cooperation:

* **Writing the body behind** ``StreamResponse`` (``open_raw_body``): the head goes out through aiohttp
  (chunked for HTTP/1.1), then every body byte goes straight to ``request.transport``.  Relied on:
  after ``prepare()`` and ``send_headers()`` (public) aiohttp holds no body bytes back; it writes nothing
  more to the connection until the handler returns; then its ``write_eof`` writes exactly the chunked
  terminator ``0\\r\\n\\r\\n`` (HTTP/1.0: nothing, and it closes the connection).
* **Letting go of a connection** (``release_connection``): ``RequestHandler.transport = None`` then
  ``RequestHandler.connection_lost(None)``.  Relied on: the protocol keeps its transport in the
  ``transport`` attribute (``aiohttp.base_protocol.BaseProtocol``); ``connection_lost`` unregisters the
  connection from the ``web.Server`` and drops the handler, parser and request, and closes the transport
  only through ``force_close()``, which closes ``self.transport`` (None here, so the socket stays
  open); with ``handler_cancellation`` off (the default) the running handler is not cancelled; when it
  returns, ``write_eof`` finds no transport and writes nothing (a ``ConnectionError`` aiohttp swallows).

Fail closed: ``release_unsupported_reason`` checks the names above once; if they are not there,
``release_connection`` refuses (one warning) and the stream stays on its task (correct, ~13 KiB per
idle subscriber).  ``tests/contracts/test_aiohttp_contract.py`` pins each internal and behaviour listed
here by name, on real sockets: if it fails after an aiohttp upgrade, adapt this module (and only it)
before widening ``aiohttp<3.15`` in pyproject.toml.

The listening socket itself uses public API only (``net.listener.GuardedSite``: a ``web.BaseSite``
over ``loop.create_server(runner.server, ...)``); the contract test pins what it relies on from
``BaseSite``/``BaseRunner`` too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, cast

from aiohttp import HttpVersion11, web

log = logging.getLogger("configcenter.listener")

__all__ = ["open_raw_body", "release_connection", "release_unsupported_reason"]


async def open_raw_body(request: web.Request, resp: web.StreamResponse) -> tuple[asyncio.Transport, bool]:
    """Send ``resp``'s head and hand its body over to the caller: ``(transport, chunked)``.

    ``chunked`` (HTTP/1.1): the caller frames every body byte as a chunk (RFC 9112 §7.1), aiohttp writes
    the terminator when the handler returns.  HTTP/1.0: raw bytes, the end of the connection ends the
    body.  ConnectionResetError if the peer is gone; ValueError for a response aiohttp would re-encode.
    """
    if resp.compression:
        raise ValueError("a compressed response cannot have its body written behind aiohttp")
    chunked = request.version >= HttpVersion11
    if chunked:
        resp.enable_chunked_encoding()
    writer = await resp.prepare(request)
    if writer is None:
        raise ValueError("the response was already ended")
    writer.send_headers()  # aiohttp may hold the head back for the first body write, which is not its
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    # duck-typed: uvloop's TCPTransport has the same methods but is not an asyncio.Transport subclass
    return cast(asyncio.Transport, transport), chunked


@functools.cache
def release_unsupported_reason() -> str | None:
    """Why ``release_connection`` cannot be used with this aiohttp (None: it can)."""
    handler = getattr(web, "RequestHandler", None)
    if handler is None:
        return "aiohttp.web.RequestHandler is gone"
    if not any("transport" in getattr(cls, "__slots__", ()) for cls in handler.__mro__):
        return "aiohttp's RequestHandler no longer keeps its transport in a transport slot (BaseProtocol)"
    if "force_close" not in _names(handler, "connection_lost"):
        return "RequestHandler.connection_lost no longer closes through force_close"
    if "transport" not in _names(handler, "force_close"):
        return "RequestHandler.force_close no longer closes self.transport"
    return None


def _names(cls: type, method: str) -> set[str]:
    code = getattr(getattr(cls, method, None), "__code__", None)
    return set(code.co_names) if code is not None else set()


def release_connection(handler: Any, transport: asyncio.BaseTransport | None) -> bool:
    """Make aiohttp forget the connection ``transport`` served by ``handler`` (its ``RequestHandler``)
    without closing it; the caller then owns the transport's events.  False, nothing changed, if
    ``handler`` is not aiohttp's protocol for ``transport`` or this aiohttp is not the one described above."""
    reason = release_unsupported_reason()
    if reason is not None:
        _warn_once(reason)
        return False
    held = handler.transport if isinstance(handler, web.RequestHandler) else None
    if held is None or held is not transport:
        return False
    handler.transport = None  # so connection_lost's force_close cannot close it
    handler.connection_lost(None)
    if held.is_closing():
        log.error("aiohttp closed a connection it was asked to release: see tests/contracts/test_aiohttp_contract.py")
    return True


@functools.cache
def _warn_once(reason: str) -> None:
    log.warning("idle event streams stay on their aiohttp task (~13 KiB each): %s", reason)
