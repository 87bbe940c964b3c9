"""SyncConfigClient: blocking wrapper, concurrent readers across table swaps.

The servers run on the test's event loop, so every blocking call of the sync
client (start/close/status) goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiohttp

from configcenter_sdk import SyncConfigClient, UnknownServiceError
from helpers import RunningServer, eventually

READERS = 8
SWAPS = 100


def versioned(n: int) -> dict[str, Any]:
    return {"service": "payment", "rules": [{"id": f"r{n}", "route": {"cluster": f"v{n}"}}],
            "default": {"cluster": f"v{n}"}}


async def push(http: aiohttp.ClientSession, server: RunningServer, doc: dict[str, Any]) -> int:
    body = {"kind": "routes", "doc": doc, "message": "swap"}
    async with http.put(f"{server.url}/v1/namespaces/payment/routes", json=body, headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


async def test_sync_client_routes_and_reports(server: RunningServer, http: aiohttp.ClientSession) -> None:
    changes: list[tuple[str, int, str]] = []
    client = SyncConfigClient([server.url], ["payment/routes"], backoff_max=0.3, idle_timeout=1.5)
    client.on_change("payment/routes", lambda ns, doc, rev: changes.append((ns, rev, threading.current_thread().name)))
    await asyncio.to_thread(client.start)
    try:
        assert client.mode == "live"
        revision = await push(http, server, versioned(1))
        await eventually(lambda: changes)
        assert changes == [("payment/routes", revision, "configcenter-sdk")]  # runs in the background thread
        assert client.route("payment", {}).cluster == "v1"
        assert client.get("payment/routes") == versioned(1)
        status = await asyncio.to_thread(client.status)
        assert status.namespaces["payment/routes"].revision == revision
    finally:
        await asyncio.to_thread(client.close)


async def test_concurrent_readers_see_whole_tables(server: RunningServer, http: aiohttp.ClientSession) -> None:
    client = SyncConfigClient([server.url], ["payment/routes"], backoff_max=0.3, idle_timeout=1.5)
    await asyncio.to_thread(client.start)
    stop = threading.Event()
    problems: list[str] = []
    observed: list[set[tuple[int, int]]] = [set() for _ in range(READERS)]
    first = await push(http, server, versioned(0))
    await eventually(lambda: client.status().namespaces.get("payment/routes"))

    def reader(slot: int) -> None:
        last_revision = 0
        reads = 0
        done = False
        while not done:  # the read after ``stop`` was seen happens after the final swap
            done = stop.is_set()
            reads += 1
            try:
                decision = client.route("payment", {"x-user-id": str(reads)})
            except UnknownServiceError:
                problems.append("UnknownServiceError after the first table")
                return
            n = int(decision.cluster[1:])
            if decision.rule_id != f"r{n}":
                problems.append(f"mixed table: {decision}")
            if decision.revision < last_revision:
                problems.append(f"revision went back: {decision.revision} < {last_revision}")
            last_revision = decision.revision
            observed[slot].add((n, decision.revision))
            if reads % 50 == 0:
                time.sleep(0.001)  # leave the GIL to the event loop running server and pushes

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    revisions = {0: first}
    started = time.perf_counter()
    try:
        for n in range(1, SWAPS + 1):
            revisions[n] = await push(http, server, versioned(n))
        final = client.route("payment", {})
        await eventually(lambda: client.route("payment", {}).revision == revisions[SWAPS], timeout=5)
    finally:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)
        await asyncio.to_thread(client.close)
    print(f"{SWAPS} swaps in {time.perf_counter() - started:.2f}s; last seen right after the last push: {final}")
    assert problems == []
    for seen in observed:
        assert all(revisions[n] == rev for n, rev in seen), "a decision's revision does not match its table"
        assert (SWAPS, revisions[SWAPS]) in seen
