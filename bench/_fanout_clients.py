"""Subscriber processes for bench_fanout: SSE subscribers of configcenter, or direct etcd watchers.

Each process holds ``count`` subscribers, reports ``ready`` once all are connected, then records
for every revision the ``time.monotonic()`` (system-wide on Linux, so comparable across
processes) at which each subscriber read it, until told to stop; the results go back over a pipe.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from configcenter_sdk._sse import SSEParser

Inbox = dict[int, list[float]]


async def sse_subscriber(http: aiohttp.ClientSession, url: str, ns: str, inbox: Inbox, ready: list[int]) -> None:
    """Read as the SDK reads: whatever bytes arrived, fed to its ``SSEParser`` (one wakeup per chunk,
    not per line)."""
    parser = SSEParser()
    async with http.get(f"{url}/v1/watch", params={"ns": ns}) as resp:
        async for chunk in resp.content.iter_any():
            for event in parser.feed(chunk):
                if event.event == "change" and event.id is not None:
                    inbox.setdefault(int(event.id.rpartition(":")[2]), []).append(time.monotonic())
                elif event.event == "reset":
                    ready[0] += 1


async def etcd_watcher(stub: Any, key: bytes, inbox: Inbox, ready: list[int]) -> None:
    """One Watch RPC stream per subscriber (the baseline a service would get watching etcd itself)."""
    from configcenter.server.etcd import client as cc_etcd

    async def requests() -> Any:
        yield cc_etcd.WatchRequest(create_request=cc_etcd.WatchCreateRequest(key=key))
        await asyncio.Event().wait()

    call = stub.Watch(requests())
    async for response in call:
        if response.created:
            ready[0] += 1
        for event in response.events:
            inbox.setdefault(event.kv.mod_revision, []).append(time.monotonic())


async def run_clients(kind: str, count: int, target: str, ns: str, pipe: Connection) -> None:
    inbox: Inbox = {}
    ready = [0]
    tasks: list[asyncio.Task[None]] = []
    closers: list[Any] = []
    if kind == "sse":
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=None))
        closers.append(http.close)
        tasks = [asyncio.create_task(sse_subscriber(http, target, ns, inbox, ready)) for _ in range(count)]
    else:
        from configcenter.server.etcd import client as cc_etcd

        client = cc_etcd.connect([target])
        await client.connect()
        closers.append(client.close)
        stub = cc_etcd.watch_stub(client)
        key = f"/bench-direct/{ns}".encode()
        tasks = [asyncio.create_task(etcd_watcher(stub, key, inbox, ready)) for _ in range(count)]
    while ready[0] < count:
        await asyncio.sleep(0.01)
    pipe.send("ready")
    await asyncio.to_thread(pipe.recv)  # "stop"
    pipe.send(inbox)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for close in closers:
        await close()


def client_process(kind: str, count: int, target: str, ns: str, pipe: Connection) -> None:
    asyncio.run(run_clients(kind, count, target, ns, pipe))
