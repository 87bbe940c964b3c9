"""Who sent a request and how to find it again: trace id, client address, user agent, the audit log.

Contract
--------
* Every request gets a **trace id**: the trace-id field of a valid W3C ``traceparent`` header
  (32 lowercase hex, not all zeros), else a valid ``X-Request-ID`` (1-128 visible ASCII
  characters, no spaces), else a fresh ``uuid4().hex``.  Both headers are hostile input: their
  length is checked before anything else, and an invalid value is ignored, never echoed or stored.
* Every response (errors included, SSE streams too) carries ``X-Request-ID: <trace id>``.
* **client** is the socket peer's address.  ``X-Forwarded-For`` is honoured only when that peer
  is inside ``auth.trusted_proxies``: the header is walked from the right, skipping trusted
  proxies, and the first untrusted address is the client.
* **user agent**: at most 256 characters, non-printable characters replaced by ``?``.
* The logger ``configcenter.audit`` gets one pre-serialised JSON line per write request (push,
  rollback, delete, and schema set / delete as action ``schema``, told apart by ``method``; removals
  of SDK instances as ``goodbye`` (by the instance) or ``evict`` (by an operator), the instance id in
  ``path``; release control as ``policy`` / ``freeze`` (set or removed, by ``method``) and ``approve`` /
  ``reject`` (a proposal, its id in ``path``; a push held for review is action ``push``, status 202); a
  write sent with ``?override_freeze=<reason>`` carries ``override_freeze`` in its line; INFO, whatever
  the outcome, with ``revision`` when it succeeded) and one per request refused with 401/403 (WARNING,
  any endpoint).  Fields: ``time`` (ISO 8601 UTC),
  ``event`` (``write`` | ``denied``), ``principal`` (``anonymous`` without a valid token),
  ``client``, ``user_agent``, ``method``, ``path``, ``action``, ``namespace``, ``status``,
  ``trace_id``, ``revision``, ``reason`` (the refusal's message).  Operators attach handlers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from configcenter.model import Origin

AUDIT = logging.getLogger("configcenter.audit")
ANONYMOUS = "anonymous"
WRITE_ACTIONS = frozenset({"push", "rollback", "delete", "schema",  # "schema": a schema set (PUT) or delete
                           "goodbye", "evict",  # an SDK instance removed by itself / by an operator
                           "policy", "freeze", "approve", "reject",  # release control (set/remove, proposals)
                           "canary", "promote"})  # a canary started (POST), changed (PATCH), aborted (DELETE); promoted
MAX_OVERRIDE = 1024  # ?override_freeze= kept up to here (release control refuses past 500 characters)
MAX_TRACEPARENT = 512
MAX_REQUEST_ID = 128
MAX_USER_AGENT = 256
MAX_PATH = 512
MAX_FORWARDED_HOPS = 32
# version-traceid-parentid-flags; versions above 00 may append "-<more>" (W3C Trace Context §3.2.4)
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[!-~]*)?")
_REQUEST_ID = re.compile(r"[!-~]{1,128}")  # MAX_REQUEST_ID visible ASCII characters
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class RequestInfo:
    """What the audit trail knows about one request; auth and handlers fill in the later fields."""

    trace_id: str
    client: str
    user_agent: str
    principal: str | None = None  # name of the authenticated token; None: no (valid) token
    action: str | None = None  # push | rollback | delete | get | list | history | diff | route | watch
    namespace: str | None = None
    revision: int | None = None  # of a successful write
    reason: str | None = None  # why the request was refused (401/403)
    role: str | None = None  # of the authenticated token
    override_freeze: str | None = None  # ?override_freeze=<reason> as given (bounded), checked by release control

    def origin(self) -> Origin:
        """The release-record stamp of a write made by this request (with the role and the freeze override
        the release gate checks)."""
        return Origin(self.principal or ANONYMOUS, self.trace_id, self.client, self.user_agent, self.role or "",
                      self.override_freeze)


REQUEST_INFO = web.RequestKey("configcenter_request_info", RequestInfo)


def request_info(request: web.Request) -> RequestInfo:
    """This request's ``RequestInfo`` (created on first use if the audit middleware did not run)."""
    info = request.get(REQUEST_INFO)
    if info is None:
        info = request[REQUEST_INFO] = RequestInfo(trace_id(request.headers), request.remote or "",
                                                   user_agent(request.headers))
    return info


