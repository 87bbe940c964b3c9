"""HTTP side of the CLI: one request helper, the SSE reader, and the error-to-exit-code mapping.

Every failure becomes a :class:`CliError` carrying the process exit code, so
the command functions never decide exit codes themselves:

* 1 — the server answered with an error (message taken from its JSON body);
* 2 — usage or local input error (raised by the CLI before any request);
* 3 — the server could not be reached (connection refused, DNS, timeout);
* 4 — precondition failed (HTTP 412): someone else wrote first, retry.

Every request of one CLI run carries the same ``X-Request-ID`` (generated, or
``--request-id``); server errors print the id the server echoed, to grep its logs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from configcenter_sdk import EventTooLargeError, SSEParser, wire

from . import output as out

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PRECONDITION = 4

#: Errors that mean "no usable answer from the server" (exit 3), not "the server said no".
NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
    OSError,
)


class CliError(Exception):
    """A one-line error for stderr and the exit code the process ends with."""

    def __init__(self, message: str, code: int = EXIT_SERVER_ERROR, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status  # the HTTP status when the server answered


def usage_error(message: str) -> CliError:
    return CliError(message, EXIT_USAGE)


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: ``event`` name, ``id`` (its revision, if any), decoded ``data``, and
    ``raw_id``: the id as sent (``<cluster hex>:<revision>``), what a resume must send back."""

    event: str
    id: int | None
    data: Any
    raw_id: str | None = None


