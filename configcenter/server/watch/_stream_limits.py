"""Per-client caps on open watch streams (``limits.max_streams_per_address`` / ``_per_principal``).

Why: the listener caps connections only globally (``limits.max_connections``), so one client (one
address, or one token handed to a misbehaving fleet) could hold every stream the server can
serve and starve everyone else.

Contract: a stream counts against its client address (``audit.client_address``: behind
``auth.trusted_proxies`` the forwarded one; IPv6 per /64, the block one host gets) and, with a
valid token, against the token's name as well.  ``admit`` raises 429 ``too_many_requests`` with
``Retry-After`` when either count is at its cap (``configcenter_streams_refused_total``), before
anything is written; ``release`` gives the place back when the stream ends, exactly once per
admitted ticket.  The counts are this process's own (``--workers N`` / replicas each enforce the
caps on the streams they hold).
"""

from __future__ import annotations

from collections import Counter

from configcenter.errors import TooManyRequestsError
from configcenter.server.fleet._admission import owner_of
from configcenter.server.metrics import Metrics

Ticket = tuple[str, ...]  # the keys a stream counts against


class StreamAdmission:
    """Open streams per client key; see the module contract."""

    def __init__(self, per_address: int, per_principal: int, metrics: Metrics, *, retry_after: float) -> None:
        self._caps = {"address": per_address, "token": per_principal}
        self._open: Counter[str] = Counter()
        self._metrics = metrics
        self._retry_after = max(1, round(retry_after))

    def admit(self, address: str, principal: str | None) -> Ticket:
        """Count a new stream of ``principal`` (token name, None: anonymous) from ``address``; 429 past a cap."""
        keys = (owner_of(None, address),) + ((owner_of(principal, address),) if principal else ())
        for key in keys:
            kind = key.partition(":")[0]
            if self._open[key] >= self._caps[kind]:
                self._metrics.inc("configcenter_streams_refused_total")
                setting = "max_streams_per_address" if kind == "address" else "max_streams_per_principal"
                raise TooManyRequestsError(
                    f"{key} already holds {self._open[key]} watch streams (limits.{setting}); "
                    "close one or retry later", retry_after=self._retry_after, limit=setting)
        for key in keys:
            self._open[key] += 1
        return keys

    def release(self, ticket: Ticket) -> None:
        for key in ticket:
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]
