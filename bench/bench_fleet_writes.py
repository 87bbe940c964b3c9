"""etcd write load of a steady fleet: N instances heartbeating, no change, for ``--window`` seconds.

Real server (``configcenter serve`` in its own process) on a real etcd; the instances are
lightweight reporters speaking the SDK's report protocol (``POST /v1/instances/{id}/report`` with
the ``lease`` and ``stored`` digest of the previous answer, every ``heartbeat`` seconds as the server
says), ``N / procs`` per process, so 10,000 fit on one machine (10,000 full ``ConfigClient``s would
also hold 10,000 SSE streams: that is ``bench_rollout.py``'s job). Printed per fleet size: etcd
writes per minute (etcd's revision moves on every write; lease keep-alives do not move it), the
server's instance writes and keep-alives per minute, report latency, and the server's CPU time.

    python bench/bench_fleet_writes.py [--instances 1000,10000] [--procs 4] [--ttl 30] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import ClientProcesses
from bench_fanout import cpu_seconds, pct, running_server
from bench_rollout import etcd_revision, fleet_limits, metric


async def reporter(http: aiohttp.ClientSession, url: str, iid: str, latencies: list[float],
                   stop: asyncio.Event) -> None:
    body: dict[str, Any] = {"service": f"svc{hash(iid) % 10}", "labels": {"host": "bench", "pid": "1"},
                            "selectors": ["bench/"], "mode": "live",
                            "namespaces": {"bench/config": {"applied": 2, "source": "live"}}}
    heartbeat = 10.0
    first = True
    while not stop.is_set():
        start = time.monotonic()
        async with http.post(f"{url}/v1/instances/{iid}/report", data=orjson.dumps(body)) as resp:
            answer = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"report refused: {resp.status} {answer}")
        latencies.append(time.monotonic() - start)
        body.update(lease=answer["lease"], stored=answer["digest"])
        heartbeat = float(answer["heartbeat"])
        wait = random.uniform(0, heartbeat) if first else heartbeat  # spread the fleet over the interval
        first = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)


def fleet_process(first: int, count: int, total: int, url: str, pipe: Connection) -> None:
    async def main() -> None:
        latencies: list[float] = []
        stop = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
            # ids unique per fleet size: the previous size's records live on until their leases expire,
            # and a report without its record's lease is refused (409)
            tasks = [asyncio.create_task(reporter(http, url, f"bench-{total}-{first + i}", latencies, stop))
                     for i in range(count)]
            await asyncio.sleep(0)
            pipe.send("started")
            await asyncio.to_thread(pipe.recv)  # "measure": forget the start-up reports
            latencies.clear()
            await asyncio.to_thread(pipe.recv)  # "stop"
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        pipe.send(latencies)

    asyncio.run(main())


async def run_size(url: str, endpoint: str, pid: int, total: int, args: argparse.Namespace) -> None:
    fleet = ClientProcesses(fleet_process, total, args.procs,
                            lambda first, count, pipe: (first, count, total, url, pipe))
    await fleet.recv_all(600)
    await asyncio.sleep(args.ttl / 3 + 5)  # every instance reported once and its heartbeats are spread
    async with aiohttp.ClientSession() as http:
        names = ("configcenter_instance_writes_total", "configcenter_instance_keepalives_total")
        fleet.send_all("measure")
        before = [await etcd_revision(endpoint), *[await metric(http, url, n) for n in names], cpu_seconds(pid)]
        await asyncio.sleep(args.window)
        after = [await etcd_revision(endpoint), *[await metric(http, url, n) for n in names], cpu_seconds(pid)]
    fleet.send_all("stop")
    latencies = [latency for answer in await fleet.recv_all(600) for latency in answer]
    fleet.join(60)
    per_min = [(b - a) * 60 / args.window for a, b in zip(before, after, strict=True)]
    print(f"{total} instances, TTL {args.ttl:g}s, {args.window:g}s window: etcd writes/min {per_min[0]:.1f}, "
          f"instance writes/min {per_min[1]:.1f}, keep-alives/min {per_min[2]:.0f}; report p50 "
          f"{pct(latencies, .5):.1f} ms, p99 {pct(latencies, .99):.1f} ms; server CPU {per_min[3] / 60:.0%} of a core")


async def main(args: argparse.Namespace) -> None:
    with EtcdCluster(1) as etcd:
        settings = Settings(host="127.0.0.1", port=free_port(), etcd_endpoints=tuple(etcd.endpoints),
                            prefix=f"/bench-{uuid.uuid4().hex[:8]}/", watch=WatchTuning(instance_ttl=args.ttl),
                            limits=fleet_limits(max(args.instances), max_connections=4 * max(args.instances) + 1024))
        async with running_server(settings) as (url, pid):
            for total in args.instances:
                await run_size(url, etcd.endpoints[0], pid, total, args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="1000,10000")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=60.0)
    parsed = parser.parse_args()
    parsed.instances = [int(x) for x in parsed.instances.split(",")]
    asyncio.run(main(parsed))