def trace_id(headers: Mapping[str, str]) -> str:
    """The request's trace id (see module contract); a fresh uuid4 hex when no header is valid."""
    return traceparent_id(headers.get("traceparent")) or request_id(headers.get("X-Request-ID")) or uuid.uuid4().hex


def traceparent_id(raw: str | None) -> str | None:
    """The 32-hex trace-id of a valid W3C ``traceparent`` value, else None (length checked first)."""
    if raw is None or len(raw) > MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(raw.strip())
    if match is None:
        return None
    version, trace, parent, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace == "0" * 32 or parent == "0" * 16:
        return None
    return trace


def request_id(raw: str | None) -> str | None:
    """A client's ``X-Request-ID`` if it is 1-128 visible ASCII characters (no spaces), else None."""
    if raw is None or len(raw) > MAX_REQUEST_ID:
        return None
    return raw if _REQUEST_ID.fullmatch(raw) else None


def user_agent(headers: Mapping[str, str]) -> str:
    raw = headers.get("User-Agent", "")[:MAX_USER_AGENT]
    return "".join(ch if ch.isprintable() else "?" for ch in raw)


def parse_networks(items: Sequence[Any]) -> tuple[Network, ...]:
    """``auth.trusted_proxies`` entries (addresses or CIDRs); ``ValueError`` naming a bad one."""
    return tuple(ipaddress.ip_network(str(item), strict=False) for item in items)


def client_address(request: web.Request, trusted: Sequence[Network]) -> str:
    """The socket peer, or the first untrusted ``X-Forwarded-For`` hop behind trusted proxies."""
    peer = request.remote or ""
    candidate = _ip(peer)
    if candidate is None or not _trusted(candidate, trusted):
        return peer
    hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")[-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        address = _ip(hop.strip())
        if address is None:
            break  # garbage: keep the last hop a trusted proxy vouched for
        candidate = address
        if not _trusted(address, trusted):
            break
    return str(candidate)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def begin_request(request: web.Request, trusted_proxies: Sequence[Network]) -> RequestInfo:
    """Assign ``request`` its ``RequestInfo`` (trace id, client, user agent); after the answer,
    with its final status (errors mapped), ``log_outcome`` writes the audit line."""
    info = RequestInfo(trace_id(request.headers), client_address(request, trusted_proxies), user_agent(request.headers))
    override = request.query.get("override_freeze")
    info.override_freeze = override[:MAX_OVERRIDE + 1] if override is not None else None
    request[REQUEST_INFO] = info
    return info


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, streams included, carries ``X-Request-ID``."""
    info = request.get(REQUEST_INFO)
    if info is not None:
        response.headers["X-Request-ID"] = info.trace_id


def log_outcome(request: web.Request, info: RequestInfo, status: int) -> None:
    """One JSON line on ``configcenter.audit`` for a write request or a 401/403 (see module contract)."""
    denied = status in (401, 403)
    if not denied and info.action not in WRITE_ACTIONS:
        return
    entry = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": "denied" if denied else "write",
        "principal": info.principal or ANONYMOUS,
        "client": info.client,
        "user_agent": info.user_agent,
        "method": request.method,
        "path": request.path[:MAX_PATH],
        "action": info.action,
        "namespace": info.namespace,
        "status": status,
        "trace_id": info.trace_id,
        "revision": info.revision,
        "reason": info.reason,
    }
    if info.override_freeze is not None:
        entry["override_freeze"] = info.override_freeze[:MAX_OVERRIDE]
    AUDIT.log(logging.WARNING if denied else logging.INFO, orjson.dumps(entry).decode())
