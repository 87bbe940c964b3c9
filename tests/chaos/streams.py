"""Raw SSE subscribers (aiohttp) that record every frame, resume by id and fail over.

``RawSubscriber`` behaves like a minimal SDK: on any error or ``idle`` seconds of
silence it moves to the next replica and resumes with ``Last-Event-ID`` = the
last id it received, verbatim.  ``StalledSubscriber`` is the slow reader of the
``stall_reader`` fault: a tiny receive buffer, and it stops reading on command (also the one-shot
resume probe of ``etcd_restore``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from typing import Any

import aiohttp

from chaos.sse_records import SSEParser, frame_record


class RawSubscriber:
    """Records ``conn`` and frame records (see ``sse_records``) into ``records``."""

    def __init__(self, name: str, urls: list[str], selectors: list[str], rng: random.Random, *,
                 idle: float = 1.5) -> None:
        self.name = name
        self.urls = urls
        self.selectors = selectors
        self.rng = rng
        self.idle = idle
        self.records: list[dict[str, Any]] = []
        self.last_id: str | None = None
        self.pos = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._resp: aiohttp.ClientResponse | None = None

    def hop(self) -> None:
        """Drop the current stream: the subscriber fails over to the next replica and resumes there."""
        if self._resp is not None:
            self._resp.close()

    def start(self, http: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(http), name=f"chaos-sub-{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, http: aiohttp.ClientSession) -> None:
        index = 0
        while not self._stop.is_set():
            url = self.urls[index]
            try:
                await self._connect(http, url)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.records.append({"k": "disconnect", "url": url, "error": f"{type(exc).__name__}: {exc}"[:160]})
            index = (index + 1) % len(self.urls)
            await asyncio.sleep(self.rng.uniform(0, 0.2))

    async def _connect(self, http: aiohttp.ClientSession, url: str) -> None:
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        self.records.append({"k": "conn", "url": url, "since": self.last_id, "t": time.time()})
        params = [("ns", s) for s in self.selectors]
        # sock_read also bounds the wait for response headers (a SIGSTOPped replica accepts, never answers)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=1.0, sock_read=self.idle)
        async with http.get(f"{url}/v1/watch", params=params, headers=headers, timeout=timeout) as resp:
            self._resp = resp
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=(await resp.text())[:160])
            parser = SSEParser()
            while True:
                chunk = await asyncio.wait_for(resp.content.readany(), self.idle)
                if not chunk:
                    raise ConnectionResetError("stream ended")
                for event, event_id, data in parser.feed(chunk):
                    self._record(frame_record(event, event_id, data, url), event_id)

    def _record(self, rec: dict[str, Any], event_id: str | None) -> None:
        rec["t"] = time.time()  # which etcd history it belongs to, if etcd is restored (``epochs``)
        self.records.append(rec)
        if event_id is not None:
            self.last_id = event_id
        if rec["k"] == "reset" and rec.get("pos") is not None:
            self.pos = rec["pos"]  # authoritative, even below the position (etcd restored)
        elif rec.get("pos") is not None:
            self.pos = max(self.pos, rec["pos"])


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket with a tiny, fixed receive window: the kernel cannot absorb a backlog."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


class StalledSubscriber:
    """One connection with a 4 KB receive buffer; reads only when told to (``read_until``)."""

    def __init__(self, name: str, url: str, selectors: list[str]) -> None:
        self.name = name
        self.url = url
        self.selectors = selectors
        self.records: list[dict[str, Any]] = []
        self.pos = 0
        self._parser = SSEParser()
        self._session: aiohttp.ClientSession | None = None
        self._resp: aiohttp.ClientResponse | None = None

    async def open(self, resume: str | None = None) -> None:
        connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
        self._session = aiohttp.ClientSession(connector=connector)
        self.records.append({"k": "conn", "url": self.url, "since": resume, "t": time.time()})
        headers = {} if resume is None else {"Last-Event-ID": resume}
        self._resp = await self._session.get(f"{self.url}/v1/watch", params=[("ns", s) for s in self.selectors],
                                             headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=2.0))
        if self._resp.status != 200:
            raise RuntimeError(f"stalled subscriber got HTTP {self._resp.status}")

    async def read_until(self, predicate: Any, timeout: float) -> bool:
        """Read frames until ``predicate(record)`` holds; False on timeout or end of stream."""
        assert self._resp is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                chunk = await asyncio.wait_for(self._resp.content.readany(), remaining)
            except TimeoutError:
                return False
            if not chunk:
                return False
            done = False
            for event, event_id, data in self._parser.feed(chunk):
                rec = frame_record(event, event_id, data, self.url)
                rec["t"] = time.time()
                self.records.append(rec)
                if rec.get("pos") is not None:
                    self.pos = max(self.pos, rec["pos"])
                done = done or bool(predicate(rec))
            if done:
                return True

    async def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._session is not None:
            await self._session.close()
