"""The fault suite's writer: API pushes, deletes and rollbacks on both replicas, plus
multi-namespace transactions written straight to etcd.

Every attempt is recorded with its outcome:

* ``ack``: the API answered 2xx (or the etcd transaction succeeded) with a revision;
* ``failed``: a definite refusal that wrote nothing (4xx, or a transaction that
  lost every compare-and-swap attempt);
* ``ambiguous``: a timeout, connection error or 5xx: it may or may not have
  committed.  The checker resolves these from etcd's ``history/`` keys.

Documents carry a unique marker ``w`` (config) or default cluster (route
tables), so every delivered change can be matched to exactly one write.

A transaction writes what the API would: ``docs/<ns>`` and
``history/<ns>/<version>`` for each namespace, guarded by each document's
``mod_revision`` and by each history key not existing yet (the record format
and key layout of ``configcenter/server/etcd/store.py``), so the replicas can rebuild
their catch-up ring from history after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
import orjson
from etcd3aio import Etcd3Client, SortOrder, SortTarget, prefix_range_end
from etcd3aio._protobuf import Compare

from chaos.topology import WRITER_TOKEN
from configcenter.server.etcd import KeyLayout

CONFIG_NS = [f"app/n{i}" for i in range(6)] + ["other/n0", "other/n1"]
ROUTES_NS = ["app/rt"]
WIDE_NS = [f"app/n{i}" for i in range(6)]  # more namespaces than replica-b's subscriber queue holds
AUTH = {"Authorization": f"Bearer {WRITER_TOKEN}"}
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=6)


class Writer:
    """Background writer (``start``/``stop``); ``records`` holds every attempt."""

    def __init__(self, urls: list[str], endpoints: list[str], prefix: str, rng: random.Random, tag: str,
                 *, concurrency: int = 2, pause: tuple[float, float] = (0.01, 0.05)) -> None:
        self.urls = urls
        self.layout = KeyLayout(prefix)
        self.rng = rng
        self.tag = tag
        self.concurrency = concurrency
        self.pause = pause
        self.records: list[dict[str, Any]] = []
        self.wide_allowed = True
        self._client = Etcd3Client(endpoints, rpc_max_attempts=1)
        self._counter = 0
        self._puts: dict[str, list[int]] = {}  # ns -> acknowledged revisions holding a document
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    # -- life cycle -------------------------------------------------------------
    async def start(self, http: aiohttp.ClientSession) -> None:
        self._http = http
        await self._client.connect()
        self.resume()

    def resume(self) -> None:
        """Start writing again after ``stop`` (nothing if it is writing)."""
        if self._tasks and not self._stop.is_set():
            return
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._loop(), name=f"chaos-writer-{i}") for i in range(self.concurrency)]

    def forget_after(self, revision: int) -> None:
        """etcd was restored to ``revision``: releases above it are gone, never roll back to them."""
        self._puts = {ns: kept for ns, revs in self._puts.items() if (kept := [r for r in revs if r <= revision])}

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def close(self) -> None:
        await self.stop()
        await self._client.close()

    @property
    def kv(self) -> Any:
        assert self._client.kv is not None
        return self._client.kv

    # -- the mix ----------------------------------------------------------------
    async def _loop(self) -> None:
        while not self._stop.is_set():
            roll = self.rng.random()
            if roll < 0.50:
                await self.push(self.rng.choice(CONFIG_NS + ROUTES_NS))
            elif roll < 0.62:
                await self.delete(self.rng.choice(CONFIG_NS + ROUTES_NS))
            elif roll < 0.74:
                await self.rollback(self.rng.choice(CONFIG_NS + ROUTES_NS))
            elif roll < 0.96 or not self.wide_allowed:
                await self.txn(self.rng.sample(CONFIG_NS, 2))
            else:
                await self.txn(list(WIDE_NS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.rng.uniform(*self.pause))

    def _wid(self) -> str:
        self._counter += 1
        return f"w{self.tag}-{self._counter}"

    @staticmethod
    def document(ns: str, wid: str, pad: int = 0) -> tuple[str, dict[str, Any]]:
        if ns in ROUTES_NS:
            return "routes", {"service": "chaos", "rules": [], "default": {"cluster": wid}}
        doc: dict[str, Any] = {"w": wid}
        if pad:
            doc["pad"] = "x" * pad
        return "config", doc

    # -- API writes -------------------------------------------------------------
    async def push(self, ns: str, *, url: str | None = None, pad: int = 0, via: str = "api") -> dict[str, Any]:
        wid = self._wid()
        kind, doc = self.document(ns, wid, pad)
        return await self._http_write("push", ns, wid, "PUT", f"/v1/namespaces/{ns}",
                                      {"kind": kind, "doc": doc, "message": wid}, url, via)

    async def delete(self, ns: str) -> dict[str, Any]:
        return await self._http_write("delete", ns, None, "DELETE", f"/v1/namespaces/{ns}", None, None, "api")

    async def rollback(self, ns: str) -> dict[str, Any] | None:
        candidates = self._puts.get(ns)
        if not candidates:
            return None
        target = self.rng.choice(candidates[-20:])
        return await self._http_write("rollback", ns, None, "POST", f"/v1/namespaces/{ns}/rollback",
                                      {"to_revision": target}, None, "api", target=target)

    async def _http_write(self, op: str, ns: str, wid: str | None, method: str, path: str, body: Any,
                          url: str | None, via: str, **extra: Any) -> dict[str, Any]:
        assert self._http is not None
        url = url or self.rng.choice(self.urls)
        rec: dict[str, Any] = {"op": op, "ns": [ns], "wid": wid, "url": url, "via": via, "t0": time.time(), **extra}
        try:
            async with self._http.request(method, url + path, json=body, headers=AUTH, timeout=HTTP_TIMEOUT) as resp:
                rec["status"] = resp.status
                payload = await resp.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was sent
            rec.update(outcome="failed", error=f"{type(exc).__name__}: {exc}"[:200])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            rec.update(outcome="ambiguous", error=f"{type(exc).__name__}: {exc}"[:200])
        else:
            if resp.status in (200, 201) and isinstance(payload, dict) and isinstance(payload.get("revision"), int):
                rec.update(outcome="ack", rev=payload["revision"])
                if op == "delete":
                    self._puts.pop(ns, None)
                else:
                    self._puts.setdefault(ns, []).append(payload["revision"])
            elif 400 <= resp.status < 500:
                rec.update(outcome="failed", error=str(payload)[:200])
            else:
                rec.update(outcome="ambiguous", error=str(payload)[:200])
        rec["t1"] = time.time()
        self.records.append(rec)
        return rec

    # -- etcd transactions ------------------------------------------------------
    async def txn(self, names: list[str], *, pad: int = 0) -> dict[str, Any]:
        """One etcd transaction writing a new release of every namespace in ``names``."""
        names = sorted(names)
        wids = {ns: self._wid() for ns in names}
        rec: dict[str, Any] = {"op": "push", "ns": names, "wid": [wids[ns] for ns in names], "via": "txn",
                               "t0": time.time()}
        try:
            for _ in range(8):
                succeeded, revision = await self._try_txn(names, wids, pad)
                if succeeded:
                    rec.update(outcome="ack", rev=revision)
                    for ns in names:
                        self._puts.setdefault(ns, []).append(revision)
                    break
                await asyncio.sleep(self.rng.uniform(0, 0.01))
            else:
                rec.update(outcome="failed", error="lost every compare-and-swap attempt")
        except Exception as exc:  # gRPC errors, timeouts: the commit may or may not have happened
            rec.update(outcome="ambiguous", error=f"{type(exc).__name__}: {exc}"[:200])
        rec["t1"] = time.time()
        self.records.append(rec)
        return rec

    async def _try_txn(self, names: list[str], wids: dict[str, str], pad: int) -> tuple[bool, int]:
        kv = self.kv
        compare, ops = [], []
        for ns in names:
            doc_key = self.layout.doc_key(ns)
            start = self.layout.history_prefix(ns)
            doc = await kv.get(doc_key, keys_only=True, timeout=2.0)
            hist = await kv.get(start, range_end=prefix_range_end(start), limit=1, keys_only=True,
                                sort_order=SortOrder.DESCEND, sort_target=SortTarget.KEY, timeout=2.0)
            current = doc.kvs[0].mod_revision if doc.kvs else 0
            version = (self.layout.version_of_history_key(hist.kvs[0].key) if hist.kvs else 0) + 1
            hist_key = self.layout.history_key(ns, version)
            kind, body = self.document(ns, wids[ns], pad)
            record = orjson.dumps({"version": version, "op": "push", "kind": kind, "doc": body,
                                   "author": "chaos-txn", "message": wids[ns], "time": time.time()})
            compare += [Compare(result=Compare.EQUAL, target=Compare.MOD, key=doc_key, mod_revision=current),
                        kv.txn_compare_create_revision(hist_key, 0)]
            ops += [kv.txn_op_put(doc_key, record), kv.txn_op_put(hist_key, record)]
        resp = await kv.txn(compare, ops, timeout=2.0)
        return bool(resp.succeeded), int(resp.header.revision)

    # -- reading etcd back (for the checker) --------------------------------------
    async def read_range(self, sub: str, *, page: int = 200) -> list[Any]:
        """Every key under ``<prefix><sub>`` with value, paged (one range is capped at 4 MB by gRPC)."""
        start = f"{self.layout.prefix}{sub}".encode()
        end = prefix_range_end(start)
        out: list[Any] = []
        while True:
            resp = await self.kv.get(start, range_end=end, limit=page, timeout=10.0)
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return out
            start = resp.kvs[-1].key + b"\0"

    async def current_revision(self) -> int:
        resp = await self.kv.get(self.layout.docs_prefix, count_only=True, timeout=5.0)
        return int(resp.header.revision)