@dataclass
class Client:
    """Talks to one configcenter server; use as ``async with Client(...) as client``."""

    server: str
    token: str | None = None
    timeout: float | None = None
    ssl_context: ssl.SSLContext | None = None  # https: CA bundle / client certificate; None = system CAs
    request_id: str | None = None  # sent as X-Request-ID with every request; None: a new uuid4 hex
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.request_id = self.request_id or uuid.uuid4().hex

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(ssl=self.ssl_context if self.ssl_context is not None else True)
        self._session = aiohttp.ClientSession(headers=self._auth_headers(), connector=connector)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _auth_headers(self) -> dict[str, str]:
        """Headers of every request: the request id, and the bearer token if there is one."""
        headers = {"X-Request-ID": str(self.request_id)}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Client used outside 'async with'")
        return self._session

    def url(self, path: str) -> str:
        return self.server.rstrip("/") + path

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        if_revision: int | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer; raise :class:`CliError` on any failure."""
        headers = {"Accept": "application/json"}
        if if_revision is not None:
            headers["If-Match"] = str(if_revision)
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with self.session.request(
                method, self.url(path), params=params, data=data, headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
                echoed = resp.headers.get("X-Request-ID", self.request_id)
        except NETWORK_ERRORS as exc:
            raise self.unreachable(exc) from exc
        if status >= 400:
            raise http_error(status, raw, echoed)
        return decode_json(raw, status)

    def unreachable(self, exc: BaseException) -> CliError:
        reason = str(exc) or exc.__class__.__name__
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout}s"
        return CliError(f"cannot reach server at {self.server}: {reason}", EXIT_UNREACHABLE)

    async def events(
        self, params: list[tuple[str, str]], last_event_id: str | None
    ) -> AsyncIterator[SseEvent]:
        """Open ``GET /v1/watch`` once and yield its events until the server closes the stream."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout or 10)
        async with self.session.get(self.url("/v1/watch"), params=params, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                raise http_error(resp.status, await resp.read(), resp.headers.get("X-Request-ID", self.request_id))
            async for event in parse_sse(resp.content):
                yield event


def request_id_arg(text: str) -> str:
    """``--request-id``: 1-128 visible ASCII characters, the only ids the server echoes back."""
    if not re.fullmatch(r"[!-~]{1,128}", text):
        raise argparse.ArgumentTypeError(f"must be 1-128 visible ASCII characters without spaces, got {text!r}")
    return text


def http_error(status: int, raw: bytes, request_id: str | None = None) -> CliError:
    """``<server message> (HTTP <status>) [request id <id>]``; 412 maps to exit 4, everything else to 1."""
    message = ""
    try:
        body = orjson.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = str(body["error"].get("message", ""))
    except orjson.JSONDecodeError:
        message = raw.decode("utf-8", errors="replace").strip().splitlines()[0] if raw.strip() else ""
    message = message or "request failed"
    code = EXIT_PRECONDITION if status == 412 else EXIT_SERVER_ERROR
    suffix = f" [request id {request_id}]" if request_id else ""
    return CliError(f"{message} (HTTP {status}){suffix}", code, status)


def decode_json(raw: bytes, status: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"server answered HTTP {status} with a body that is not JSON") from exc


async def parse_sse(stream: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """Decode a ``text/event-stream`` body with the SDK's bounded parser (``configcenter_sdk.wire``
    documents the format); an event past its limit ends the watch with a clear error."""
    parser = SSEParser()
    async for chunk in stream.iter_any():
        try:
            events = parser.feed(chunk)
        except EventTooLargeError as exc:
            raise CliError(f"the server sent an event over the limit: {exc}") from exc
        for event in events:
            parsed = wire.parse_event_id(event.id)
            yield SseEvent(event.event, parsed[1] if parsed else None, _decode_data(event.data),
                           event.id if parsed else None)
        if parser.error is not None:
            raise CliError(f"the server sent an event over the limit: {parser.error}")


def _decode_data(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


async def backoff_sleep(attempt: int, initial: float = 0.2, maximum: float = 5.0) -> None:
    """Exponential backoff with full jitter before reconnect number ``attempt`` (1, 2, …)."""
    await asyncio.sleep(random.uniform(0, min(maximum, initial * 2 ** (attempt - 1))))


# --------------------------------------------------------------------------- watch


@dataclass
class WatchOptions:
    selectors: list[str]
    since: int | None = None
    count: int | None = None
    verbose: bool = False
    json: bool = False
    timeout: float | None = None


@dataclass
class WatchState:
    """What survives a reconnect: the resume point and how many changes are still wanted."""

    last_id: int | None
    remaining: int | None
    seen: int = 0
    last_raw_id: str | None = None  # the full id last received: sent back as Last-Event-ID
    # namespace -> revision printed since the last reset: a transaction's frames share a revision
    # and only its last one has an id, so a resume replays the frames before it
    printed: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.remaining is not None and self.seen >= self.remaining


def _replayed(change: dict[str, Any], state: WatchState) -> bool:
    """Whether a ``change`` was already printed (below the resume point, or its namespace at that revision)."""
    ns, revision = change.get("ns"), change.get("revision")
    if not isinstance(ns, str) or not isinstance(revision, int):
        return False
    if (state.last_id is not None and revision < state.last_id) or state.printed.get(ns, -1) >= revision:
        return True
    state.printed[ns] = revision
    return False


async def watch(client: Client, options: WatchOptions) -> int:
    """Tail ``/v1/watch`` until Ctrl-C, ``--count`` changes, or ``--timeout`` (exit 1 if the count is short)."""
    state = WatchState(options.since, options.count)
    try:
        await asyncio.wait_for(_watch_loop(client, options, state), options.timeout)
    except TimeoutError:
        if options.count is not None and not state.done:
            raise CliError(f"watch timed out after {options.timeout:g}s with {state.seen} of "
                           f"{options.count} changes") from None
    except asyncio.CancelledError:  # Ctrl-C while waiting: a normal way to stop watching
        pass
    return EXIT_OK


async def _watch_loop(client: Client, options: WatchOptions, state: WatchState) -> None:
    params = [("ns", s) for s in options.selectors]
    connected, attempt = False, 0
    while not state.done:
        first = params + ([("since", str(state.last_id))] if state.last_id is not None and not connected else [])
        try:
            resume = (state.last_raw_id or str(state.last_id)) if connected and state.last_id is not None else None
            async for event in client.events(first, resume):
                connected, attempt = True, 0
                _handle_event(event, options, state)
                if state.done:
                    return
            reason = "the server closed the stream"
        except NETWORK_ERRORS as exc:
            if not connected:
                raise client.unreachable(exc) from exc
            reason = str(exc) or exc.__class__.__name__
        attempt += 1
        _note(f"watch: connection lost ({reason}); reconnecting from revision {state.last_id}")
        await backoff_sleep(attempt)


def _handle_event(event: SseEvent, options: WatchOptions, state: WatchState) -> None:
    data = event.data if isinstance(event.data, dict) else {}
    if event.event == wire.EVENT_RESET:
        state.printed.clear()
    elif event.event == wire.EVENT_CHANGE and _replayed(data, state):
        return  # duplicate after a reconnect
    if event.id is not None:
        state.last_id, state.last_raw_id = event.id, event.raw_id
    if event.event == wire.EVENT_PROGRESS and not options.verbose:
        return
    if event.event == wire.EVENT_CHANGE:
        state.seen += 1
    if options.json:
        print(orjson.dumps({"event": event.event, "id": event.id, "data": event.data}).decode(), flush=True)
    elif event.event == wire.EVENT_CHANGE:
        print(out.change_line(data), flush=True)
    elif event.event == wire.EVENT_RESET:
        print(out.reset_line(data), flush=True)
    elif event.event == wire.EVENT_PROGRESS:
        print(out.progress_line(data), flush=True)
    elif event.event == wire.EVENT_INVALID:
        _note(f"watch: {data.get('ns')} at revision {data.get('revision')} is unreadable: {data.get('error')}")


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def current_release(client: Client, ns: str) -> dict[str, Any] | None:
    """The namespace's current release, or None if it does not exist (404); other errors raise."""
    try:
        release: dict[str, Any] = await client.call("GET", f"/v1/namespaces/{ns}")
    except CliError as exc:
        if exc.status == 404:
            return None
        raise
    return release
