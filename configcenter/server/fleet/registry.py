"""SDK instances and rollouts: what every instance applied, kept in etcd under leases.

Contract
--------
* An instance's report (``report.Report``) is stored at ``<prefix>instances/<id>``,
  attached to an etcd lease of ``watch.instance_ttl`` seconds: every replica lists the same fleet,
  and an instance that stops reporting disappears when its lease expires (no replica has to notice).
* **Only the holder of a record changes or removes it.** A first report for an id with no live
  record creates it (``_admission``: 429 past the caps) under a new lease and answers the
  record's capability (``report.Capability``: lease id + secret; the record keeps only a
  digest of the secret). Later reports and the goodbye present it; a report or goodbye for a live
  id without it is 409 and writes nothing. Every write is guarded in etcd (the key is still attached
  to the lease, or does not exist yet), so a replica's stale memory never lets a write through.
  A report whose record is gone (its lease expired) creates it again, answering a new capability.
  Neither the lease nor the digest is ever listed; every removal revokes the record's lease.
  A live record's changes are rate-limited per instance (``_admission.WriteBudget``).
* A steady fleet costs lease keep-alives, not writes: the key is written only when the report's
  content differs from what was stored (its digest), when the instance is new, or when its lease
  expired. An unchanged report (the heartbeat, every ``ttl / 3`` seconds) renews the lease of the
  capability it presents. Each replica remembers (bounded LRU) the lease, secret digest and
  content digest of the instances that reported to it; a report reaching a replica that does not
  know the instance (or presenting another capability) costs one read of its key, not a write.
* ``rollout()`` classifies every instance subscribed to a namespace (its selectors match, or it
  reported the namespace) against a target revision: ``applied`` (applied ≥ target), ``rejected``
  (rejected ≥ target and not applied), ``fallback`` (neither, instance not live) or ``pending``;
  with an active canary, split by track (``canary_view``: members vs the base).
* Push → acknowledged latency: when a report moves an instance's applied revision of a namespace
  up to the namespace's current revision, ``now - release.time`` (server clocks) is observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
import orjson
from cachetools import LRUCache
from etcd3aio import Etcd3Client, prefix_range_end

from configcenter.errors import ConflictError, EtcdUnavailableError
from configcenter.model import Release
from configcenter.server.etcd import KeyLayout, etcd_errors
from configcenter.server.metrics import Metrics
from configcenter_sdk.names import namespace_matcher

from . import canary_view
from ._admission import COUNT_FRESH, Census, WriteBudget
from ._leases import KeepAlives, LeaseGone, PutBatcher, RecordChanged, absent, attached_to
from .report import Capability, Report

log = logging.getLogger("configcenter.instances")
STATUSES = ("applied", "pending", "rejected", "fallback")
_MAX_KNOWN = 100_000
#: Fields of a stored record that are never listed.
PRIVATE = ("digest", "holder", "owner", "lease")


@dataclass(slots=True)
class _Known:
    """What this replica last stored (or read) for an instance."""

    lease: int
    holder: str | None  # digest of the capability's secret (None: written by a server before capabilities)
    owner: str | None  # whom the record counts against (_admission.owner_of)
    digest: str
    applied: dict[str, int | None]
    seen: float  # last report handled here (or the stored updated_at)
    renewed: float  # last time this replica granted or renewed the lease
    writes: WriteBudget = field(default_factory=WriteBudget)  # changed reports it may still write here

    def held_by(self, cap: Capability | None) -> bool:
        """Whether ``cap`` is this record's capability (constant-time on the secret's digest)."""
        if cap is None or cap.lease != self.lease:
            return False
        if self.holder is None or cap.holder is None:
            return self.holder is None and cap.holder is None  # a legacy record and its bare lease id
        return hmac.compare_digest(self.holder, cap.holder)


class InstanceHeldError(ConflictError):
    """409: a live record of the id has another holder; ``Retry-After``: the lease TTL (by then a
    record nobody renews is gone)."""

    def __init__(self, instance_id: str, ttl: int) -> None:
        super().__init__(f"instance {instance_id!r} is held by another live instance: only the holder of its "
                         "lease may change or remove it (the id is free again once that instance leaves or "
                         "its lease expires)", instance=instance_id)
        self.ttl = ttl

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.ttl)}


class InstanceRegistry:
    """Instance reports in etcd with leases; see the module contract."""

    def __init__(self, client: Etcd3Client, prefix: str, ttl: float, metrics: Metrics, *, timeout: float,
                 releases: Callable[[], Mapping[str, Release]], caps: tuple[int, int] = (10_000, 1_000)) -> None:
        self._client = client
        self._layout = KeyLayout(prefix)
        self._prefix = self._layout.instances_prefix
        self.ttl = max(2, round(ttl))
        self.heartbeat = self.ttl / 3
        self._metrics = metrics
        self._timeout = timeout
        self._releases = releases
        self._known: LRUCache[str, _Known] = LRUCache(maxsize=_MAX_KNOWN)
        self.keepalives = KeepAlives(client, timeout)
        self.puts = PutBatcher(client, timeout)
        self.census = Census(*caps, retry_after=self.heartbeat)
        self._refresh = asyncio.Lock()
        # told of every stored report and every fleet listing (the canary guard: abort on reject)
        self.on_reports: Callable[[Iterable[Mapping[str, Any]]], None] = lambda instances: None

    def key(self, instance_id: str) -> bytes:
        return self._layout.instance_key(instance_id)

    @property
    def _kv(self) -> Any:
        if self._client.kv is None:
            raise EtcdUnavailableError("etcd client is not connected")
        return self._client.kv

    @property
    def _lease(self) -> Any:
        if self._client.lease is None:
            raise EtcdUnavailableError("etcd client is not connected")
        return self._client.lease

    @staticmethod
    def digest(state: dict[str, Any]) -> str:
        return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]

    async def report(self, instance_id: str, report: Report, owner: str) -> tuple[Capability, bool]:
        """Store or renew ``report``: (the capability to present next, whether etcd was written).

        409 if a live record of ``instance_id`` has another holder; 429 past the caps for a new one.
        """
        state = report.state(instance_id)
        digest = self.digest(state)
        known = await self._holder(instance_id, report.lease)
        if known is None:
            return await self._create(instance_id, state, digest, owner), True
        cap = report.lease if known.holder is not None else None
        if cap is not None and digest == (report.stored or known.digest):
            # unchanged since what the instance last got stored (through any replica)
            if await self.keepalives.renew(known.lease) > 0:
                known.seen = known.renewed = time.time()
                known.digest = digest
                self._metrics.inc("configcenter_instance_keepalives_total")
                return cap, False
        else:
            cap = cap or Capability.issue(known.lease)  # a legacy record gets a capability: one write
            known.writes.spend(time.time())
            try:
                await self._store(instance_id, state, digest, known, cap)
                return cap, True
            except (LeaseGone, RecordChanged):
                pass
        # its lease expired, and the record with it: a new record (unless someone else was quicker)
        self._known.pop(instance_id, None)
        return await self._create(instance_id, state, digest, owner), True

    async def _holder(self, instance_id: str, cap: Capability | None) -> _Known | None:
        """The live record ``cap`` holds; None if there is none; 409 if another holds it."""
        known = self._known.get(instance_id)
        if known is not None and known.held_by(cap):
            return known
        known = await self._read(instance_id)  # etcd decides a refusal, never this replica's memory
        if known is None:
            self._known.pop(instance_id, None)
            return None
        if not known.held_by(cap):
            raise InstanceHeldError(instance_id, self.ttl)
        self._known[instance_id] = known
        return known

    async def _create(self, instance_id: str, state: dict[str, Any], digest: str, owner: str) -> Capability:
        """A new record under a new lease, if the caps admit it and the id has no live record (else 409)."""
        ticket = await self._admit(owner)
        try:
            with etcd_errors("grant an instance lease"):
                lease = int((await self._lease.grant(self.ttl, timeout=self._timeout)).ID)
            cap = Capability.issue(lease)
            try:
                await self._store(instance_id, state, digest, None, cap, owner)
            except RecordChanged:
                await self._revoke(lease)
                raise InstanceHeldError(instance_id, self.ttl) from None
            except LeaseGone:
                raise EtcdUnavailableError("etcd dropped a lease it just granted",
                                           action="store an instance report") from None
        except BaseException:
            self.census.release(ticket)
            raise
        return cap

    async def _admit(self, owner: str) -> tuple[float, str]:
        """Reserve a new record in the census (refreshed first when stale); 429 past a cap."""
        async with self._refresh:
            began = time.monotonic()
            if began - self.census.listed_at > self.heartbeat:
                await self.fleet()
            elif began - self.census.counted_at > COUNT_FRESH:
                with etcd_errors("count instances"):
                    resp = await self._kv.get(self._prefix, range_end=prefix_range_end(self._prefix),
                                              count_only=True, timeout=self._timeout)
                self.census.counted(int(resp.count), began)
        return self.census.admit(owner, time.monotonic())

    async def _store(self, instance_id: str, state: dict[str, Any], digest: str, known: _Known | None,
                     cap: Capability, owner: str | None = None) -> None:
        """Put the report attached to ``cap``'s lease (renewing it too when due), guarded: the key is
        still attached to that lease (``known``) or does not exist (a new record).
        ``LeaseGone``/``RecordChanged`` if that no longer holds."""
        now = time.time()
        owner = known.owner if known is not None else owner
        value = orjson.dumps({**state, "digest": digest, "updated_at": now, "holder": cap.holder, "owner": owner})
        key = self.key(instance_id)
        renew = known is not None and now - known.renewed >= self.heartbeat
        guard = attached_to(key, cap.lease) if known is not None else absent(key)
        steps = [self.puts.put(key, value, cap.lease, guard)]
        if renew:
            steps.append(self._renew_quietly(cap.lease))
        put_result = (await asyncio.gather(*steps, return_exceptions=True))[0]
        if isinstance(put_result, BaseException):
            raise put_result
        self._metrics.inc("configcenter_instance_writes_total")
        self.on_reports([state])
        applied = {ns: entry["applied"] for ns, entry in state["namespaces"].items()}
        if known is not None:
            self._observe_acks(known.applied, applied, now)
        renewed = known.renewed if known is not None and not renew else now
        writes = known.writes if known is not None else WriteBudget()
        self._known[instance_id] = _Known(cap.lease, cap.holder, owner, digest, applied, now, renewed, writes)

    async def _renew_quietly(self, lease: int) -> None:
        """A renewal riding along with a write: its failure shows in the next heartbeat, not here."""
        with contextlib.suppress(EtcdUnavailableError):
            await self.keepalives.renew(lease)

    async def _revoke(self, lease: int) -> bool:
        """Revoke ``lease`` (its record goes with it); False if it had expired already."""
        with etcd_errors("revoke an instance lease"):
            try:
                await self._lease.revoke(lease, timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
        return True

    async def close(self) -> None:
        await self.keepalives.close()

    async def goodbye(self, instance_id: str, cap: Capability) -> bool:
        """Remove the instance now (revoke its lease) if ``cap`` holds it; False if it is gone, 409 if
        another holds it."""
        known = await self._holder(instance_id, cap)
        self._known.pop(instance_id, None)
        return known is not None and await self._revoke(known.lease)

    async def evict(self, instance_id: str, allowed: Callable[[dict[str, Any]], None]) -> bool:
        """An operator removes the instance (revokes its lease) after ``allowed(record)`` (which raises
        to refuse); False if there is none."""
        with etcd_errors("read an instance"):
            resp = await self._kv.get(self.key(instance_id), timeout=self._timeout)
        if not resp.kvs or not resp.kvs[0].lease:
            return False
        try:
            record = orjson.loads(resp.kvs[0].value)
        except orjson.JSONDecodeError:
            record = {}
        allowed(record if isinstance(record, dict) else {})
        self._known.pop(instance_id, None)
        return await self._revoke(int(resp.kvs[0].lease))

    async def fleet(self) -> list[dict[str, Any]]:
        """Every live instance (one range read), sorted by service and id, with ``last_seen``; never a
        lease or a digest. Counts the records for the caps (``census``) on the way."""
        start = self._prefix
        began = time.monotonic()
        with etcd_errors("list instances"):
            resp = await self._kv.get(start, range_end=prefix_range_end(start), timeout=self._timeout)
        out, owners = [], []
        for kv in resp.kvs:
            try:
                item = orjson.loads(kv.value)
                owners.append(item.get("owner"))
                item["id"] = kv.key[len(start):].decode()
                known = self._known.get(item["id"])
                item["last_seen"] = max(float(item.get("updated_at", 0)), known.seen if known else 0.0)
                for private in PRIVATE:
                    item.pop(private, None)
                out.append(item)
            except (orjson.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError, AttributeError):
                log.warning("ignoring an invalid instance record at %r", kv.key[:200])
        self.census.listed(owners, began)
        return sorted(out, key=lambda i: (str(i.get("service")), i["id"]))

    async def run_metrics(self) -> NoReturn:
        """Every heartbeat: pending and rejected instances per namespace into the gauges."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                instances = await self.fleet()
                self.update_gauges(instances)
                self.on_reports(instances)
            except EtcdUnavailableError:
                continue
            except Exception as exc:  # keep refreshing; never let the task die
                log.warning("cannot refresh the rollout gauges: %s: %s", type(exc).__name__, exc)

    def update_gauges(self, instances: list[dict[str, Any]]) -> None:
        pending: dict[str, float] = {}
        rejected: dict[str, float] = {}
        for ns, release in self._releases().items():
            counts = summarize(classify(i, ns, release.revision) for i in instances)
            if counts["subscribed"]:
                pending[ns], rejected[ns] = counts["pending"], counts["rejected"]
        self._metrics.set("configcenter_instances", len(instances))
        self._metrics.set_series("configcenter_rollout_pending_instances", "ns", pending)
        self._metrics.set_series("configcenter_rollout_rejected_instances", "ns", rejected)

    async def _read(self, instance_id: str) -> _Known | None:
        with etcd_errors("read an instance"):
            resp = await self._kv.get(self.key(instance_id), timeout=self._timeout)
        if not resp.kvs or not resp.kvs[0].lease:
            return None
        try:
            value = orjson.loads(resp.kvs[0].value)
            applied = {ns: e.get("applied") for ns, e in value["namespaces"].items()}
            updated = float(value["updated_at"])
            holder, owner = value.get("holder"), value.get("owner")
            return _Known(int(resp.kvs[0].lease), holder if isinstance(holder, str) else None,
                          owner if isinstance(owner, str) else None, str(value["digest"]), applied, updated, updated)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def _observe_acks(self, before: Mapping[str, int | None], after: Mapping[str, int | None], now: float) -> None:
        releases = self._releases()
        for ns, applied in after.items():
            release = releases.get(ns)
            old = before.get(ns)
            if (applied is None or release is None or release.revision != applied or release.time <= 0
                    or (old is not None and old >= applied)):
                continue
            self._metrics.observe_ack(max(0.0, now - release.time))


