"""Change freezes: an admin locks a namespace or a prefix for a window, with a reason.

* A freeze is set for a target (a namespace or ``prefix/``): ``{reason, from?, until?}``.  ``from``
  and ``until`` are RFC 3339 times with an offset (``2024-05-01T18:00:00Z``) or, for ``until``, a
  duration from now (``90s``, ``30m``, ``2h``, ``1d``); without ``until`` the freeze lasts until an
  admin removes it.  Stored as epoch seconds.
* **Time is the server's** (``time.time()`` when the write's guard is read): a freeze applies while
  ``from <= now < until``.  Replicas should run NTP; a replica whose clock is off by ``d`` starts and
  ends freezes ``d`` late or early.  A freeze past its ``until`` stays in etcd (and in the lists, as
  inactive) until removed, but governs nothing.
* Freezes add up: every active freeze on the namespace or any of its prefixes applies (the most
  specific one is named in the error).  Unlike a policy, a narrower record cannot lift a broader
  freeze: an incident freeze on ``team/`` must not be undone by a stale one on ``team/db``.
* A freeze refuses every write but a rollback (push, apply, delete, canary promotion …) with
  ``FrozenError`` (423 ``frozen``) naming the freeze, its reason, who set it and until when, unless an
  admin overrides it with ``?override_freeze=<reason>`` (audited, stored in the release record).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import re2

from configcenter.errors import FrozenError, InvalidArgumentError, InvalidBodyError

from .records import ControlRecord

FREEZE_KEYS = frozenset({"reason", "from", "until", "message"})
MAX_TEXT = 500
MAX_WINDOW = 366 * 86400  # a freeze longer than a year is a typo; without `until` it is open-ended on purpose
_DURATION = re2.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONTROL = re2.compile(r"[\x00-\x1f\x7f-\x9f]")


def text_field(body: dict[str, Any], name: str, *, required: bool) -> str:
    """A bounded single-line text field of ``body`` (``reason``, ``message``); 400 when off."""
    value = body.get(name, "")
    if not isinstance(value, str):
        raise InvalidBodyError(f"{name} must be a string", field=name)
    if required and not value.strip():
        raise InvalidBodyError(f"{name} is required: say why (it is shown to everyone the freeze refuses)",
                               field=name)
    if len(value) > MAX_TEXT or _CONTROL.search(value):
        raise InvalidBodyError(f"{name} must be at most {MAX_TEXT} characters without control characters",
                               field=name)
    return value.strip()


def parse_time(value: Any, name: str, now: float, *, relative: bool) -> float:
    """Epoch seconds of an RFC 3339 time with offset (or, if ``relative``, a duration from ``now``)."""
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidBodyError(f"{name} must be an RFC 3339 time like 2024-05-01T18:00:00Z"
                               + (" or a duration like 30m, 2h, 1d" if relative else ""), field=name)
    match = _DURATION.fullmatch(value) if relative else None
    if match is not None:
        return now + int(match.group(1)) * _UNITS[match.group(2)]
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidBodyError(f"{name} {value!r} is not an RFC 3339 time with an offset (e.g. 2024-05-01T18:00:00Z)"
                               + (" nor a duration like 30m, 2h, 1d" if relative else ""), field=name)
    return moment.timestamp()


def parse_freeze(body: Any, now: float) -> tuple[dict[str, Any], str]:
    """``{reason, from?, until?, message?}`` -> (fields, message); ``InvalidBodyError`` (400) when off."""
    if not isinstance(body, dict):
        raise InvalidBodyError("body must be a mapping {reason, until?, from?, message?}")
    unknown = sorted(set(map(str, body)) - FREEZE_KEYS)
    if unknown:
        raise InvalidBodyError(f"unknown field(s) in body: {', '.join(unknown)}", fields=unknown)
    reason = text_field(body, "reason", required=True)
    start = parse_time(body["from"], "from", now, relative=False) if body.get("from") is not None else None
    end = parse_time(body["until"], "until", now, relative=True) if body.get("until") is not None else None
    if end is not None and end <= now:
        raise InvalidBodyError(f"until {iso(end)} is already over (the server's time is {iso(now)})", field="until")
    if end is not None and start is not None and end <= start:
        raise InvalidBodyError(f"until {iso(end)} must be after from {iso(start)}", field="until")
    if end is not None and end - max(now, start or now) > MAX_WINDOW:
        raise InvalidBodyError("a freeze window may last at most 366 days (omit until for an open-ended freeze)",
                               field="until")
    return {"reason": reason, "from": start, "until": end}, text_field(body, "message", required=False)


def iso(epoch: float | None) -> str | None:
    """``2024-05-01T18:00:00Z`` (UTC, seconds), None for None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def active(record: ControlRecord, now: float) -> bool:
    """Whether ``record`` (a freeze) applies at ``now``: ``from <= now < until`` (open ends allowed)."""
    fields = record.fields or {}
    start, end = fields.get("from"), fields.get("until")
    return (not isinstance(start, int | float) or start <= now) and (not isinstance(end, int | float) or now < end)


def freeze_json(record: ControlRecord, now: float | None = None) -> dict[str, Any]:
    """The API form of a freeze: the record plus ``from_time`` / ``until_time`` (RFC 3339) and ``active``."""
    out = record.to_json()
    out["from_time"], out["until_time"] = iso(out.get("from")), iso(out.get("until"))
    out["active"] = active(record, time.time() if now is None else now)
    return out


def governing_freeze(records: Iterable[ControlRecord], now: float) -> ControlRecord | None:
    """The most specific active freeze among ``records`` (a namespace's own and its prefixes'), or None."""
    found = [r for r in records if active(r, now)]
    return max(found, key=lambda r: (not r.target.endswith("/"), len(r.target)), default=None)


def check_override(reason: str | None) -> str | None:
    """``?override_freeze=`` as given (None: not given); 400 when empty, too long or with control characters."""
    if reason is None:
        return None
    if not reason.strip() or len(reason) > MAX_TEXT or _CONTROL.search(reason):
        raise InvalidArgumentError(f"override_freeze must be a reason of 1 to {MAX_TEXT} characters "
                                   "without control characters", parameter="override_freeze")
    return reason.strip()


def frozen(ns: str, freeze: ControlRecord) -> FrozenError:
    """The error a write of ``ns`` gets under ``freeze``: names the freeze, its reason, who set it, its end."""
    fields = freeze.fields or {}
    until = iso(fields.get("until"))
    where = "" if freeze.target == ns else f" (by the freeze on {freeze.target!r})"
    return FrozenError(
        f"{ns!r} is frozen{where}: {fields.get('reason', '')!r}, set by {freeze.principal or 'unknown'}, "
        f"{'until ' + until if until else 'until an admin removes it'}; only rollbacks are allowed "
        "(an admin may override with ?override_freeze=<reason>)",
        namespace=ns, target=freeze.target, reason=fields.get("reason", ""), set_by=freeze.principal,
        until=until, revision=freeze.revision)
