"""Fan-out latency: configcenter's SSE hub vs every subscriber watching etcd directly, same run.

Real path: etcd (embedded, loopback) <- server process (aiohttp, mirror, hub) -> N SSE
subscribers held by K client processes (``bench/_fanout_clients.py``).  Each round pushes one
change through the admin API and records, for every subscriber, the delay from just before the
PUT to the moment its ``change`` frame was read (``time.monotonic()``, comparable across
processes on Linux).

Baseline in the same run: N direct etcd watchers (one Watch RPC stream each, etcd3aio's gRPC
channel, spread over the same K processes) and a writer putting straight into etcd: what
services would get without configcenter.  Printed: p50/p99/max per side, the ratio, and the
"last subscriber served" delay per round.

    python bench/bench_fanout.py [--subscribers 1000] [--rounds 20] [--layouts 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Limits, Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fanout_clients import client_process

TOKEN = "bench-writer"


def serve(settings: Settings) -> None:
    """The server as `configcenter serve` runs it (connection guard included), in this process."""
    from configcenter.server.app import serve as serve_forever

    asyncio.run(serve_forever(settings))


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not become ready")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class Clients:
    """K subscriber processes of one kind ("sse" or "etcd") holding ``total`` subscribers."""

    def __init__(self, kind: str, total: int, procs: int, target: str, ns: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(procs):
            count = total // procs + (1 if i < total % procs else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(kind, count, target, ns, theirs), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    async def ready(self) -> None:
        for pipe in self.pipes:
            if await asyncio.wait_for(asyncio.to_thread(pipe.recv), 180) != "ready":
                raise RuntimeError("a client process failed to connect its subscribers")

    async def results(self) -> dict[int, list[float]]:
        merged: dict[int, list[float]] = {}
        for pipe in self.pipes:
            pipe.send("stop")
        for pipe in self.pipes:
            for revision, times in (await asyncio.to_thread(pipe.recv)).items():
                merged.setdefault(revision, []).extend(times)
        for proc in self.procs:
            proc.join(10)
        return merged


async def rounds_via_api(url: str, ns: str, rounds: int) -> dict[int, float]:
    started: dict[int, float] = {}
    async with aiohttp.ClientSession() as http:
        for i in range(rounds):
            start = time.monotonic()
            async with http.put(f"{url}/v1/namespaces/{ns}", headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"kind": "config", "doc": {"round": i}}) as resp:
                started[(await resp.json())["revision"]] = start
            await asyncio.sleep(0.2)  # let every subscriber read it before the next round
    return started


async def rounds_via_etcd(endpoint: str, ns: str, rounds: int) -> dict[int, float]:
    from configcenter.server import etcd as cc_etcd

    client = cc_etcd.connect([endpoint])
    await client.connect()
    started: dict[int, float] = {}
    try:
        for i in range(rounds):
            start = time.monotonic()
            resp = await client.kv.put(f"/bench-direct/{ns}".encode(), b'{"round": %d}' % i)  # type: ignore[union-attr]
            started[resp.header.revision] = start
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    return started


async def measure(kind: str, target: str, subscribers: int, procs: int, rounds: int) -> Result:
    ns = f"bench/{kind}{subscribers}x{procs}"
    clients = Clients(kind, subscribers, procs, target, ns)
    await clients.ready()
    started = await (rounds_via_api if kind == "sse" else rounds_via_etcd)(target, ns, rounds)
    received = await clients.results()
    delays, lasts = [], []
    for revision, start in started.items():
        got = received.get(revision, [])
        if len(got) != subscribers:
            raise RuntimeError(f"{kind}: revision {revision} reached {len(got)}/{subscribers} subscribers")
        delays += [t - start for t in got]
        lasts.append(max(got) - start)
    return Result(delays, lasts)


@dataclass
class Result:
    delays: list[float]
    lasts: list[float]

    def line(self, label: str) -> str:
        d = self.delays
        return (f"  {label:<26} p50 {pct(d, .5):7.2f}  p99 {pct(d, .99):7.2f}  max {max(d) * 1000:7.2f}  "
                f"last served p50 {pct(self.lasts, .5):7.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--layouts", default="1,4", help="client process counts to run, e.g. 1,4")
    args = parser.parse_args()
    layouts = [int(x) for x in args.layouts.split(",")]
    with EtcdCluster(1) as etcd:
        port = free_port()
        settings = Settings(port=port, etcd_endpoints=tuple(etcd.endpoints), tokens={TOKEN: "writer"},
                            limits=Limits(subscriber_queue=1024), watch=WatchTuning(progress_interval=5.0))
        proc = multiprocessing.get_context("spawn").Process(target=serve, args=(settings,), daemon=True)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(url)
            print(f"fan-out, {args.subscribers} subscribers, {args.rounds} rounds, push -> event read (ms)")
            for procs in layouts:
                ours = await measure("sse", url, args.subscribers, procs, args.rounds)
                direct = await measure("etcd", etcd.endpoints[0], args.subscribers, procs, args.rounds)
                print(f" subscribers in {procs} client process(es):")
                print(ours.line("configcenter (API push)"))
                print(direct.line("direct etcd watch (put)"))
                print(f"  ratio configcenter / direct: p50 {pct(ours.delays, .5) / pct(direct.delays, .5):.2f}x, "
                      f"p99 {pct(ours.delays, .99) / pct(direct.delays, .99):.2f}x")
        finally:
            proc.terminate()
            proc.join(10)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
