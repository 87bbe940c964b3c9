"""Canary faults of the fault suite: start, grow, promote, abort and abort on reject, through the API.

The canaries run on one namespace of their own, :data:`CANARY_NS` (a route table the writer never
touches, so a canary stays active across the other faults until a canary fault ends it; an etcd
restore may bring an older canary state back). Documents carry markers like the writer's: the
base's default cluster ``b<seed>-<n>``, a candidate's ``c<seed>-<n>``.

The SDK drivers have fixed identities (``topology.SdkDriver``): ``chaos-sdk-0`` (zone az0, stable
bucket 16), ``chaos-sdk-1`` (az1, 44), ``chaos-sdk-2`` (az0, 48, and a regex program limit of 20, so it
rejects tables with a real regex that the server's limit of 100 accepts). Growing 5 → 25 → 50 % adds
sdk-0, then sdk-1 and sdk-2. ``canary_reject`` starts a canary with ``abort_on_reject`` for all three
whose candidate sdk-2 rejects: the server must abort it by itself.

Every operation is recorded like a write (``ack`` / ``failed`` / ``ambiguous``);
:func:`check_canary_ops` checks each acknowledged one against etcd's history. The checker's rule for
canaries is in ``checker.py`` (each SDK's effective document follows its membership).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from chaos.checker import Member, Truth
from chaos.sse_records import marker
from chaos.topology import WRITER_TOKEN
from configcenter_sdk.canary import is_member, parse_target

CANARY_NS = "app/cy"
CANARY_KINDS = ("canary_start", "canary_grow", "canary_promote", "canary_abort", "canary_reject")
TARGETS: tuple[dict[str, Any], ...] = ({"percent": 5}, {"percent": 25}, {"labels": {"zone": "az0"}},
                                       {"instances": ["chaos-sdk-1"]}, {"labels": {"zone": "az1"}, "percent": 50})
GROWTH = (5, 25, 50)
REJECT_WAIT = 10.0
AUTH = {"Authorization": f"Bearer {WRITER_TOKEN}"}
TIMEOUT = aiohttp.ClientTimeout(total=6)
# RE2 program size 27: over sdk-2's limit of 20, under the server's 100
REJECTED_RULE = {"id": "beta", "match": {"headers": [{"name": "x-user", "regex": "(alpha|beta|gamma)-[0-9]{2,4}"}]},
                 "route": {"cluster": "beta"}}


def table(cluster: str, *, regex: bool = False) -> dict[str, Any]:
    return {"service": "chaos-canary", "rules": [REJECTED_RULE] if regex else [], "default": {"cluster": cluster}}


def membership(instance_id: str, labels: dict[str, str]) -> Member:
    """The checker's membership test of an SDK identity, on a target in canonical JSON."""
    decided: dict[str, bool] = {}

    def member(target: str) -> bool:
        if target not in decided:
            decided[target] = is_member(parse_target(json.loads(target)), instance_id, labels)
        return decided[target]

    return member


