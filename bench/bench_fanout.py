"""Fan-out latency: one server process, N SSE subscribers, time from push to receipt.

Real path: etcd (embedded, loopback) <- server process (aiohttp, mirror, hub)
-> N subscriber connections held by this process.  Each round pushes one
change through the admin API and records, for every subscriber, the delay
from just before the PUT to the moment its ``change`` frame was read.

Baseline in the same run: the same measurement with a single subscriber, so
the printed ratio shows what fan-out to N costs on this machine.

    python bench/bench_fanout.py [--subscribers 1000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Limits, Settings, WatchTuning

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


async def subscriber(http: aiohttp.ClientSession, url: str, inbox: dict[int, list[float]], ready: asyncio.Event,
                     counter: list[int], total: int) -> None:
    async with http.get(f"{url}/v1/watch", params={"ns": "bench/cfg"}) as resp:
        event, rev = b"", 0
        async for line in resp.content:
            if line.startswith(b"id: "):
                rev = int(line[4:])
            elif line.startswith(b"event: "):
                event = line[7:].strip()
                if event == b"reset":
                    counter[0] += 1
                    if counter[0] == total:
                        ready.set()
            elif line == b"\n" and event == b"change":
                inbox.setdefault(rev, []).append(time.perf_counter())
                event = b""


async def measure(url: str, subscribers: int, rounds: int) -> list[float]:
    connector = aiohttp.TCPConnector(limit=0)
    inbox: dict[int, list[float]] = {}
    ready, counter = asyncio.Event(), [0]
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        tasks = [asyncio.create_task(subscriber(http, url, inbox, ready, counter, subscribers))
                 for _ in range(subscribers)]
        await asyncio.wait_for(ready.wait(), 120)
        delays: list[float] = []
        for i in range(rounds):
            start = time.perf_counter()
            async with http.put(f"{url}/v1/namespaces/bench/cfg", headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"kind": "config", "doc": {"round": i}}) as resp:
                revision = (await resp.json())["revision"]
            deadline = time.perf_counter() + 30
            while len(inbox.get(revision, ())) < subscribers and time.perf_counter() < deadline:
                await asyncio.sleep(0.001)
            got = inbox.get(revision, [])
            if len(got) < subscribers:
                raise RuntimeError(f"round {i}: only {len(got)}/{subscribers} subscribers got the change")
            delays += [t - start for t in got]
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return delays


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with EtcdCluster(1) as etcd:
        port = free_port()
        settings = Settings(port=port, etcd_endpoints=tuple(etcd.endpoints), tokens={TOKEN: "writer"},
                            limits=Limits(subscriber_queue=1024), watch=WatchTuning(progress_interval=5.0))
        proc = multiprocessing.get_context("spawn").Process(target=serve, args=(settings,), daemon=True)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(url)
            base = await measure(url, 1, args.rounds)
            many = await measure(url, args.subscribers, args.rounds)
        finally:
            proc.terminate()
            proc.join(10)
    print(f"fan-out, {args.rounds} rounds, push -> change frame read by each subscriber (ms)")
    print(f"  baseline   1 subscriber : p50 {pct(base, .5):7.2f}  p99 {pct(base, .99):7.2f}  max {max(base)*1000:7.2f}")
    print(f"  {args.subscribers:5d} subscribers      : p50 {pct(many, .5):7.2f}  p99 {pct(many, .99):7.2f}  "
          f"max {max(many)*1000:7.2f}")
    print(f"  ratio to baseline: p50 {pct(many, .5) / pct(base, .5):.1f}x, p99 {pct(many, .99) / pct(base, .99):.1f}x "
          f"({len(base)} and {len(many)} samples; the subscribers share this one client process)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
