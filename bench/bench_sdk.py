"""Push -> SDK apply latency, against the bare push round trip measured in the same run.

Real path: embedded etcd, the server in its own process, a ``ConfigClient``
subscribed to one route-table namespace in this process.  Each round pushes
a new table and waits until the SDK's ``route()`` answers by it; the baseline
is the PUT round trip alone (etcd transaction + the server's visibility wait).

    python bench/bench_sdk.py [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

import aiohttp
from bench_fanout import TOKEN, pct, serve, wait_ready

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Settings
from configcenter_sdk import ConfigClient


def table(n: int) -> dict[str, object]:
    return {"kind": "routes", "doc": {"service": "bench", "rules": [], "default": {"cluster": f"v{n}"}}}


async def run(url: str, rounds: int) -> tuple[list[float], list[float]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    put_times, apply_times = [], []
    async with aiohttp.ClientSession() as http, ConfigClient([url], ["bench/routes"]) as client:
        for n in range(rounds):
            start = time.perf_counter()
            async with http.put(f"{url}/v1/namespaces/bench/routes", json=table(n), headers=headers) as resp:
                assert resp.status in (200, 201), await resp.text()
            put_times.append(time.perf_counter() - start)
            while True:
                try:
                    if client.route("bench", {}).cluster == f"v{n}":
                        break
                except LookupError:
                    pass
                await asyncio.sleep(0.0002)
            apply_times.append(time.perf_counter() - start)
    return put_times, apply_times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with EtcdCluster(1) as etcd:
        port = free_port()
        settings = Settings(port=port, etcd_endpoints=tuple(etcd.endpoints), tokens={TOKEN: "writer"})
        proc = multiprocessing.get_context("spawn").Process(target=serve, args=(settings,), daemon=True)
        proc.start()
        try:
            await wait_ready(f"http://127.0.0.1:{port}")
            put_times, apply_times = await run(f"http://127.0.0.1:{port}", args.rounds)
        finally:
            proc.terminate()
            proc.join(10)
    print(f"push -> SDK route() answers by the new table, {args.rounds} rounds (ms)")
    print(f"  baseline PUT round trip : p50 {pct(put_times, .5):6.2f}  p99 {pct(put_times, .99):6.2f}")
    print(f"  push -> applied in SDK  : p50 {pct(apply_times, .5):6.2f}  p99 {pct(apply_times, .99):6.2f}")
    print(f"  ratio p50 {pct(apply_times, .5) / pct(put_times, .5):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
