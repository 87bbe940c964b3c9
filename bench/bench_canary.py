"""Canary releases: push a 10 % canary -> the last canary member applied it, beside a plain push, same run.

Real path: etcd (embedded, loopback) <- ``configcenter serve`` in its own process <- N real
``ConfigClient``s (ids ``bench-0`` …) over K processes (``bench/_canary_clients.py``), each subscribed
to one namespace and reporting to the server.

Each round, one after the other:

* **plain push** (the baseline): PUT start -> the last of the N instances applied the revision (its
  ``on_change``; ``time.monotonic()`` is system-wide on Linux, so comparable across processes);
* **10 % canary**: ``POST …/canary`` start -> the last *member* applied the candidate (the members are
  known in advance: ``is_member`` over the ids); also when a poller of ``GET …/rollout`` (every
  ``--poll`` s) saw the canary's part complete (what ``push --canary --wait`` waits for). Checked:
  every member applied the candidate and no other instance did;
* then ``DELETE …/canary`` (abort), so the next round starts from a plain namespace.

    python bench/bench_canary.py [--instances 1000] [--procs 4] [--rounds 5] [--percent 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.security import Principal
from configcenter.server.settings import Settings, WatchTuning
from configcenter_sdk.canary import is_member, parse_target

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _canary_clients import client_process
from _procs import ClientProcesses
from bench_fanout import pct, running_server
from bench_rollout import fleet_limits

TOKEN = "bench-writer"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NS = "bench/cfg"


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> dict[str, Any]:
    async with http.request(method, url, headers=AUTH, **kw) as resp:
        assert resp.status in (200, 201), await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def canary_seen_complete(http: aiohttp.ClientSession, url: str, started: int, poll: float) -> float:
    while True:
        async with http.get(f"{url}/v1/namespaces/{NS}/rollout") as resp:
            body = await resp.json()
        canary = body.get("canary") or {}
        if canary.get("started") == started and canary.get("complete"):
            return time.monotonic()
        await asyncio.sleep(poll)


async def fleet_complete(http: aiohttp.ClientSession, url: str, revision: int, total: int, poll: float) -> None:
    """Until every instance applied ``revision`` (so no operation overlaps the previous one's fan-out)."""
    while True:
        async with http.get(f"{url}/v1/namespaces/{NS}/rollout", params={"revision": str(revision)}) as resp:
            body = await resp.json()
        if body["summary"]["applied"] == total:
            return
        await asyncio.sleep(poll)


async def rounds(http: aiohttp.ClientSession, url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    base = f"{url}/v1/namespaces/{NS}"
    for i in range(args.rounds):
        start = time.monotonic()
        plain = await call(http, "PUT", base, json={"kind": "config", "doc": {"v": 2 * i + 1}})
        await fleet_complete(http, url, plain["revision"], args.instances, args.poll)
        await asyncio.sleep(args.settle)
        value = 2 * i + 2
        canary_start = time.monotonic()
        started = await call(http, "POST", f"{base}/canary",
                             json={"doc": {"v": value}, "target": {"percent": args.percent}})
        seen = await canary_seen_complete(http, url, started["revision"], args.poll)
        await asyncio.sleep(args.settle)
        aborted = await call(http, "DELETE", f"{base}/canary")
        await fleet_complete(http, url, aborted["revision"], args.instances, args.poll)
        await asyncio.sleep(args.settle)
        out.append({"plain": (plain["revision"], start), "canary": (started["revision"], canary_start, value),
                    "seen": seen - canary_start})
    return out


def report(total: int, members: set[int], timed: list[dict[str, Any]], applied: dict[int, list[Any]]) -> None:
    plain_all, canary_last, seen, wrong = [], [], [], 0
    for item in timed:
        revision, start = item["plain"]
        times = [t for _, _, t in applied.get(revision, [])]
        if len(times) == total:
            plain_all.append(max(times) - start)
        revision, start, value = item["canary"]
        got = applied.get(revision, [])
        on_candidate = {n for n, v, _ in got if v == value}
        wrong += len(on_candidate ^ members)
        member_times = [t for n, v, t in got if v == value and n in members]
        if len(member_times) == len(members):
            canary_last.append(max(member_times) - start)
        seen.append(item["seen"])
    print(f"  {total} instances, {len(members)} canary members; instances on the wrong track: {wrong}")
    print(f"  plain push -> last of {total} applied: p50 {pct(plain_all, .5):.1f} ms, max {max(plain_all) * 1e3:.1f} ms"
          f" ({len(plain_all)} rounds)")
    print(f"  canary start -> last of {len(members)} members applied: p50 {pct(canary_last, .5):.1f} ms, "
          f"max {max(canary_last) * 1e3:.1f} ms ({len(canary_last)} rounds); ratio p50 "
          f"{pct(canary_last, .5) / pct(plain_all, .5):.2f}x")
    print(f"  canary start -> a rollout poller saw the canary complete: p50 {pct(seen, .5):.1f} ms")


async def main(args: argparse.Namespace) -> None:
    target = parse_target({"percent": args.percent})
    members = {n for n in range(args.instances) if is_member(target, f"bench-{n}", {})}
    with EtcdCluster(1) as etcd:
        settings = Settings(host="127.0.0.1", port=free_port(), etcd_endpoints=tuple(etcd.endpoints),
                            prefix=f"/bench-{uuid.uuid4().hex[:8]}/",
                            tokens=(Principal.from_token("bench", TOKEN, "writer"),),
                            watch=WatchTuning(instance_ttl=args.ttl), limits=fleet_limits(args.instances))
        async with running_server(settings) as (url, _pid), aiohttp.ClientSession() as http:
            await call(http, "PUT", f"{url}/v1/namespaces/{NS}", json={"kind": "config", "doc": {"v": 0}})
            began = time.monotonic()
            fleet = ClientProcesses(client_process, args.instances, min(args.procs, args.instances),
                                    lambda first, count, pipe: (first, count, url, NS, pipe))
            await fleet.ready(900)
            print(f"{args.instances} instances over {args.procs} processes ready in {time.monotonic() - began:.1f}s")
            timed = await rounds(http, url, args)
            applied = await fleet.results(join_timeout=60)
    report(args.instances, members, timed, applied)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--percent", type=int, default=10)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between rollout polls")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between operations")
    parser.add_argument("--ttl", type=float, default=30.0, help="instance lease TTL")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
