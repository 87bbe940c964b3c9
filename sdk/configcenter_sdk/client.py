"""The asyncio configcenter client: SSE subscription, fallback, hot route tables.

Contract
--------
* ``async with ConfigClient(servers, namespaces) as client`` loads the on-disk
  snapshots (``cache_dir``), starts the subscription and waits up to
  ``start_timeout`` for the first server answer, or until every server failed
  once. With no server reachable it starts in ``fallback`` mode on whatever the
  snapshots held; it raises :class:`BackendUnavailableError` only when
  ``require_initial=True`` and nothing at all is available.
* The subscription (``GET /v1/watch``) resumes with ``Last-Event-ID`` =
  ``<cluster hex>:<revision>`` of the last ``reset``/``change``/``progress``
  (``_stream``); with ``cache_dir`` that point is persisted behind the
  snapshots, so a restarted client resumes from disk. On error it retries with
  exponential backoff and full jitter, ``uniform(0, min(backoff_max,
  backoff_initial * 2**failures))``, moving round robin to the next server.
* A ``reset`` below the client's revision, from another cluster, or that
  says etcd went back, is authoritative: it replaces the state and snapshots
  (``status().resets_backwards``).
* A change at or below the revision already known (for its namespace or the
  stream) is dropped, so listeners never see one revision twice. A change
  whose ``prev_revision`` is not the namespace's known revision is a gap: the
  namespace is re-read over HTTP and the gap counted in :meth:`status`.
* ``mode`` is ``live`` while a subscription delivers events, ``fallback``
  otherwise: right after start until the first event, after a failed
  reconnect attempt, or when no event (not even ``progress``) arrived for
  ``idle_timeout`` seconds. Every transition is logged and reported to the
  ``on_mode_change`` listeners as ``(old, new)``.
* Route tables are compiled off to the side and published with one reference
  assignment; :meth:`route` reads that reference once, so a request sees one
  consistent table. A table that fails to compile is rejected (``status().errors``,
  ``on_error`` listeners) and the last good one stays.
* Listeners run on the client's event loop, in order; a coroutine result is
  awaited before the next event is applied. Their exceptions are logged.
* Unless ``report=False`` the client reports itself (``identity``: ``instance_id``, ``service``,
  ``labels``) and, per namespace, the revision it applied or rejected to ``POST
  /v1/instances/{id}/report`` on every change and as a heartbeat, in its own task (``_report``);
  ``close()`` says goodbye. ``max_regex_program_size`` bounds header regexes of route tables here
  (tables over it are rejected like any that fails to compile).
* Canary releases: a record that carries a ``canary`` gives this instance the candidate if it is a
  member of the canary's target (``configcenter_sdk.canary.is_member`` on ``identity``'s instance id
  and labels), else the record's document; tables, listeners, ``get()``, snapshots and fallback all
  use that effective document, and ``status()`` / the report say which ``track`` each namespace is
  on (``_track``). A canary that cannot be read is rejected like a table that does not compile.
* What a server can make the client hold is bounded: an SSE line or event past ``max_event_bytes``
  (default ``_sse.DEFAULT_MAX_EVENT_BYTES``, 62.5 MiB: a reset of 80 namespaces at the server's
  document limit) drops that connection, is logged (ERROR) and counted (``status().oversized_events``),
  and the client moves on to the next server, backing off as after a failure, while it keeps serving
  the documents it holds (``fallback`` until a server delivers again). ``idle_timeout`` counts from the
  last complete event, so a server trickling bytes that never finish an event is dropped too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NoReturn

import aiohttp
import orjson

from ._persist import ResumeMarker, SnapshotWriter, load_snapshots
from ._report import Reporter, make_identity, namespace_report
from ._sse import DEFAULT_MAX_EVENT_BYTES, SSEParser, check_max_event_bytes
from ._state import (
    ChangeCallback,
    ClientStatus,
    ErrorCallback,
    Incoming,
    LocalState,
    Mode,
    NamespaceStatus,
    parse_release,
)
from ._state import namespace_matcher as _matcher
from ._stream import StreamState
from ._track import membership
from .cache import CachedDoc, FallbackCache
from .errors import BackendUnavailableError, EventTooLargeError, UnknownServiceError
from .routing import RouteDecision
from .snapshot import SnapshotStore
from .tls import client_ssl_context

__all__ = ["ClientStatus", "ConfigClient", "Mode", "NamespaceStatus"]

log = logging.getLogger("configcenter_sdk.client")

ModeCallback = Callable[[str, str], None]


class _StreamError(Exception):
    """The subscription cannot continue (bad status, idle timeout)."""


class ConfigClient:
    """Subscribe to configcenter namespaces; serve documents and route tables from memory."""

    def __init__(
        self,
        servers: Sequence[str],
        namespaces: Sequence[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        cache_ttl: float = 30.0,
        cache_maxsize: int = 1024,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        idle_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_mode_change: ModeCallback | None = None,
        start_timeout: float = 5.0,
        require_initial: bool = False,
        connect_timeout: float = 3.0,
        ca_file: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        service: str | None = None,
        labels: Mapping[str, str] | None = None,
        instance_id: str | None = None,
        report: bool = True,
        max_regex_program_size: int | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if isinstance(servers, str) or not servers:
            raise ValueError("servers must be a non-empty sequence of base URLs")
        if isinstance(namespaces, str):
            raise ValueError("namespaces must be a sequence of names/prefixes, not a string")
        self._servers = tuple(s.rstrip("/") for s in servers)
        self._selectors = tuple(namespaces)
        self._match = _matcher(self._selectors)
        self._token = token
        self._backoff = (backoff_initial, backoff_max)
        self._idle_timeout = 15.0 if idle_timeout is None else idle_timeout
        self._max_event_bytes = check_max_event_bytes(max_event_bytes)
        self._connect_timeout = connect_timeout
        # https: ca_file replaces the system CA store; client_cert/key for servers that require one (_tls)
        self._ssl = client_ssl_context(*(os.fspath(f) if f is not None else None
                                         for f in (ca_file, client_cert, client_key)))
        self._start_timeout = start_timeout
        self._require_initial = require_initial
        self._cache_ttl = cache_ttl
        store = SnapshotStore(cache_dir, clock=clock) if cache_dir is not None else None
        self._writer = SnapshotWriter(store) if store is not None else None
        self._state = LocalState(FallbackCache(cache_maxsize, cache_ttl, clock), self._persist,
                                 max_regex_program_size)
        self._mode: Mode = "fallback"
        self._mode_listeners: tuple[ModeCallback, ...] = (on_mode_change,) if on_mode_change else ()
        self._server: str | None = None
        self._index = 0
        self._stream = StreamState(self._state, self._match, self._fetch, on_applied=self._mark,
                                   on_rewrite=self._unmark)
        self._task: asyncio.Task[NoReturn] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._settled = asyncio.Event()
        self._rng = random.Random()
        self.identity = make_identity(service, labels, instance_id)
        self._state.member = membership(self.identity.instance_id, self.identity.labels)
        self._reporter = self._make_reporter() if report else None
        self._report_task: asyncio.Task[NoReturn] | None = None

    def _make_reporter(self) -> Reporter:
        """The instance reporter (``_report``), told at once of every change, rejection and mode switch."""
        reporter = Reporter(
            self.identity, self._selectors,
            lambda: {"mode": self._mode, "namespaces": namespace_report(self._state, self._mode)},
            session=lambda: self._session, headers=self._headers,
            server=lambda: self._server or self._servers[self._index], timeout=self._connect_timeout,
        )
        self._state.add_change_listener(None, reporter.changed)
        self._state.add_error_listener(reporter.changed)
        self._mode_listeners = (*self._mode_listeners, reporter.changed)
        return reporter

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ConfigClient:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Load snapshots, subscribe, wait for the first answer (see the module docstring)."""
        if self._task is not None:
            raise RuntimeError("client already started")
        self._settled = asyncio.Event()
        await self._load_disk()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout)
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="configcenter-subscription")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), self._start_timeout)
        if self._reporter is not None:  # first report once settled: not a 'fallback' of the first milliseconds
            self._report_task = asyncio.get_running_loop().create_task(self._reporter.run(),
                                                                       name="configcenter-report")
        if self._mode == "live":
            return
        if self._require_initial and not self._state.cache.namespaces():
            await self.close()
            raise BackendUnavailableError(f"no configcenter server reachable ({', '.join(self._servers)}) "
                                          "and no snapshot on disk")
        log.warning("configcenter unreachable at start; serving %d namespace(s) from snapshots in fallback mode",
                    len(self._state.cache.namespaces()))

    async def close(self) -> None:
        """Stop the subscription and persist pending snapshots; idempotent."""
        for task in (self._task, self._report_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._report_task = None
        if self._reporter is not None:
            await self._reporter.goodbye()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._writer is not None:
            self._mark()
            await self._writer.flush()
        self._server = None

    # ------------------------------------------------------------------ reading

    @property
    def mode(self) -> Mode:
        """``live`` or ``fallback`` (thread-safe read)."""
        return self._mode

    @property
    def reports_sent(self) -> int:
        """Instance reports the server accepted so far (0 with ``report=False``)."""
        return self._reporter.sent if self._reporter is not None else 0

    def route(self, service: str, headers: Mapping[str, str]) -> RouteDecision:
        """Route one request by the current table of ``service``; ``UnknownServiceError`` if none.

        Thread-safe and lock-free: the table map is read once and never mutated.
        """
        table = self._state.tables.get(service)
        if table is None:
            raise UnknownServiceError(f"no route table loaded for service {service!r}")
        return table.route(headers)

    def get(self, ns: str) -> Mapping[str, Any] | None:
        """The current document of ``ns`` (treat it as read-only), or None if it has none.

        Served from memory; an entry evicted from the bounded cache is reloaded
        from its snapshot. Counts as a use for the cache's LFU eviction.
        """
        hit = self._state.cache.get(ns)
        if hit is not None:
            return hit.entry.doc
        if self._writer is None or ns not in self._state.revisions:
            return None
        entry = self._writer.store.load(ns)
        if entry is None:
            return None
        entry = self._state.decide(entry)
        self._state.cache.put(entry)
        return entry.doc

    def status(self) -> ClientStatus:
        """Mode, server, revisions, counters, per-namespace freshness and recent errors."""
        namespaces: dict[str, NamespaceStatus] = {}
        for ns in self._state.cache.namespaces():
            hit = self._state.cache.peek(ns)
            if hit is None:
                continue
            entry = hit.entry
            source: Literal["live", "memory", "disk"] = "disk" if entry.source == "disk" else (
                "live" if self._mode == "live" else "memory")
            stale = self._mode != "live" or self._stream.server_stale or not hit.fresh
            namespaces[ns] = NamespaceStatus(entry.revision, entry.kind, source, round(hit.age, 3), stale, entry.track,
                                             entry.revision if entry.track == "canary" else None)
        stream, counters = self._stream, self._stream.counters
        return ClientStatus(self._mode, self._server, stream.revision, counters["reconnects"], counters["gaps"],
                            counters["duplicates"], stream.server_stale, namespaces, tuple(self._state.errors),
                            counters["resets_backwards"], stream.cluster, counters["oversized_events"])

    # ------------------------------------------------------------------ listeners

    def on_change(self, ns: str | None, callback: ChangeCallback) -> None:
        """Call ``callback(ns, doc_or_None, revision)`` once per adopted revision of a matching namespace.

        ``ns`` is a namespace, a prefix ending in ``/`` or None for all. Documents
        loaded from disk at start are reported too; ``None`` means deleted.
        """
        self._state.add_change_listener(ns, callback)

    def on_mode_change(self, callback: ModeCallback) -> None:
        """Call ``callback(old_mode, new_mode)`` on every transition."""
        self._mode_listeners = (*self._mode_listeners, callback)

    def on_error(self, callback: ErrorCallback) -> None:
        """Call ``callback(ns, revision, exception)`` when a received document is rejected."""
        self._state.add_error_listener(callback)

    async def refresh(self, ns: str) -> bool:
        """Re-read ``ns`` over HTTP from the current (or first) server; adopt it if newer.

        Returns whether a newer revision was adopted. Used to close gaps.
        """
        release = await self._fetch(ns)
        return release is not None and await self._state.adopt(release)

    # ------------------------------------------------------------------ subscription

    async def _run(self) -> NoReturn:
        failures = 0
        while True:
            url = self._servers[self._index]
            went_live = False
            try:
                went_live = await self._subscribe(url)
                log.warning("subscription to %s ended by the server", url)
            except EventTooLargeError as exc:  # a faulty or hostile server: back off as after a failure
                self._stream.counters["oversized_events"] += 1
                log.error("dropped the subscription to %s: %s; serving the documents held, trying the next server",
                          url, exc)
            except (aiohttp.ClientError, OSError, TimeoutError, _StreamError) as exc:
                went_live = self._server == url
                log.warning("subscription to %s failed: %s", url, exc or type(exc).__name__)
            except Exception:  # never let the subscription task die
                went_live = self._server == url
                log.exception("subscription to %s failed unexpectedly", url)
            self._server = None
            failures = 0 if went_live else failures + 1
            if not went_live:
                self._set_mode("fallback", f"cannot subscribe at {url}")
                if failures >= len(self._servers):
                    self._settled.set()
            self._index = (self._index + 1) % len(self._servers)
            self._stream.counters["reconnects"] += 1
            initial, cap = self._backoff
            await asyncio.sleep(self._rng.uniform(0, min(cap, initial * 2 ** min(failures, 30))))

    async def _subscribe(self, url: str) -> bool:
        """Run one subscription until it breaks; returns whether it delivered an event."""
        assert self._session is not None
        headers = self._headers()
        headers["Accept"] = "text/event-stream"
        resume = self._stream.last_event_id()
        if resume is not None:
            headers["Last-Event-ID"] = resume
        params = [("ns", s) for s in self._selectors]
        request = self._session.get(f"{url}/v1/watch", params=params, headers=headers)
        response = await asyncio.wait_for(request, self._connect_timeout)
        async with response:
            if response.status != 200:
                raise _StreamError(f"HTTP {response.status}: {(await response.text())[:200]}")
            return await self._consume(url, response)

    async def _consume(self, url: str, response: aiohttp.ClientResponse) -> bool:
        """Apply the stream's events until it ends (returns whether any arrived), stays without a complete
        event for ``idle_timeout`` (``_StreamError``) or sends one past ``max_event_bytes`` (the
        connection is closed, ``EventTooLargeError``)."""
        parser = SSEParser(self._max_event_bytes)
        live = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._idle_timeout  # moved by complete events only, not by any byte
        while True:
            try:
                async with asyncio.timeout_at(deadline):  # not wait_for: see _report.Reporter.run
                    chunk = await response.content.readany()
            except TimeoutError:
                self._set_mode("fallback", f"no event from {url} for {self._idle_timeout}s")
                raise _StreamError(f"idle for {self._idle_timeout}s") from None
            if not chunk:
                return live
            events = parser.feed(chunk)
            for event in events:
                await self._stream.apply(event, url)
                if not live:
                    live = True
                    self._server = url
                    self._set_mode("live", f"subscribed at {url} from revision {self._stream.revision}")
                    self._settled.set()
            if events:
                deadline = loop.time() + self._idle_timeout
            if parser.error is not None:
                response.close()  # never hand this connection back to the pool
                raise parser.error

    async def _apply_change(self, change: Incoming) -> None:
        """Apply one change as if it came from the stream (kept for tests that drive the decision path)."""
        await self._stream.apply_change(change)

    async def _fetch(self, ns: str) -> Incoming | None:
        """GET the namespace's current release; None if absent or no server answered."""
        url = self._server or self._servers[self._index]
        if self._session is None:
            return None
        try:
            async with self._session.get(f"{url}/v1/namespaces/{ns}", headers=self._headers(),
                                         timeout=aiohttp.ClientTimeout(total=self._connect_timeout)) as resp:
                if resp.status == 404:
                    return None
                resp.raise_for_status()
                return parse_release(await resp.json(loads=orjson.loads))
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("cannot re-read %s from %s: %s", ns, url, exc)
            return None

    # ------------------------------------------------------------------ helpers

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _set_mode(self, new: Mode, reason: str) -> None:
        old = self._mode
        if old == new:
            return
        self._mode = new
        if new == "fallback":
            log.warning("configcenter client %s -> fallback: %s", old, reason)
        else:
            log.info("configcenter client %s -> live: %s", old, reason)
        for callback in self._mode_listeners:
            try:
                callback(old, new)
            except Exception:
                log.exception("mode listener %r failed", callback)

    def _persist(self, item: CachedDoc | str, replace_newer: bool) -> None:
        if self._writer is None:
            return
        if isinstance(item, str):
            self._writer.remove(item)
        else:
            self._writer.save(item, replace_newer=replace_newer)

    def _mark(self) -> None:
        """Persist the resume point behind every snapshot write scheduled so far."""
        if self._writer is not None and (self._stream.revision > 0 or self._stream.cluster):
            self._writer.mark(ResumeMarker(self._stream.revision, self._stream.cluster, self._selectors))

    def _unmark(self) -> None:
        if self._writer is not None:
            self._writer.unmark()

    async def _load_disk(self) -> None:
        """Adopt every usable snapshot of the subscribed namespaces (unusable files: WARNING, skipped)
        and take the resume point persisted with them, if it is usable (``_persist.load_snapshots``)."""
        if self._writer is None:
            return
        marker = await load_snapshots(self._writer.store, self._selectors, self._match, self._state)
        if marker is not None:
            self._stream.revision, self._stream.cluster = marker.revision, marker.cluster
