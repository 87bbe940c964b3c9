"""Instance reports: who this client is and what it applied, rejected, and in which mode.

Contract
--------
* Every ``ConfigClient`` has an identity (:class:`Identity`): a generated instance id, a service
  name and labels (``host``, ``pid``, ``sdk_version`` plus the caller's).
* :class:`Reporter` sends ``POST /v1/instances/{id}/report`` with the client's whole report
  (identity, selectors, mode and, per namespace, the revision applied, the revision rejected and
  why, the source) as soon as it changes and otherwise every ``heartbeat`` seconds (the server
  says how often: a third of its lease TTL). The server writes etcd only when the report differs
  from what it stored; an unchanged report is a lease keep-alive.
* Reports run in their own task: ``route()`` and ``get()`` never wait for them. A failed report is
  retried with exponential backoff and full jitter; only the latest state is ever sent (it is
  rebuilt from the client's state at each attempt), so memory does not grow while the server is away.
* The answer's ``lease`` is the instance's capability: only its holder may change or remove the
  record, so it is sent back with every report and the goodbye. If the record is lost (its lease
  expired while the server was away), the server creates it again with a new capability, which
  replaces the old one. 409 (the id is held by another live instance: e.g. a process restarted
  with a fixed ``instance_id`` before its predecessor's lease expired) drops the capability and
  tries again after ``Retry-After`` (the server's lease TTL), as a new instance; 429 (the server's
  instance caps are reached) waits ``Retry-After`` too (bounded: :data:`MAX_RETRY_AFTER`).
* ``goodbye()`` (on ``close()``) deletes the instance at the server; a process that dies without it
  disappears when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, NoReturn

import aiohttp
import orjson

from ._state import LocalState

log = logging.getLogger("configcenter_sdk.report")

#: Bounds the server enforces too (``configcenter/server/fleet/report.py``).
MAX_LABELS = 16
MAX_LABEL_VALUE = 256
MAX_NAMESPACES = 500
MAX_REASON = 512
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
_UNSUPPORTED_RETRY = 300.0  # a server without the endpoint (404/405) is asked again after 5 minutes
MAX_RETRY_AFTER = 300.0  # a server's Retry-After is followed up to this many seconds

Session = Callable[[], aiohttp.ClientSession | None]


def sdk_version() -> str:
    try:
        return metadata.version("configcenter")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Identity:
    """This instance as the server lists it."""

    instance_id: str
    service: str
    labels: Mapping[str, str]


def make_identity(service: str | None, labels: Mapping[str, str] | None, instance_id: str | None) -> Identity:
    """Validate the caller's identity options (``ValueError``) and add host, pid and SDK version labels."""
    service = service or "unknown"
    if not _NAME.fullmatch(service):
        raise ValueError(f"service {service!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    instance_id = instance_id or f"{service}-{uuid.uuid4().hex[:16]}"
    if not _ID.fullmatch(instance_id):
        raise ValueError(f"instance_id {instance_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")
    merged = {"host": socket.gethostname()[:MAX_LABEL_VALUE], "pid": str(os.getpid()), "sdk_version": sdk_version()}
    for key, value in (labels or {}).items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise ValueError(f"label key {key!r} must match [A-Za-z0-9][A-Za-z0-9._/-]{{0,62}}")
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE:
            raise ValueError(f"label {key!r} must be a string of at most {MAX_LABEL_VALUE} characters")
        merged[key] = value
    if len(merged) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels (host, pid and sdk_version included)")
    return Identity(instance_id, service, merged)


def namespace_report(state: LocalState, mode: str) -> dict[str, dict[str, Any]]:
    """Per namespace: ``applied`` revision (None: no usable table yet), ``rejected`` + ``reason``, ``source``,
    and ``track`` ``canary`` when the namespace runs a canary's candidate (absent: the base, so a server
    from before canaries, which refuses unknown fields, still takes the reports of base instances)."""
    report: dict[str, dict[str, Any]] = {}
    for ns in sorted(state.revisions)[:MAX_NAMESPACES]:
        hit = state.cache.peek(ns)
        if hit is None and ns not in state.rejected:
            continue  # deleted (or evicted from memory: reported again once read back)
        source = "disk" if hit is not None and hit.entry.source == "disk" else ("live" if mode == "live" else "memory")
        entry: dict[str, Any] = {"applied": state.applied_revision(ns), "source": source}
        if hit is not None and hit.entry.track == "canary":
            entry["track"] = "canary"
        rejected = state.rejected.get(ns)
        if rejected is not None:
            entry["rejected"] = rejected.revision
            entry["reason"] = rejected.message[:MAX_REASON]
        report[ns] = entry
    return report


def _retry_after(raw: str | None) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is not used by the server), bounded."""
    if raw is None or len(raw) > 8 or not (raw.strip().isascii() and raw.strip().isdigit()):
        return None
    return min(MAX_RETRY_AFTER, max(1.0, float(raw)))


class Reporter:
    """Sends this instance's report on change and as a heartbeat; see the module contract."""

    def __init__(self, identity: Identity, selectors: Sequence[str], snapshot: Callable[[], dict[str, Any]],
                 *, session: Session, server: Callable[[], str], headers: Callable[[], dict[str, str]],
                 timeout: float = 3.0, backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.identity = identity
        self._selectors = list(selectors)
        self._snapshot = snapshot
        self._session, self._server, self._headers = session, server, headers
        self._timeout = timeout
        self._backoff = backoff
        self._dirty = asyncio.Event()
        self._lease: str | None = None
        self._stored: str | None = None  # digest of the report the server last stored for us
        self.heartbeat = 10.0
        self.sent = 0
        self.failures = 0
        self._rng = random.Random()

    @property
    def path(self) -> str:
        return f"/v1/instances/{self.identity.instance_id}"

    def changed(self, *_: object) -> None:
        """Something in the report changed: send it now (callable as any listener)."""
        self._dirty.set()

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"service": self.identity.service, "labels": dict(self.identity.labels),
                                "selectors": self._selectors, **self._snapshot()}
        if self._lease is not None:
            body["lease"] = self._lease
        if self._stored is not None:
            body["stored"] = self._stored
        return body

    async def run(self) -> NoReturn:
        failures = 0
        while True:
            self._dirty.clear()
            try:
                wait = await self._send_once()
            except Exception as exc:  # never let the report task die
                log.warning("instance report failed unexpectedly: %s: %s", type(exc).__name__, exc)
                wait = 0
            if wait is None:
                failures = 0
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives
                # in the tick _dirty is set (close() cancels this task right after stopping the stream,
                # which reports a mode change), so the loop went on and close() waited forever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.heartbeat):
                        await self._dirty.wait()
                continue
            failures += 1
            initial, cap = self._backoff
            await asyncio.sleep(wait or self._rng.uniform(0, min(cap, initial * 2 ** min(failures, 30))))

    async def _send_once(self) -> float | None:
        """One report; None on success, else seconds to wait (0: the usual backoff)."""
        session = self._session()
        if session is None:
            return 0
        url = self._server() + self.path + "/report"
        try:
            async with session.post(url, data=orjson.dumps(self.body()), headers=self._request_headers(),
                                    timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.debug("report to %s failed: %s", url, exc or type(exc).__name__)
            return 0
        if status == 200:
            self._accept(raw)
            return None
        self.failures += 1
        if status in (404, 405):
            log.info("server %s does not take instance reports (HTTP %d); asking again later", url, status)
            return _UNSUPPORTED_RETRY
        log.warning("instance report refused by %s: HTTP %d %s", url, status, raw[:200].decode(errors="replace"))
        if status == 409:  # another live instance holds the id: ours is lost, register anew when it is free
            self._lease = self._stored = None
        if status in (409, 429) and retry_after is not None:
            return retry_after * self._rng.uniform(1.0, 1.25)  # spread a refused fleet's retries
        return self._backoff[1] if 400 <= status < 500 else 0

    def _accept(self, raw: bytes) -> None:
        self.sent += 1
        try:
            answer = orjson.loads(raw)
            lease, heartbeat, stored = answer.get("lease"), answer.get("heartbeat"), answer.get("digest")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(lease, str) and len(lease) <= 32:
            self._lease = lease
        self._stored = stored if isinstance(stored, str) and len(stored) == 32 else None
        if isinstance(heartbeat, int | float) and not isinstance(heartbeat, bool):
            self.heartbeat = min(300.0, max(0.2, float(heartbeat)))

    def _request_headers(self) -> dict[str, str]:
        return {**self._headers(), "Content-Type": "application/json"}

    async def goodbye(self) -> None:
        """Tell the server this instance is gone (best effort, ≤ 1 s)."""
        session = self._session()
        if session is None or self._lease is None:
            return
        url = self._server() + self.path
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.delete(url, params={"lease": self._lease}, headers=self._headers(),
                                      timeout=aiohttp.ClientTimeout(total=min(1.0, self._timeout))) as resp:
                await resp.read()
