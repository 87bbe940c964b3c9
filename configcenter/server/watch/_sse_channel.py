"""Writing an SSE body straight to the connection, so the hub can fan out without a task switch.

aiohttp's ``StreamResponse.write`` is a coroutine: sending one change to N subscribers
through it means waking N tasks (a wakeup, a ``wait_for`` and a write each).  Once the
response's headers are out, the body of an event stream is just bytes on the socket, so
``SseChannel`` writes them itself, synchronously, as HTTP/1.1 chunks (RFC 9112 §7.1, the
framing aiohttp announced with ``Transfer-Encoding: chunked``; HTTP/1.0 gets raw bytes
and the end of the connection ends the body).  Taking the body over from aiohttp is
``net.open_raw_body`` (``net/_aiohttp.py``, the one module on aiohttp's internals, contract-tested):
on the task path aiohttp still ends the body (``0\\r\\n\\r\\n``) when the handler returns; a detached
stream (``_detached``) is ended by ``end()``.

Contract: after ``open()`` every byte of the body goes through the channel, never through
``StreamResponse.write``, so the order of frames is the order of ``try_write``/``write``
calls.  ``try_write`` refuses (returns False, writes nothing) when the peer is not keeping
up (more than ``high_water`` bytes buffered) or is gone: the caller then queues and lets
the subscriber's task deliver, with backpressure, via ``write``.

``try_write`` takes :class:`Body`: bytes framed once for every channel they go to (one
allocation and one ``transport.write`` per subscriber on the hub's fan-out path, however many
subscribers share the frames).

Drain deadline: a peer that does not read would pin what was written to it (a catch-up reset
of every subscribed document) for as long as it stays connected.  ``stalled``, asked
periodically (by ``write`` while it waits, by the detached streams' tick), is true once bytes
that were buffered at one look are still buffered ``drain_timeout`` seconds later; the caller
then ``abort``s the connection, dropping its buffer (the SDK resumes with ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from configcenter.server.net import open_raw_body

HIGH_WATER = 256 * 1024  # bytes buffered for one peer before the fast path stops
DRAIN_POLL = 0.02  # seconds between checks while a slow peer drains
DRAIN_TIMEOUT = 30.0  # seconds a peer may leave written bytes unread (``limits.drain_timeout``)


class Stalled(ConnectionResetError):
    """The peer did not read what was written to it within the drain deadline: the connection is aborted."""


class Body:
    """Bytes of an event-stream body, with their HTTP/1.1 chunk built on first use."""

    __slots__ = ("_chunk", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._chunk: bytes | None = None

    @property
    def chunk(self) -> bytes:
        if self._chunk is None:
            self._chunk = b"%x\r\n%s\r\n" % (len(self.raw), self.raw) if self.raw else b""
        return self._chunk


class SseChannel:
    """The body of one event-stream response (see the module docstring)."""

    __slots__ = ("_chunked", "_drain_timeout", "_due", "_due_at", "_high_water", "_transport", "_written",
                 "sent")  # one per subscriber

    def __init__(self, transport: asyncio.Transport, *, chunked: bool, high_water: int = HIGH_WATER,
                 drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self._transport = transport
        self._chunked = chunked
        self._high_water = high_water
        self._drain_timeout = drain_timeout
        self._written = 0  # bytes handed to the transport so far
        self._due = 0  # ... of which the peer must have taken this many by ``_due_at`` (0.0: nothing due)
        self._due_at = 0.0
        self.sent = False  # set by every write; cleared by whoever watches for idle streams

    @classmethod
    async def open(cls, request: web.Request, resp: web.StreamResponse, *,
                   drain_timeout: float = DRAIN_TIMEOUT) -> SseChannel:
        """Send the headers of ``resp`` and take over its body; ConnectionResetError if the peer left."""
        transport, chunked = await open_raw_body(request, resp)
        return cls(transport, chunked=chunked, drain_timeout=drain_timeout)

    @property
    def transport(self) -> asyncio.Transport:
        return self._transport

    @property
    def high_water(self) -> int:
        return self._high_water

    def writable(self) -> bool:
        """The peer keeps up (at most ``high_water`` bytes buffered) and is still there."""
        transport = self._transport
        return not transport.is_closing() and transport.get_write_buffer_size() <= self._high_water

    def try_write(self, body: Body) -> bool:
        """Write now if the peer keeps up; False (nothing written) if it lags or is gone."""
        if not self.writable():
            return False
        self._put(body)
        return True

    def write_now(self, data: bytes) -> None:
        """Write whatever the backlog (the caller bounds it): a reset or a queue drained at once."""
        if not self._transport.is_closing():
            self._put(Body(data))

    def end(self) -> None:
        """End the body (the chunked terminator, for HTTP/1.1) and close the connection."""
        if not self._transport.is_closing():
            if self._chunked:
                self._transport.write(b"0\r\n\r\n")
            self._transport.close()

    def stalled(self, now: float) -> bool:
        """Whether bytes buffered at an earlier call are still buffered ``drain_timeout`` seconds after it
        (``now``: ``time.monotonic()``).  Call it periodically; each call may start a new deadline."""
        buffered = self._transport.get_write_buffer_size()
        if buffered == 0:
            self._due_at = 0.0
            return False
        if self._due_at == 0.0 or self._written - buffered >= self._due:
            self._due, self._due_at = self._written, now + self._drain_timeout
            return False
        return now >= self._due_at

    def abort(self) -> None:
        """Close the connection now, dropping what is still buffered for the peer."""
        self._transport.abort()

    async def write(self, data: bytes) -> None:
        """Write (always, in order), then wait until the peer's backlog is below the high-water mark.

        Raises ConnectionResetError when the peer is gone, ``Stalled`` (after aborting the connection)
        when it leaves bytes unread past the drain deadline.
        """
        if self._transport.is_closing():
            raise ConnectionResetError("the subscriber went away")
        self._put(Body(data))
        while self._transport.get_write_buffer_size() > self._high_water:
            await asyncio.sleep(DRAIN_POLL)
            if self._transport.is_closing():
                raise ConnectionResetError("the subscriber went away")
            if self.stalled(time.monotonic()):
                self.abort()
                raise Stalled(f"the subscriber left written bytes unread for {self._drain_timeout}s")

    def _put(self, body: Body) -> None:
        """The one place body bytes reach the socket: as an HTTP/1.1 chunk, or raw for HTTP/1.0."""
        data = body.chunk if self._chunked else body.raw
        if data:
            self._transport.write(data)
            self._written += len(data)
            self.sent = True
