"""Rollout acknowledgement: push -> every SDK instance reported it applied, vs push -> applied, same run.

Real path: etcd (embedded, loopback) <- ``configcenter serve`` in its own process <- N real
``ConfigClient``s spread over K processes (``bench/_rollout_clients.py``), each subscribed to one
namespace and reporting to the server (``configcenter_sdk._report``).

Each round pushes one change through the admin API and then polls
``GET /v1/namespaces/{ns}/rollout?revision=R`` (every ``--poll`` seconds) until it is complete:

* **all acknowledged**: PUT start -> the last instance's report of R stored by the server (its
  ``updated_at``; both ends ``time.time()`` on this host); also when the poller saw it complete
  (what ``configcenter push --wait`` waits for: includes the poll interval);
* **baseline, all applied**: PUT start -> the last instance's ``on_change`` for R (the change frame
  read and applied by the SDK, ``time.monotonic()`` across processes);
* the server's ``configcenter_rollout_ack_seconds`` histogram (commit -> report received, per instance).

Then the steady fleet: for ``--steady`` seconds no pushes; etcd's revision (every write moves it;
lease keep-alives do not) and the server's instance write / keep-alive counters are read before and after.

    python bench/bench_rollout.py [--instances 100,1000] [--procs 4] [--rounds 10] [--ttl 6] [--steady 30]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.security import Principal
from configcenter.server.settings import Limits, Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import ClientProcesses
from _rollout_clients import client_process
from bench_fanout import pct, running_server

TOKEN = "bench-writer"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def fleet_limits(instances: int, **limits: int) -> Limits:
    """Every bench instance reports from this host's one address: instance caps above the fleet size."""
    room = 2 * instances + 1024
    return Limits(max_instances=room, max_instances_per_client=room, **limits)


async def metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def push(http: aiohttp.ClientSession, url: str, ns: str, value: int) -> int:
    async with http.put(f"{url}/v1/namespaces/{ns}", headers=AUTH, json={"kind": "config", "doc": {"v": value}}) as r:
        assert r.status in (200, 201), await r.text()
        return int((await r.json())["revision"])


async def until_acknowledged(http: aiohttp.ClientSession, url: str, ns: str, revision: int, total: int,
                             poll: float) -> tuple[float, float]:
    """(when the poll saw the rollout complete, monotonic; the last instance's ack, server wall clock)."""
    while True:
        async with http.get(f"{url}/v1/namespaces/{ns}/rollout", params={"revision": str(revision)}) as resp:
            body = await resp.json()
        if body["complete"] and body["summary"]["applied"] == total:
            return time.monotonic(), max(row["updated_at"] for row in body["instances"])
        await asyncio.sleep(poll)


async def rounds(http: aiohttp.ClientSession, url: str, ns: str, total: int, count: int,
                 poll: float) -> dict[int, tuple[float, float, float]]:
    """revision -> (PUT start - monotonic, seen complete - monotonic, last ack - seconds after the PUT start)."""
    out: dict[int, tuple[float, float, float]] = {}
    for i in range(count):
        start, wall = time.monotonic(), time.time()
        revision = await push(http, url, ns, i + 1)
        seen, last_ack = await until_acknowledged(http, url, ns, revision, total, poll)
        out[revision] = (start, seen, last_ack - wall)
        await asyncio.sleep(0.3)
    return out


async def etcd_revision(endpoint: str) -> int:
    from configcenter.server.etcd import client as cc_etcd

    client = cc_etcd.connect([endpoint])
    await client.connect()
    try:
        resp = await client.kv.get(b"/", count_only=True)  # type: ignore[union-attr]
        return int(resp.header.revision)
    finally:
        await client.close()


async def steady(http: aiohttp.ClientSession, url: str, endpoint: str, seconds: float) -> dict[str, float]:
    names = ("configcenter_instance_writes_total", "configcenter_instance_keepalives_total")
    before = [await etcd_revision(endpoint), *[await metric(http, url, n) for n in names]]
    await asyncio.sleep(seconds)
    after = [await etcd_revision(endpoint), *[await metric(http, url, n) for n in names]]
    per_minute = [(b - a) * 60 / seconds for a, b in zip(before, after, strict=True)]
    return {"etcd_writes": per_minute[0], "instance_writes": per_minute[1], "keepalives": per_minute[2]}


