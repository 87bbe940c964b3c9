"""Incremental Server-Sent Events parser (the subset configcenter's hub emits), bounded in memory.

Feed raw bytes as they arrive with :meth:`SSEParser.feed`; it returns every
event completed by those bytes. Lines end with ``\\n``, ``\\r\\n`` or ``\\r``;
an event ends at a blank line. Fields: ``id``, ``event`` (default
``message``), ``data`` (several data lines are joined with ``\\n``); lines
starting with ``:`` are comments; other fields are ignored. An event without
any ``data`` line is dropped, as the SSE specification says.

Limit
-----
What the parser holds for one event (its ``data`` lines so far plus the
unfinished line) never exceeds ``max_event_bytes``. Past it, :meth:`feed`
returns the events completed before that point and sets :attr:`SSEParser.error`
(a :class:`~configcenter_sdk.errors.EventTooLargeError`); the caller drops the
connection, and any later ``feed`` raises that error. Without the limit a
faulty proxy or a compromised server sending one ``data:`` line that never
ends would grow every subscribed service's memory without bound.

The default, :data:`DEFAULT_MAX_EVENT_BYTES`, follows from how the server frames
events (``server/hub.py``): a ``change`` carries one release on one ``data``
line, at most the server's ``limits.max_doc_bytes`` (736 KiB by default) plus
its metadata (:data:`MAX_RELEASE_BYTES`, 800 KiB); a ``reset`` carries *every*
subscribed namespace on one ``data`` line, so one line limit must admit a
reset: 80 namespaces at the document limit (62.5 MiB), thousands of typical
ones. Services subscribing to more large namespaces raise ``max_event_bytes``.

Bytes are scanned once: a long line is appended to a ``bytearray`` chunk by
chunk, not re-concatenated and re-split on every chunk (which was quadratic).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EventTooLargeError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "MAX_RELEASE_BYTES", "SSEEvent", "SSEParser", "check_max_event_bytes"]

SERVER_MAX_DOC_BYTES = 753_664  # the server's default limits.max_doc_bytes (736 KiB)
MAX_RELEASE_BYTES = SERVER_MAX_DOC_BYTES + 65_536  # + the server's RECORD_ALLOWANCE for a release's metadata
DEFAULT_MAX_EVENT_BYTES = 80 * MAX_RELEASE_BYTES  # a reset of 80 namespaces at the document limit: 62.5 MiB
MIN_MAX_EVENT_BYTES = 4096


def check_max_event_bytes(value: object) -> int:
    """``value`` if it is a usable limit (an int of at least 4096), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_MAX_EVENT_BYTES:
        raise ValueError(f"max_event_bytes must be an integer >= {MIN_MAX_EVENT_BYTES}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; ``id`` is None when the frame carried no ``id`` field."""

    event: str
    data: str
    id: str | None


class SSEParser:
    """Stateful byte-stream to :class:`SSEEvent` converter (one per connection)."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = check_max_event_bytes(max_event_bytes)
        self.error: EventTooLargeError | None = None
        self._partial = bytearray()  # the unfinished line
        self._held = 0  # bytes of the current event's data lines (each counted with its joining newline)
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed, in order (see the module's Limit section)."""
        if self.error is not None:
            raise self.error
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # second half of a \r\n split across chunks
        self._pending_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not self._fits(end - start):
                return events
            if self._partial:
                self._partial += chunk[start:end]
                raw = bytes(self._partial)
                self._partial.clear()
            else:
                raw = chunk[start:end]
            event = self._line(raw)
            if event is not None:
                events.append(event)
            start = end + 1
        if self._fits(len(chunk) - start):
            self._partial += chunk[start:]
        return events

    def _fits(self, more: int) -> bool:
        """Whether the event may grow by ``more`` bytes of line; else record the error (nothing is kept)."""
        held = self._held + len(self._partial) + more
        if held <= self.max_event_bytes:
            return True
        self.error = EventTooLargeError(
            f"the server sent an SSE event or line of more than {self.max_event_bytes} bytes "
            f"(max_event_bytes; {held} held when refused)", limit=self.max_event_bytes)
        self._partial = bytearray()
        self._data, self._held = [], 0
        return False

    def _line(self, raw: bytes) -> SSEEvent | None:
        line = raw.decode("utf-8", "replace")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._held += len(raw) + 1
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        event = None
        if self._data:
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._id, self._held = "", [], None, 0
        return event
