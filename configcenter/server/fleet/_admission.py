"""Caps on SDK instance records: one on the whole fleet, one per client (``limits.max_instances*``).

Contract
--------
* A **new** record (a first report, or a report whose record is gone: its lease expired) is admitted
  only while fewer than ``limits.max_instances`` records are live in all and fewer than
  ``limits.max_instances_per_client`` belong to the same client — the principal (token name), or
  without a token the client address (``audit.client_address``: behind ``auth.trusted_proxies`` the
  forwarded one; IPv6 per /64, the block one host gets). Past either: 429 ``too_many_requests``
  with ``Retry-After`` (a heartbeat: when the next list may show leases gone), before anything is
  written. Live records are never refused (heartbeats and changes go on) nor evicted.
* The counts are the registry's view of ``instances/``: its last list of the prefix (each record
  carries its ``owner``; every replica lists it at least every heartbeat, ``ttl / 3``, for the
  rollout gauges, and on every ``GET /v1/instances`` and rollout), plus every creation this process
  admitted since that list began (counted at admission, given back if the creation fails). While
  creations arrive, the global count is refreshed from etcd (a count-only range) at most every
  :data:`COUNT_FRESH` seconds.
* Precision: exact for what one process admits. Processes (``--workers``, replicas) sharing etcd
  each admit against their own view, so other processes' creations since the last refresh are
  unseen: the global cap can be passed by what the others created in the last second, a client's
  cap by up to ``(processes - 1) * max_instances_per_client`` within one heartbeat. The next
  refresh sees the excess and every process refuses new records until records expire.
* A live record's **changes** are bounded too (:class:`WriteBudget`): a burst of
  :data:`WRITE_BURST` writes, then :data:`WRITE_RATE` a second per instance and replica; past it,
  429 with ``Retry-After`` and nothing written (heartbeats, which write nothing, are not counted).
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

from configcenter.errors import TooManyRequestsError

COUNT_FRESH = 1.0
WRITE_RATE = 1.0  # changed reports per second and instance (per replica), after a burst
WRITE_BURST = 10.0
Ticket = tuple[float, str]


def owner_of(principal: str | None, client: str) -> str:
    """Who a new record counts against: ``token:<name>``, else ``address:<ip>`` (IPv6: ``<net>/64``)."""
    if principal:
        return f"token:{principal}"
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return f"address:{client[:64]}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"address:{address.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address:{address}"


class Census:
    """The live records as this process last saw them; see the module contract.

    ``listed``/``counted`` take what a list / count-only read found (and the monotonic time it
    began); ``admit`` reserves a place for a new record or raises 429; ``release`` gives it back.
    """

    def __init__(self, max_total: int, max_per_client: int, retry_after: float) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.retry_after = max(1, math.ceil(retry_after))
        self.listed_at = self.counted_at = -math.inf
        self._owners: Counter[str] = Counter()  # from the last list
        self._total = 0  # from the last list or count, whichever is newer
        self._pending: deque[Ticket] = deque()  # admitted here since the last list began, oldest first
        self._mine: Counter[str] = Counter()  # _pending per owner
        self._before_count = 0  # entries of _pending admitted before the last count began

    def listed(self, owners: Iterable[str | None], began: float) -> None:
        found = Counter(owners)
        self._total = sum(found.values())
        # records written before owners were stored (None) count in the total only
        self._owners = Counter({owner: n for owner, n in found.items() if owner is not None})
        self.listed_at = self.counted_at = began
        while self._pending and self._pending[0][0] < began:
            self._mine[self._pending.popleft()[1]] -= 1
        self._mine = +self._mine
        self._before_count = 0

    def counted(self, total: int, began: float) -> None:
        self._total = total
        self.counted_at = began
        self._before_count = sum(1 for at, _ in self._pending if at < began)

    @property
    def total(self) -> int:
        """Live records as far as this process knows (its own creations since the refresh included)."""
        return self._total + len(self._pending) - self._before_count

    def of(self, owner: str) -> int:
        return self._owners[owner] + self._mine[owner]

    def admit(self, owner: str, now: float) -> Ticket:
        """Reserve a new record for ``owner`` (429 past a cap)."""
        if self.total >= self.max_total:
            raise TooManyRequestsError(
                f"the server holds {self.max_total} instances (limits.max_instances): no new instance until "
                "some leave", retry_after=self.retry_after, limit="max_instances")
        if self.of(owner) >= self.max_per_client:
            kind, _, name = owner.partition(":")
            raise TooManyRequestsError(
                f"{'principal' if kind == 'token' else 'address'} {name!r} holds {self.max_per_client} instances "
                "(limits.max_instances_per_client): no new instance until some leave",
                retry_after=self.retry_after, limit="max_instances_per_client")
        ticket = (now, owner)
        self._pending.append(ticket)
        self._mine[owner] += 1
        return ticket

    def release(self, ticket: Ticket) -> None:
        """A reserved creation failed: it does not count."""
        try:
            self._pending.remove(ticket)
        except ValueError:
            return  # a list since then counts what etcd really holds
        self._mine[ticket[1]] -= 1
        if ticket[0] < self.counted_at:
            self._before_count -= 1


@dataclass(slots=True)
class WriteBudget:
    """A token bucket of one instance's record writes (see the module contract)."""

    tokens: float = WRITE_BURST
    at: float = 0.0

    def spend(self, now: float) -> None:
        """Take one write, or 429 (an instance rewriting its record in a loop)."""
        self.tokens = min(WRITE_BURST, self.tokens + max(0.0, now - self.at) * WRITE_RATE)
        self.at = now
        if self.tokens < 1:
            raise TooManyRequestsError(
                f"this instance's reports change more than {WRITE_RATE:g} times a second (after a burst of "
                f"{WRITE_BURST:g}): send the latest state later",
                retry_after=math.ceil((1 - self.tokens) / WRITE_RATE), limit="instance_writes")
        self.tokens -= 1
