"""Hostile-input costs, each next to its baseline measured in the same run.

1. YAML parse of a ~1 MB document: the bounded loader vs ruamel.yaml's safe loader.
2. A "billion laughs" alias bomb: refused by the bounded loader vs what ruamel's loader
   plus JSON encoding cost on a smaller bomb (the full one would take minutes and GBs).
3. /healthz latency on a live server (own process, real etcd) while 1 MB YAML pushes run
   back to back, vs /healthz latency on the idle server.
4. Attacks (issue 16): push p99 and the peak RSS of the server process and of its read worker
   process (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``; route bodies and
   diffs run in the worker, ``configcenter/server/cpu/_read_worker.py``) while anonymous clients repeat row 3 (a 180 KB
   route body of one 60,000-character key over 40,000 lists), row 4 (a diff of 12,000 changed leaves
   under a 20,000-character key), a flood of ~0.5 MB YAML route bodies and a flood of diffs of two
   large documents, each beside the idle baseline measured in the same run, as ratios.

    python bench/bench_hostile.py [--pushes 5] [--short]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from bench_attacks import attacks_section
from bench_fanout import TOKEN, pct, serve, wait_ready

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.codec import ParseLimits, dump_yaml, parse_yaml
from configcenter.errors import PayloadTooLargeError
from configcenter.server.settings import Limits, Settings

MB = 1024 * 1024


def big_yaml(marker: str = "x") -> str:
    doc = {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(12_000)]}
    return dump_yaml({"kind": "config", "doc": doc})


def bomb(levels: int) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def parse_section() -> None:
    text = big_yaml()
    ours = min(timed(parse_yaml, text.encode(), ParseLimits(max_doc_bytes=4 * MB)) for _ in range(3))
    theirs = min(timed(YAML(typ="safe", pure=True).load, text) for _ in range(2))
    print(f"parse {len(text) / MB:.2f} MB YAML: bounded loader {ours * 1000:.0f} ms, "
          f"ruamel safe loader (baseline) {theirs * 1000:.0f} ms ({theirs / ours:.1f}x slower)")


def bomb_section() -> None:
    full = bomb(9)
    started = time.perf_counter()
    with contextlib.suppress(PayloadTooLargeError):
        parse_yaml(full.encode())
    refused = time.perf_counter() - started
    small = bomb(6)  # 10^7 leaves: what the old path paid, scaled down 1000x
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    encoded = orjson.dumps(YAML(typ="safe", pure=True).load(io.StringIO(small)))
    old = time.perf_counter() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    print(f"alias bomb ({len(full)} B, 10^10 leaves): refused in {refused * 1e6:.0f} us; baseline: ruamel + encode "
          f"of the 10^7-leaf version took {old * 1000:.0f} ms, {len(encoded) / MB:.1f} MB encoded, "
          f"peak RSS +{grown:.0f} MB (x1000 for the full bomb)")


async def healthz_latencies(http: aiohttp.ClientSession, url: str, until: asyncio.Future[Any] | None,
                            count: int = 200) -> list[float]:
    out: list[float] = []
    while (until is None and len(out) < count) or (until is not None and not until.done()):
        started = time.perf_counter()
        async with http.get(f"{url}/healthz") as resp:
            await resp.read()
        out.append(time.perf_counter() - started)
        await asyncio.sleep(0.002)
    return out


async def pushes(http: aiohttp.ClientSession, url: str, bodies: list[bytes]) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/yaml"}
    took = []
    for body in bodies:
        started = time.perf_counter()
        async with http.put(f"{url}/v1/namespaces/bench/big", data=body, headers=headers) as resp:
            assert resp.status in (200, 201), await resp.text()
        took.append(time.perf_counter() - started)
    return took


async def healthz_section(endpoints: list[str], n: int) -> None:
    port = free_port()
    limits = replace(Limits(), max_body_bytes=4 * MB, max_doc_bytes=4 * MB)
    settings = Settings(port=port, etcd_endpoints=tuple(endpoints), tokens={TOKEN: "writer"}, limits=limits)
    proc = multiprocessing.Process(target=serve, args=(settings,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    bodies = [big_yaml(str(i)).encode() for i in range(n)]  # rendered before measuring anything
    try:
        await wait_ready(url)
        async with aiohttp.ClientSession() as http:
            idle = await healthz_latencies(http, url, None)
            work = asyncio.ensure_future(pushes(http, url, bodies))
            busy = await healthz_latencies(http, url, work)
            took = await work
    finally:
        proc.terminate()
        proc.join()
    print(f"/healthz idle: p50 {pct(idle, 0.5):.1f} ms, p99 {pct(idle, 0.99):.1f} ms (baseline)")
    print(f"/healthz during {n} x 1 MB YAML pushes ({statistics.median(took) * 1000:.0f} ms each): "
          f"p50 {pct(busy, 0.5):.1f} ms, p99 {pct(busy, 0.99):.1f} ms, max {max(busy) * 1000:.1f} ms "
          f"({len(busy)} probes; p99 {pct(busy, 0.99) / pct(idle, 0.99):.1f}x idle)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=5)
    parser.add_argument("--short", action="store_true", help="only the attacks section, 3 s per phase")
    args = parser.parse_args()
    if not args.short:
        parse_section()
        bomb_section()
    with EtcdCluster(1) as cluster:
        if not args.short:
            asyncio.run(healthz_section(cluster.endpoints, args.pushes))
        asyncio.run(attacks_section(cluster.endpoints, 3.0 if args.short else 10.0))


if __name__ == "__main__":
    main()
