"""The mirror's etcd Watch stream and its progress-notification check.

``WatchSession`` drives one bidirectional Watch RPC: it creates a prefix watch
at a given start revision and asks for progress every ``interval`` seconds.
A stream that stays silent for three intervals is treated as dead (a paused
or partitioned etcd does not always close the TCP connection).

``ProgressVerifier`` exists because etcd before 3.5.8 / 3.4.25 may answer a
progress request *before* pending events (etcd-io/etcd#15220).  Trusting such
a revision would make the mirror drop those events as replays.  So a progress
revision P is accepted only if a keys-only read at P shows exactly the keys
the mirror holds, none modified after the applied revision: then no change
of ``docs/`` lies in (applied, P].

The requests go to grpc as an ``etcd.RequestStream`` object, not an async generator:
grpc consumes a request iterator in a task of its own that nobody awaits.
When etcd breaks the stream that task stays suspended in the iterator;
an async generator left there is garbage-collected with the task ("Task was
destroyed but it is pending", then "aclose(): asynchronous generator is
already running").  ``RequestStream.close()`` ends the iteration instead, so
grpc's task finishes whichever way the stream ended.

``RevisionProbe`` answers "what is etcd's revision *now*" for the hub when a
subscriber resumes above anything the mirror has heard of (see ``Mirror.etcd_revision_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Set
from typing import Any

from etcd3aio import Etcd3Client, prefix_range_end

from configcenter.server.etcd import client as _etcd


class WatchSession:
    """One Watch RPC on ``prefix`` from ``start_revision``; iterate ``responses()`` once."""

    def __init__(self, stub: Any, prefix: bytes, start_revision: int, interval: float) -> None:
        self._stub = stub
        self._prefix = prefix
        self._start = start_revision
        self._interval = interval
        self._requests = _etcd.RequestStream()
        self._call: Any = None
        self._dropped = False
        self._last_response = time.monotonic()

    def cancel(self) -> None:
        """Drop the stream; the consumer sees ``ConnectionResetError`` (not a task cancellation)."""
        self._dropped = True
        if self._call is not None:
            self._call.cancel()

    async def responses(self) -> AsyncGenerator[Any, None]:
        create = _etcd.WatchCreateRequest(
            key=self._prefix, range_end=prefix_range_end(self._prefix),
            start_revision=self._start, progress_notify=True,
        )
        self._requests.put(_etcd.WatchRequest(create_request=create))
        self._call = self._stub.Watch(self._requests)
        ticker = asyncio.create_task(self._tick())
        try:
            async for response in self._call:
                self._last_response = time.monotonic()
                yield response
            raise ConnectionResetError("etcd closed the watch stream")
        except asyncio.CancelledError:
            if self._dropped:
                raise ConnectionResetError("watch stream dropped") from None
            raise
        finally:
            ticker.cancel()
            self._call.cancel()  # a no-op when the call already ended (then grpc's task still waits on us)
            self._requests.close()

    async def _tick(self) -> None:
        progress = _etcd.WatchRequest(progress_request=_etcd.WatchProgressRequest())
        while True:
            await asyncio.sleep(self._interval)
            if time.monotonic() - self._last_response > 3 * self._interval:
                self.cancel()
                return
            self._requests.put(progress)


class ProgressVerifier:
    """Decides whether a progress revision can be trusted (see module docstring)."""

    def __init__(self, client: Etcd3Client, layout: _etcd.KeyLayout, timeout: float) -> None:
        self._client = client
        self._layout = layout
        self._timeout = timeout

    async def confirms(self, revision: int, present: Set[str], applied: int) -> bool:
        kv = self._client.kv
        if kv is None:
            return False
        start = self._layout.docs_prefix
        try:
            _, items = await _etcd.read_range(
                kv, start, prefix_range_end(start), revision=revision, keys_only=True, timeout=self._timeout
            )
        except Exception:
            return False
        if any(item.mod_revision > applied for item in items):
            return False
        with contextlib.suppress(UnicodeDecodeError):
            return {self._layout.ns_of_doc_key(item.key) for item in items} == set(present)
        return False

    async def agrees(self, revision: int, documents: Mapping[str, int]) -> bool | None:
        """Whether ``docs/`` at ``revision`` holds exactly ``documents`` ({ns: mod_revision}; -1: any).

        Exact, unlike ``confirms``: the mirror claims to hold every change up to its applied revision,
        so there etcd's keys and mod revisions must be its own.  False also when etcd compacted
        ``revision`` (nothing can be checked there any more: a re-list is the way out); None when
        etcd cannot be asked now.
        """
        kv = self._client.kv
        if kv is None:
            return None
        start = self._layout.docs_prefix
        try:
            _, items = await _etcd.read_range(
                kv, start, prefix_range_end(start), revision=revision, keys_only=True, timeout=self._timeout
            )
        except Exception as exc:
            return False if _etcd.compacted(exc) else None
        try:
            held = {self._layout.ns_of_doc_key(item.key): int(item.mod_revision) for item in items}
        except UnicodeDecodeError:
            return False
        if held.keys() != documents.keys():
            return False
        return all(want in (-1, held[ns]) for ns, want in documents.items())


class RevisionProbe:
    """etcd's response header from a linearizable read that *started after* the caller asked.

    Concurrent callers share reads: at most one read is in flight and callers
    that arrive meanwhile wait for the next one, however many they are.  So a
    flood of subscribers with crafted resume ids costs one small range per etcd
    round trip, not one per subscriber.  ``header()`` gives None when the read
    failed or took longer than ``timeout`` (the read itself carries etcd's timeout).
    """

    def __init__(self, read: Callable[[], Awaitable[Any]]) -> None:
        self._read = read
        self._task: asyncio.Task[Any] | None = None
        self._started = 0  # reads started so far; a caller needs one numbered above what it saw

    async def header(self, timeout: float) -> Any | None:
        try:
            return await asyncio.wait_for(self._fresh_header(), timeout)
        except Exception:  # etcd unreachable, timeout: the caller cannot confirm anything
            return None

    async def _fresh_header(self) -> Any:
        needed = self._started + 1
        while True:
            if self._task is None:
                self._started += 1
                task = self._task = asyncio.ensure_future(self._read())
                task.add_done_callback(self._finished)
            number, task = self._started, self._task
            result = await asyncio.shield(task)
            if number >= needed:
                return result.header

    def _finished(self, task: asyncio.Task[Any]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved, so a failed read is not logged as "never retrieved"