class Canaries:
    """The canary operations; ``records`` holds every attempt, ``violations`` what the server got wrong."""

    def __init__(self, urls: list[str], rng: random.Random, tag: str, violations: list[dict[str, Any]]) -> None:
        self.urls, self.rng, self.tag = urls, rng, tag
        self.records: list[dict[str, Any]] = []
        self.violations = violations
        self._counter = 0

    def _mark(self, kind: str) -> str:
        self._counter += 1
        return f"{kind}{self.tag}-{self._counter}"

    async def fault(self, kind: str, http: aiohttp.ClientSession) -> dict[str, Any]:
        ops: dict[str, Callable[[aiohttp.ClientSession], Any]] = {
            "canary_start": self.start, "canary_grow": self.grow, "canary_promote": self.promote,
            "canary_abort": self.abort, "canary_reject": self.reject}
        result: dict[str, Any] = await ops[kind](http)
        return result

    async def current(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        """The namespace's release as a replica serves it (None: absent or unreadable)."""
        url = self.rng.choice(self.urls)
        try:
            async with http.get(f"{url}/v1/namespaces/{CANARY_NS}", headers=AUTH, timeout=TIMEOUT) as resp:
                return await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def _ensure_idle(self, http: aiohttp.ClientSession) -> None:
        """The namespace exists and has no canary (a base pushed, or the active canary aborted)."""
        release = await self.current(http)
        if release is None:
            await self._op(http, "push", "PUT", "", {"kind": "routes", "doc": table(self._mark("b"))})
        elif release.get("canary"):
            await self._op(http, "canary_abort", "DELETE", "/canary", None)

    async def start(self, http: aiohttp.ClientSession, *, target: dict[str, Any] | None = None,
                    regex: bool = False, abort_on_reject: bool = False) -> dict[str, Any]:
        await self._ensure_idle(http)
        target = target or self.rng.choice(TARGETS)
        wid = self._mark("c")
        body = {"doc": table(wid, regex=regex), "target": target, "abort_on_reject": abort_on_reject, "message": wid}
        return await self._op(http, "canary_start", "POST", "/canary", body, wid=wid, target=target)

    async def grow(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Grow a percentage canary step by step up to 50 % (SDKs apply each step while the next one
        comes); a canary of another kind, or none, is replaced by one at 5 % first."""
        release = await self.current(http)
        canary = (release or {}).get("canary") or {}
        percent = (canary.get("target") or {}).get("percent")
        steps: list[Any] = []
        if not canary or canary.get("target") != {"percent": percent} or percent >= GROWTH[-1]:
            started = await self.start(http, target={"percent": GROWTH[0]})
            steps.append(started.get("outcome"))
            percent = GROWTH[0]
            canary = {"candidate": {"doc": table(started.get("wid") or "")}}
        for step in (p for p in GROWTH if p > percent):
            await asyncio.sleep(self.rng.uniform(0.1, 0.4))
            target = {"percent": step}
            rec = await self._op(http, "canary_update", "PATCH", "/canary", {"target": target},
                                 wid=marker(canary.get("candidate", {}).get("doc")), target=target)
            steps.append([step, rec.get("outcome"), rec.get("rev")])
        return {"steps": steps}

    async def promote(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        release = await self.current(http)
        canary = (release or {}).get("canary")
        if not canary:
            await self.start(http)
            canary = ((await self.current(http)) or {}).get("canary") or {}
        return await self._op(http, "promote", "POST", "/promote", {"message": "chaos"},
                              wid=marker(canary.get("candidate", {}).get("doc")))

    async def abort(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        if not ((await self.current(http)) or {}).get("canary"):
            await self.start(http)
        return await self._op(http, "canary_abort", "DELETE", "/canary", None)

    async def reject(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """A canary for every SDK with ``abort_on_reject`` and a candidate sdk-2 rejects: the server
        must abort it by itself (``aborted: instance chaos-sdk-2 rejected revision R: …``)."""
        started = await self.start(http, target={"percent": 50}, regex=True, abort_on_reject=True)
        if started.get("outcome") != "ack":
            return {"started": started.get("outcome")}
        deadline = time.monotonic() + REJECT_WAIT
        while time.monotonic() < deadline:
            release = await self.current(http)
            if release is not None and release.get("revision", 0) > started["rev"] and not release.get("canary"):
                return {"aborted_by": release.get("op"), "message": str(release.get("message"))[:200],
                        "after_s": round(REJECT_WAIT - (deadline - time.monotonic()), 2)}
            await asyncio.sleep(0.1)
        self.violations.append({"consumer": "server", "kind": "canary_not_aborted_on_reject", "start": started})
        return {"aborted_by": None}

    async def _op(self, http: aiohttp.ClientSession, op: str, method: str, path: str, body: Any,
                  **extra: Any) -> dict[str, Any]:
        url = self.rng.choice(self.urls)
        rec: dict[str, Any] = {"op": op, "ns": CANARY_NS, "url": url, "t0": time.time(), **extra}
        if op == "push":
            rec["wid"] = marker(body["doc"])
        try:
            async with http.request(method, f"{url}/v1/namespaces/{CANARY_NS}{path}", json=body, headers=AUTH,
                                    timeout=TIMEOUT) as resp:
                rec["status"] = resp.status
                payload = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:
            rec.update(outcome="failed", error=f"{type(exc).__name__}: {exc}"[:200])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            rec.update(outcome="ambiguous", error=f"{type(exc).__name__}: {exc}"[:200])
        else:
            if resp.status in (200, 201) and isinstance(payload, dict) and isinstance(payload.get("revision"), int):
                rec.update(outcome="ack", rev=payload["revision"])
            else:
                rec.update(outcome="failed" if 400 <= resp.status < 500 else "ambiguous", error=str(payload)[:200])
        rec["t1"] = time.time()
        self.records.append(rec)
        return rec


def check_canary_ops(records: list[dict[str, Any]], truths: list[Truth], v: list[dict[str, Any]]) -> dict[str, int]:
    """Every acknowledged canary operation is in etcd's history at its revision (in some epoch: a
    restore may discard it, counted as lost then): a start/update holds its candidate and target,
    an abort no canary, a promote the candidate as the plain document."""
    counts: Counter[str] = Counter()
    for rec in records:
        counts[f"{rec['op']}_{rec.get('outcome')}"] += 1
        if rec.get("outcome") != "ack":
            continue
        entries = [e for t in truths if (e := t.by_key.get((rec["ns"], rec["rev"]))) is not None]
        target = json.dumps(rec.get("target"), sort_keys=True)
        # wid None: the fault could not learn which candidate was active (it read a replica that lagged,
        # or an etcd restore brought back an older canary), so any candidate is the right one
        wid = rec.get("wid")
        ok = any(e.op == "put" and {
            "canary_start": e.cm == wid and e.target == target,
            "canary_update": (wid is None or e.cm == wid) and e.target == target,
            "canary_abort": e.target is None,
            "promote": e.target is None and (wid is None or e.m == wid),
            "push": e.target is None and e.m == wid,
        }[rec["op"]] for e in entries)
        if ok:
            counts["canary_acknowledged"] += 1
        elif not entries and len(truths) > 1:
            counts["canary_lost_to_restore"] += 1
        else:
            v.append({"consumer": "canaries", "kind": "acknowledged_canary_op_not_in_etcd", "op": rec,
                      "etcd": [[e.op, e.m, e.cm, e.target] for e in entries]})
    return dict(counts)
