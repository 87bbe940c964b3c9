"""TLS on the listener without a 256 KiB read buffer per connection: the ONE module that touches
asyncio's SSL internals (``asyncio.sslproto``).

Why: ``loop.create_server(ssl=...)`` wraps every connection in an ``asyncio.sslproto.SSLProtocol``,
whose ``__init__`` allocates ``bytearray(SSLProtocol.max_size)`` (256 KiB) as the buffer the socket
is read into.  An SSE subscriber reads one request head in its life, yet held those 256 KiB for as
long as it stayed connected: 283 KiB per idle TLS subscriber against 3.6 KiB in plain HTTP
(``bench/bench_idle.py --tls``, issue 16).

How: on asyncio's selector event loop the buffer is used only *synchronously*: the transport's
read callback calls ``get_buffer(-1)``, ``sock.recv_into(buffer)`` and then ``buffer_updated(n)``,
which first copies the bytes into the connection's ``ssl.MemoryBIO``; nothing keeps the buffer
between two callbacks.  So every connection of a listener can share one buffer per event loop.
``tls_protocol_factory`` returns a protocol factory for a *plain* ``create_server`` that builds
``_SharedBufferSSLProtocol`` (an ``SSLProtocol`` whose own buffer is 1 byte, replaced by the shared
one right after ``__init__``), exactly what ``BaseSelectorEventLoop._make_ssl_transport`` builds
for ``create_server(ssl=...)`` but for the buffer.  Reads stay 256 KiB at a time.

Internals relied on (checked by ``unsupported_reason`` at every start and by
``tests/configcenter/server/test_tls.py``'s contract test):

* ``SSLProtocol(loop, app_protocol, sslcontext, waiter, server_side, server_hostname,
  call_connection_made, ssl_handshake_timeout, ssl_shutdown_timeout)``;
* ``SSLProtocol.max_size`` (class attribute: size of the buffer ``__init__`` allocates and the most
  ``get_buffer`` hands out);
* ``get_buffer`` returns ``self._ssl_buffer_view`` (re-allocating ``_ssl_buffer`` only when it is
  shorter than asked, never when it is at least ``max_size``); ``buffer_updated`` reads
  ``self._ssl_buffer_view``;
* the running loop is a ``selector_events.BaseSelectorEventLoop`` (a proactor or uvloop reads
  differently: an overlapped ``recv_into`` holds the buffer across callbacks).

Fallback: if any of that does not hold, ``tls_protocol_factory`` returns None after one warning
and the caller serves TLS the standard way (``create_server(ssl=context)``): correct, 256 KiB per
connection.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
from asyncio import selector_events, sslproto
from collections.abc import Callable
from typing import Any

log = logging.getLogger("configcenter.listener")

READ_BUFFER = 256 * 1024  # the shared buffer: as large as asyncio's own, reads are not made smaller
_EXPECTED_INIT = ("self", "loop", "app_protocol", "sslcontext", "waiter", "server_side", "server_hostname",
                  "call_connection_made", "ssl_handshake_timeout", "ssl_shutdown_timeout")


def unsupported_reason(loop: asyncio.AbstractEventLoop) -> str | None:
    """Why the shared buffer cannot be used with ``loop`` on this Python (None: it can)."""
    if not isinstance(loop, selector_events.BaseSelectorEventLoop):
        return f"the event loop {type(loop).__name__} is not asyncio's selector loop"
    cls = getattr(sslproto, "SSLProtocol", None)
    if cls is None or not isinstance(getattr(cls, "max_size", None), int):
        return "asyncio.sslproto.SSLProtocol.max_size is gone"
    params = tuple(inspect.signature(cls.__init__).parameters)
    if params != _EXPECTED_INIT:
        return f"asyncio.sslproto.SSLProtocol.__init__ takes {params}"
    get_buffer, updated = _names(cls, "get_buffer"), _names(cls, "buffer_updated")
    if not {"_ssl_buffer", "_ssl_buffer_view", "max_size"} <= get_buffer or "_ssl_buffer_view" not in updated:
        return "asyncio.sslproto.SSLProtocol no longer reads through _ssl_buffer_view"
    return None


def _names(cls: type, method: str) -> set[str]:
    code = getattr(getattr(cls, method, None), "__code__", None)
    return set(code.co_names) if code is not None else set()


class _SharedBufferSSLProtocol(sslproto.SSLProtocol):
    """``SSLProtocol`` reading into its loop's shared buffer (allocates 1 byte of its own)."""

    max_size = 1  # what ``__init__`` allocates; the instance's ``max_size`` is the shared buffer's

    def __init__(self, shared: bytearray, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_size = len(shared)  # type: ignore[misc]  # get_buffer clamps to it: never re-allocates
        self._ssl_buffer = shared
        self._ssl_buffer_view = memoryview(shared)


def tls_protocol_factory(app_factory: Callable[[], asyncio.BaseProtocol], context: ssl.SSLContext, *,
                         handshake_timeout: float) -> Callable[[], asyncio.BaseProtocol] | None:
    """A factory for a plain ``loop.create_server``: TLS (server side, ``context``) around each
    ``app_factory()`` protocol, ``connection_made`` after the handshake (which must finish within
    ``handshake_timeout`` seconds); None if this asyncio is not the one described above (logged)."""
    loop = asyncio.get_running_loop()
    reason = unsupported_reason(loop)
    if reason is not None:
        log.warning("TLS connections use asyncio's own 256 KiB read buffer each: %s", reason)
        return None
    shared = bytearray(READ_BUFFER)

    def factory() -> asyncio.BaseProtocol:
        return _SharedBufferSSLProtocol(shared, loop, app_factory(), context, None, True, None,
                                        ssl_handshake_timeout=handshake_timeout)

    return factory
