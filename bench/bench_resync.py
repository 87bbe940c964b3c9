"""Resync at scale: the mirror's re-list + diff after compaction, and server start, with 10,000 namespaces.

Real path: an embedded etcd on loopback holding N namespaces written by the real ``Store``
(``docs/<ns>`` + ``history/<ns>/<version>`` per release, one transaction each), so history holds
more than ``limits.history_ring`` (default 10,000) releases and the ring is full at start.

1. **Resync**: a real ``Mirror`` is loaded, stopped, K namespaces change (updates, deletions,
   creations), etcd compacts past the mirror's resume point, the mirror starts again: its watch is
   refused (compacted), it re-lists ``docs/`` and publishes the difference.  Timed: start until
   it has applied etcd's revision (and the K changes were published).
2. **Start**: ``configcenter serve`` as a subprocess: time to listening (``/healthz``) and to ready
   (``/readyz`` 200: ``docs/`` listed and the catch-up ring rebuilt from the newest
   ``history_ring`` history entries).  Also in-process: ``Runtime.start()`` to ready (no Python
   start-up).

Baseline in the same run: bare etcd range reads of the same keys with the same client (``docs/`` and
``history/``, keys + values), in pages as the mirror reads them and in one request.

    python bench/bench_resync.py [--namespaces 10000] [--changed 100] [--doc-bytes 400] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from etcd3aio import prefix_range_end

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.etcd import Store
from configcenter.server.etcd import client as cc_etcd
from configcenter.server.runtime import Runtime, wait_ready
from configcenter.server.settings import Settings, WatchTuning
from configcenter.server.watch import Change, Mirror

PREFIX = "/bench-resync/"
TUNING = WatchTuning(progress_interval=5.0, etcd_timeout=30.0)


def doc_of(i: int, size: int, version: int = 1) -> dict[str, Any]:
    """A config document of about ``size`` bytes as JSON."""
    return {"service": f"svc-{i}", "version": version, "flags": {f"flag_{k}": k % 2 == 0 for k in range(8)},
            "padding": "x" * max(0, size - 200)}


async def gather_chunked(jobs: list[Callable[[], Awaitable[Any]]], width: int = 64) -> None:
    for i in range(0, len(jobs), width):
        await asyncio.gather(*(job() for job in jobs[i:i + width]))


async def seed(store: Store, count: int, size: int) -> None:
    await gather_chunked([lambda i=i: store.push(f"ns/{i:05d}", "config", doc_of(i, size)) for i in range(count)])


async def timed(label: str, work: Awaitable[Any]) -> tuple[str, float, Any]:
    start = time.perf_counter()
    result = await work
    return label, time.perf_counter() - start, result


async def baselines(kv: Any, count: int) -> list[tuple[str, float, Any]]:
    """Bare range reads of ``docs/`` and ``history/`` (values included): paged like the mirror, and whole;
    and the keys-only read of ``docs/`` a quiet mirror makes every progress interval (``ProgressVerifier``)."""
    out = []
    for part in ("docs/", "history/"):
        start = f"{PREFIX}{part}".encode()
        out.append(await timed(f"etcd range {part} paged ({cc_etcd.LIST_PAGE}/page)",
                               cc_etcd.read_range(kv, start, prefix_range_end(start), timeout=30)))
        out.append(await timed(f"etcd range {part} one request",
                               kv.get(start, range_end=prefix_range_end(start), timeout=30)))
    start = f"{PREFIX}docs/".encode()
    out.append(await timed(f"etcd range docs/ keys only ({cc_etcd.KEYS_PAGE}/page)",  # a quiet mirror's progress check
                           cc_etcd.read_range(kv, start, prefix_range_end(start), keys_only=True, timeout=30)))
    return out


async def loaded_mirror(client: Any) -> Mirror:
    mirror = Mirror(client, cc_etcd.KeyLayout(PREFIX), tuning=TUNING)
    mirror.start()
    await asyncio.wait_for(mirror.ready.wait(), 120)
    return mirror


async def change_while_stopped(store: Store, count: int, changed: int, size: int) -> int:
    """Updates, deletions and creations (about changed/3 each); returns etcd's revision afterwards."""
    third = max(1, changed // 3)
    jobs: list[Callable[[], Awaitable[Any]]] = []
    jobs += [lambda i=i: store.push(f"ns/{i:05d}", "config", doc_of(i, size, 2)) for i in range(third)]
    jobs += [lambda i=i: store.delete(f"ns/{i:05d}") for i in range(third, 2 * third)]
    jobs += [lambda i=i: store.push(f"new/{i:05d}", "config", doc_of(i, size)) for i in range(changed - 2 * third)]
    await gather_chunked(jobs)
    return await store.current_revision()


async def resync(client: Any, store: Store, args: argparse.Namespace) -> tuple[float, int, pstats.Stats | None]:
    """Seconds from the mirror's restart to etcd's revision applied after compaction; changes published."""
    mirror = await loaded_mirror(client)
    await mirror.stop()
    target = await change_while_stopped(store, args.namespaces, args.changed, args.doc_bytes)
    await client.kv.compact(target, physical=True, timeout=60)
    published: list[Change] = []
    mirror.listeners.append(published.extend)
    profile = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profile:
        profile.enable()
    mirror.start()
    if not await mirror.wait_for(target, 120):
        raise RuntimeError("the mirror did not catch up")
    if profile:
        profile.disable()
    elapsed = time.perf_counter() - start
    await mirror.stop()
    if mirror.metrics.values["configcenter_mirror_resyncs_total"] != 1 or len(published) != args.changed:
        raise RuntimeError(f"expected one resync publishing {args.changed} changes, got {len(published)}")
    return elapsed, len(published), pstats.Stats(profile) if profile else None


async def start_in_process(etcd: EtcdCluster, profile: cProfile.Profile | None) -> float:
    runtime = Runtime(Settings(etcd_endpoints=tuple(etcd.endpoints), prefix=PREFIX, watch=TUNING))
    start = time.perf_counter()
    if profile:
        profile.enable()
    await runtime.start()
    await wait_ready(runtime, 120)
    if profile:
        profile.disable()
    elapsed = time.perf_counter() - start
    ring = len(runtime.mirror.ring)
    await runtime.close()
    print(f"  in-process Runtime.start() -> ready      {elapsed * 1000:8.1f} ms  (ring {ring} changes)")
    return elapsed


async def start_subprocess(etcd: EtcdCluster) -> None:
    """``configcenter serve`` from exec to /healthz (listening) and /readyz 200 (ready)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "configcenter", "serve", "--listen", f"127.0.0.1:{port}",
                             "--etcd", etcd.endpoints[0], "--prefix", PREFIX],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marks: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as http:
            while "/readyz" not in marks and time.perf_counter() - start < 120:
                for path in ("/healthz", "/readyz"):
                    if path not in marks and await _ok(http, url + path):
                        marks[path] = time.perf_counter() - start
                await asyncio.sleep(0.005)
        rss = _rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    print(f"  configcenter serve: exec -> listening     {marks.get('/healthz', float('nan')) * 1000:8.1f} ms")
    print(f"  configcenter serve: exec -> ready         {marks.get('/readyz', float('nan')) * 1000:8.1f} ms  "
          f"(RSS when ready {rss:.0f} MiB)")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespaces", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=100, help="namespaces changed while the mirror is stopped")
    parser.add_argument("--doc-bytes", type=int, default=400, help="approximate size of each document (JSON)")
    parser.add_argument("--profile", action="store_true", help="cProfile the resync and the start, print the top")
    args = parser.parse_args()
    with EtcdCluster(1) as etcd:
        client = cc_etcd.connect(etcd.endpoints)
        await client.connect()
        store = Store(client, cc_etcd.KeyLayout(PREFIX), timeout=30)
        seeded = time.perf_counter()
        await seed(store, args.namespaces, args.doc_bytes)
        print(f"{args.namespaces} namespaces (~{args.doc_bytes} B documents) seeded through Store in "
              f"{time.perf_counter() - seeded:.1f} s")
        print("baseline, bare etcd reads (same client, same keys):")
        for label, seconds, _ in await baselines(client.kv, args.namespaces):
            print(f"  {label:<40} {seconds * 1000:8.1f} ms")
        elapsed, published, stats = await resync(client, store, args)
        print(f"resync after compaction ({args.changed} namespaces changed while stopped):")
        print(f"  mirror restart -> re-listed, diffed, caught up {elapsed * 1000:8.1f} ms  "
              f"({published} changes published)")
        print("server start (history ring full):")
        start_profile = cProfile.Profile() if args.profile else None
        await start_in_process(etcd, start_profile)
        await start_subprocess(etcd)
        await client.close()
    if stats is not None and start_profile is not None:
        print("profile of the resync (cumulative, top 25):")
        stats.sort_stats("cumulative").print_stats(25)
        print("profile of the in-process start (cumulative, top 25):")
        pstats.Stats(start_profile).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    asyncio.run(main())