def classify(instance: Mapping[str, Any], ns: str, target: int) -> dict[str, Any] | None:
    """``instance``'s state for revision ``target`` of ``ns``, or None if it does not subscribe to ``ns``."""
    entry = instance.get("namespaces", {}).get(ns)
    if entry is None and not namespace_matcher(instance.get("selectors", []))(ns):
        return None
    entry = entry or {}
    applied, rejected = entry.get("applied"), entry.get("rejected")
    if applied is not None and applied >= target:
        status = "applied"
    elif rejected is not None and rejected >= target:
        status = "rejected"
    else:
        status = "pending" if instance.get("mode") == "live" else "fallback"
    row = {"id": instance.get("id"), "service": instance.get("service"), "status": status, "applied": applied,
           "mode": instance.get("mode"), "source": entry.get("source"), "last_seen": instance.get("last_seen"),
           "updated_at": instance.get("updated_at"),
           "labels": instance.get("labels", {})}
    if rejected is not None:
        row.update(rejected=rejected, reason=entry.get("reason", ""))
    if entry.get("track") is not None:  # the track the instance says it runs (canary_view.split checks it)
        row["reported_track"] = entry["track"]
    return row


def summarize(rows: Iterable[dict[str, Any] | None]) -> dict[str, int]:
    counts = dict.fromkeys(("subscribed", *STATUSES), 0)
    for row in rows:
        if row is not None:
            counts["subscribed"] += 1
            counts[row["status"]] += 1
    return counts


def rollout(instances: list[dict[str, Any]], release: Release, target: int) -> dict[str, Any]:
    """The rollout of revision ``target`` of ``release.ns`` (``release``: its current release)."""
    rows = [row for row in (classify(i, release.ns, target) for i in instances) if row is not None]
    parts = canary_view.split(rows, release, summarize) if target == release.revision and release.canary else {}
    counts = summarize(rows)
    body = {"ns": release.ns, "revision": target, "current_revision": release.revision,
            "committed_at": release.time if release.revision == target else None,
            "summary": counts, "complete": counts["pending"] == 0 and counts["rejected"] == 0,
            "instances": rows, **parts}  # with a canary: its members and the rest (the base), counted apart
    return body
