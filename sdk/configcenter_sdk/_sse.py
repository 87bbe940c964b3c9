"""Incremental Server-Sent Events parser (the subset configcenter's hub emits).

Feed raw bytes as they arrive with :meth:`SSEParser.feed`; it returns every
event completed by those bytes. Lines end with ``\\n``, ``\\r\\n`` or ``\\r``;
an event ends at a blank line. Fields: ``id``, ``event`` (default
``message``), ``data`` (several data lines are joined with ``\\n``); lines
starting with ``:`` are comments; other fields are ignored. An event without
any ``data`` line is dropped, as the SSE specification says.

Unlike ``StreamReader.readline`` there is no line-length limit: a ``reset``
carrying every subscribed document can be megabytes on one ``data`` line.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; ``id`` is None when the frame carried no ``id`` field."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Stateful byte-stream to :class:`SSEEvent` converter (one per connection)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed, in order."""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # second half of a \r\n split across chunks
        self._pending_cr = chunk.endswith(b"\r")
        data = self._buffer + chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._buffer = data.split(b"\n")
        events: list[SSEEvent] = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", "replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        event = None
        if self._data:
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._id = "", [], None
        return event