async def run_size(url: str, endpoint: str, total: int, args: argparse.Namespace) -> None:
    ns = f"bench/rollout{total}"
    async with aiohttp.ClientSession() as http:
        await push(http, url, ns, 0)
        started = time.monotonic()
        fleet = ClientProcesses(client_process, total, min(args.procs, total),
                                lambda first, count, pipe: (first, count, url, ns, pipe))
        await fleet.ready(600)
        print(f"\n{total} instances over {min(args.procs, total)} processes ready in {time.monotonic() - started:.1f}s")
        ack_sum, ack_count = (await metric(http, url, "configcenter_rollout_ack_seconds_sum"),
                              await metric(http, url, "configcenter_rollout_ack_seconds_count"))
        timed = await rounds(http, url, ns, total, args.rounds, args.poll)
        ack_sum = await metric(http, url, "configcenter_rollout_ack_seconds_sum") - ack_sum
        ack_count = await metric(http, url, "configcenter_rollout_ack_seconds_count") - ack_count
        quiet = await steady(http, url, endpoint, args.steady)
        applied = await fleet.results(join_timeout=60)
    report(total, timed, applied, ack_sum / ack_count if ack_count else float("nan"), int(ack_count), quiet)


def report(total: int, timed: dict[int, tuple[float, float, float]], applied: dict[int, list[float]],
           ack_mean: float, ack_count: int, quiet: dict[str, float]) -> None:
    all_ack, seen_complete, all_applied, each_applied = [], [], [], []
    for revision, (start, seen, last_ack) in timed.items():
        times = applied.get(revision, [])
        if len(times) < total:
            print(f"  revision {revision}: only {len(times)}/{total} instances applied it")
            continue
        all_ack.append(last_ack)
        seen_complete.append(seen - start)
        all_applied.append(max(times) - start)
        each_applied += [t - start for t in times]
    print(f"  push -> all acknowledged (last report stored, server clock): p50 {pct(all_ack, .5):.1f} ms, "
          f"max {max(all_ack) * 1e3:.1f} ms; seen complete by the poller: p50 {pct(seen_complete, .5):.1f} ms")
    print(f"  baseline push -> all applied (last on_change): p50 {pct(all_applied, .5):.1f} ms, "
          f"max {max(all_applied) * 1e3:.1f} ms; per instance p50 {pct(each_applied, .5):.1f} ms, "
          f"p99 {pct(each_applied, .99):.1f} ms")
    print(f"  ratio all-acknowledged / all-applied: p50 {pct(all_ack, .5) / pct(all_applied, .5):.2f}x")
    print(f"  server ack histogram (commit -> report received): mean {ack_mean * 1e3:.1f} ms over {ack_count} acks")
    print(f"  steady fleet, per minute: etcd writes {quiet['etcd_writes']:.1f}, instance writes "
          f"{quiet['instance_writes']:.1f}, lease keep-alives {quiet['keepalives']:.0f}")


async def main(args: argparse.Namespace) -> None:
    with EtcdCluster(1) as etcd:
        settings = Settings(host="127.0.0.1", port=free_port(), etcd_endpoints=tuple(etcd.endpoints),
                            prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                            tokens=(Principal.from_token("bench", TOKEN, "writer"),),
                            watch=WatchTuning(instance_ttl=args.ttl), limits=fleet_limits(max(args.instances)))
        async with running_server(settings) as (url, _pid):
            for total in args.instances:
                await run_size(url, etcd.endpoints[0], total, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="100,1000", help="comma-separated fleet sizes")
    parser.add_argument("--procs", type=int, default=4, help="client processes per fleet")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between rollout polls (the CLI: 0.1 to 1)")
    parser.add_argument("--ttl", type=float, default=6.0, help="instance lease TTL (heartbeat = ttl / 3)")
    parser.add_argument("--steady", type=float, default=30.0, help="seconds of steady fleet to count writes")
    args = parser.parse_args()
    args.instances = [int(x) for x in args.instances.split(",")]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
