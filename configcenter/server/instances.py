"""SDK instances and rollouts: what every instance applied, kept in etcd under leases.

Contract
--------
* An instance's report (``_instance_report.Report``) is stored at ``<prefix>instances/<id>``,
  attached to an etcd lease of ``watch.instance_ttl`` seconds: every replica lists the same fleet,
  and an instance that stops reporting disappears when its lease expires (no replica has to notice).
* A steady fleet costs lease keep-alives, not writes: the key is written only when the report's
  content differs from what was stored (its digest), when the instance is new, or when its lease
  expired. An unchanged report (the heartbeat, every ``ttl / 3`` seconds) renews the lease the
  instance presents. Each replica remembers (bounded LRU) the lease and digest of the instances
  that reported to it; a report reaching a replica that does not know the instance costs one read
  of its key, not a write.
* The lease id is handed to the instance and presented with its next reports; a presented lease
  that is not the one stored for that instance id is never renewed (a new lease is granted instead).
* ``rollout()`` classifies every instance subscribed to a namespace (its selectors match, or it
  reported the namespace) against a target revision: ``applied`` (applied ≥ target), ``rejected``
  (rejected ≥ target and not applied), ``fallback`` (neither, instance not live) or ``pending``.
* Push → acknowledged latency: when a report moves an instance's applied revision of a namespace
  up to the namespace's current revision, ``now - release.time`` (server clocks) is observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from cachetools import LRUCache
from etcd3aio import Etcd3Client, prefix_range_end

from configcenter_sdk.names import namespace_matcher

from ..errors import EtcdUnavailableError
from ..model import Release
from ._instance_etcd import KeepAlives, LeaseGone, PutBatcher
from ._instance_report import Report
from .etcd import etcd_errors
from .metrics import Metrics

log = logging.getLogger("configcenter.instances")
STATUSES = ("applied", "pending", "rejected", "fallback")
_MAX_KNOWN = 100_000


@dataclass(slots=True)
class _Known:
    """What this replica last stored (or read) for an instance."""

    lease: int
    digest: str
    applied: dict[str, int | None]
    seen: float  # last report handled here (or the stored updated_at)
    renewed: float  # last time this replica granted or renewed the lease


class InstanceRegistry:
    """Instance reports in etcd with leases; see the module contract."""

    def __init__(self, client: Etcd3Client, prefix: str, ttl: float, metrics: Metrics, *, timeout: float,
                 releases: Callable[[], Mapping[str, Release]]) -> None:
        self._client = client
        self._prefix = f"{prefix}instances/".encode()
        self.ttl = max(2, round(ttl))
        self.heartbeat = self.ttl / 3
        self._metrics = metrics
        self._timeout = timeout
        self._releases = releases
        self._known: LRUCache[str, _Known] = LRUCache(maxsize=_MAX_KNOWN)
        self.keepalives = KeepAlives(client, timeout)
        self.puts = PutBatcher(client, timeout)

    def key(self, instance_id: str) -> bytes:
        return self._prefix + instance_id.encode()

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

    async def report(self, instance_id: str, report: Report) -> tuple[int, bool]:
        """Store or renew ``report``; returns (lease id, whether etcd was written)."""
        state = report.state(instance_id)
        digest = self.digest(state)
        known = self._known.get(instance_id)
        if known is None and report.lease is not None:
            known = await self._read(instance_id)
        now = time.time()
        if known is not None and report.lease in (None, known.lease):
            # unchanged since what the instance last got stored (through any replica), else since what we stored
            if digest == (report.stored or known.digest):
                if await self.keepalives.renew(known.lease) > 0:
                    known.seen = known.renewed = now
                    known.digest = digest
                    self._metrics.inc("configcenter_instance_keepalives_total")
                    return known.lease, False
            elif await self._store(instance_id, state, digest, known, known.lease):
                return known.lease, True
        with etcd_errors("grant an instance lease"):
            lease = int((await self._lease.grant(self.ttl, timeout=self._timeout)).ID)
        if not await self._store(instance_id, state, digest, known, lease):
            raise EtcdUnavailableError("etcd dropped a lease it just granted", action="store an instance report")
        return lease, True

    async def _store(self, instance_id: str, state: dict[str, Any], digest: str, known: _Known | None,
                     lease: int) -> bool:
        """Put the report attached to ``lease`` (renewing it too when due); False if the lease expired."""
        now = time.time()
        value = orjson.dumps({**state, "digest": digest, "updated_at": now, "lease": f"{lease:x}"})
        renew = known is not None and known.lease == lease and now - known.renewed >= self.heartbeat
        steps = [self.puts.put(self.key(instance_id), value, lease)]
        if renew:
            steps.append(self._renew_quietly(lease))
        put_result = (await asyncio.gather(*steps, return_exceptions=True))[0]
        if isinstance(put_result, LeaseGone):
            return False
        if isinstance(put_result, BaseException):
            raise put_result
        self._metrics.inc("configcenter_instance_writes_total")
        applied = {ns: entry["applied"] for ns, entry in state["namespaces"].items()}
        if known is not None:
            self._observe_acks(known.applied, applied, now)
        renewed = now if known is None or known.lease != lease or renew else known.renewed
        self._known[instance_id] = _Known(lease, digest, applied, now, renewed)
        return True

    async def _renew_quietly(self, lease: int) -> None:
        """A renewal riding along with a write: its failure shows in the next heartbeat, not here."""
        with contextlib.suppress(EtcdUnavailableError):
            await self.keepalives.renew(lease)

    async def close(self) -> None:
        await self.keepalives.close()

    async def goodbye(self, instance_id: str, lease: int) -> bool:
        """Remove the instance now (revoke its lease) if ``lease`` is the one stored for it."""
        known = self._known.get(instance_id) or await self._read(instance_id)
        if known is None or known.lease != lease:
            return False
        with etcd_errors("revoke an instance lease"):
            await self._lease.revoke(lease, timeout=self._timeout)
        self._known.pop(instance_id, None)
        return True

    async def fleet(self) -> list[dict[str, Any]]:
        """Every live instance (one range read), sorted by service and id, with ``last_seen``."""
        start = self._prefix
        with etcd_errors("list instances"):
            resp = await self._kv.get(start, range_end=prefix_range_end(start), timeout=self._timeout)
        out = []
        for kv in resp.kvs:
            try:
                item = orjson.loads(kv.value)
                item["id"] = kv.key[len(start):].decode()
                known = self._known.get(item["id"])
                item["last_seen"] = max(float(item.get("updated_at", 0)), known.seen if known else 0.0)
                item.pop("digest", None)
                out.append(item)
            except (orjson.JSONDecodeError, TypeError, ValueError, UnicodeDecodeError):
                log.warning("ignoring an invalid instance record at %r", kv.key[:200])
        return sorted(out, key=lambda i: (str(i.get("service")), i["id"]))

    async def run_metrics(self) -> NoReturn:
        """Every heartbeat: pending and rejected instances per namespace into the gauges."""
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                self.update_gauges(await self.fleet())
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
            return _Known(int(resp.kvs[0].lease), str(value["digest"]), applied, updated, updated)
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
    counts = summarize(rows)
    return {"ns": release.ns, "revision": target, "current_revision": release.revision,
            "committed_at": release.time if release.revision == target else None,
            "summary": counts, "complete": counts["pending"] == 0 and counts["rejected"] == 0,
            "instances": rows}
