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

``--workers 1,2`` runs the configcenter side once per worker count (``configcenter serve
--workers N``: N processes on one port with SO_REUSEPORT), each against the same direct baseline,
and prints how the kernel spread the subscribers over the workers.

    python bench/bench_fanout.py [--subscribers 1000] [--rounds 20] [--layouts 1,4] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Limits, Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fanout_clients import client_process
from _procs import ClientProcesses

TOKEN = "bench-writer"


def serve(settings: Settings) -> None:
    """The server as `configcenter serve` runs it (connection guard included), in this process;
    with ``settings.workers`` > 1 this process is the supervisor of that many workers."""
    from configcenter.server.http import serve as serve_forever
    from configcenter.server.workers import run_workers

    if settings.workers > 1:
        run_workers(settings)
    elif os.environ.get("BENCH_LOOP") == "uvloop":  # the server on uvloop, for a same-machine comparison
        import uvloop

        uvloop.run(serve_forever(settings))
    else:
        asyncio.run(serve_forever(settings))


async def wait_ready(url: str, workers: int = 1) -> None:
    """Until ``workers`` distinct workers answered /readyz 200 (fresh connection per try)."""
    seen: set[str] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(600):
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        seen.add(resp.headers.get("X-Configcenter-Worker", ""))
                        if len(seen) >= workers:
                            return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not become ready")


async def subscribers_per_worker(url: str, workers: int, expected: int) -> str:
    """``configcenter_subscribers`` of every worker (each /metrics scrape is answered by one of them),
    polled until they add up to ``expected`` (streams of an earlier layout leave a worker's gauge
    when the worker next writes to them, within a progress interval)."""
    found: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(400):
            async with http.get(f"{url}/metrics") as resp:
                label = resp.headers.get("X-Configcenter-Worker", "0").split("/")[0]
                line = next(x for x in (await resp.text()).splitlines() if x.startswith("configcenter_subscribers "))
                found[label] = int(float(line.split()[1]))
            if len(found) >= workers and sum(found.values()) == expected:
                break
            await asyncio.sleep(0.025)
    return ", ".join(f"worker {k}: {v}" for k, v in sorted(found.items()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (Linux /proc; 0 where unreadable)."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its descendants: system time is mostly the kernel's
    side of the sockets (send, and on loopback the receiver's TCP processing)."""
    user, system, pending = 0.0, 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
            system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return user, system


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[tuple[str, int]]:
    """``configcenter serve`` (with ``settings.workers`` workers) in a separate process; yields URL and pid."""
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(settings,), daemon=False)
    proc.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        await wait_ready(url, settings.workers)
        print(f"(server pid {proc.pid} at {url}: attach a profiler here, e.g. py-spy record -p {proc.pid})",
              file=sys.stderr)
        yield url, proc.pid or 0
    finally:
        proc.terminate()  # SIGTERM: the supervisor stops its workers
        proc.join(20)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


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
    from configcenter.server.etcd import client as cc_etcd

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


async def measure(kind: str, target: str, subscribers: int, procs: int, rounds: int, workers: int = 1,
                  pids: dict[str, int] | None = None) -> Result:
    """``pids``: processes (label -> pid, descendants included) whose CPU time during the rounds is reported."""
    ns = f"bench/{kind}{subscribers}x{procs}"
    clients = ClientProcesses(client_process, subscribers, procs,
                              lambda _first, count, pipe: (kind, count, target, ns, pipe))
    await clients.ready(180)
    spread = await subscribers_per_worker(target, workers, subscribers) if kind == "sse" and workers > 1 else ""
    before = {label: cpu_split(pid) for label, pid in (pids or {}).items()}
    started = await (rounds_via_api if kind == "sse" else rounds_via_etcd)(target, ns, rounds)
    cpu = {label: (after[0] - before[label][0], after[1] - before[label][1])
           for label, after in ((label, cpu_split(pid)) for label, pid in (pids or {}).items())}
    received = await clients.results(join_timeout=10)
    delays, lasts = [], []
    for revision, start in started.items():
        got = received.get(revision, [])
        if len(got) != subscribers:
            raise RuntimeError(f"{kind}: revision {revision} reached {len(got)}/{subscribers} subscribers")
        delays += [t - start for t in got]
        lasts.append(max(got) - start)
    return Result(delays, lasts, spread, cpu)


@dataclass
class Result:
    delays: list[float]
    lasts: list[float]
    spread: str = ""  # subscribers per worker, with several workers
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # (user, system) CPU s in the rounds, by label

    def line(self, label: str) -> str:
        d = self.delays
        return (f"  {label:<26} p50 {pct(d, .5):7.2f}  p99 {pct(d, .99):7.2f}  max {max(d) * 1000:7.2f}  "
                f"last served p50 {pct(self.lasts, .5):7.2f}" + (f"  ({self.spread})" if self.spread else ""))

    def cpu_line(self) -> str:
        """CPU time of the metered processes per delivered change (µs), over the rounds' wall time."""
        delivered = len(self.delays)
        rounds = len(self.lasts)
        parts = [f"{label} {(user + system) * 1e6 / delivered:5.1f} µs/delivery (user {user * 1e6 / delivered:.1f}"
                 f" + sys {system * 1e6 / delivered:.1f}; {(user + system) * 1e3 / rounds:.1f} ms/push)"
                 for label, (user, system) in self.cpu.items()]
        return f"  {'':<26} CPU during the rounds: " + ", ".join(parts)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--layouts", type=ints, default=[1, 4], help="client process counts to run, e.g. 1,4")
    parser.add_argument("--workers", type=ints, default=[1], help="server worker counts to run, e.g. 1,2")
    args = parser.parse_args()
    ours: dict[tuple[int, int], Result] = {}
    with EtcdCluster(1) as etcd:
        etcd_pid = etcd.members[0].process.pid if etcd.members[0].process else 0
        for workers in args.workers:
            settings = Settings(port=free_port(), etcd_endpoints=tuple(etcd.endpoints), prefix=f"/bench-w{workers}/",
                                tokens={TOKEN: "writer"}, limits=Limits(subscriber_queue=1024,
                                              # every client is 127.0.0.1: the per-address cap must not apply
                                              max_streams_per_address=4 * args.subscribers),
                                watch=WatchTuning(progress_interval=5.0), workers=workers)
            async with running_server(settings) as (url, pid):
                for procs in args.layouts:
                    ours[workers, procs] = await measure("sse", url, args.subscribers, procs, args.rounds, workers,
                                                         {"server": pid, "etcd": etcd_pid})
        direct = {procs: await measure("etcd", etcd.endpoints[0], args.subscribers, procs, args.rounds,
                                       pids={"etcd": etcd_pid}) for procs in args.layouts}
    print(f"fan-out, {args.subscribers} subscribers, {args.rounds} rounds, push -> event read (ms)")
    for procs in args.layouts:
        print(f" subscribers in {procs} client process(es):")
        print(direct[procs].line("direct etcd watch (put)"))
        print(direct[procs].cpu_line())
        for workers in args.workers:
            result = ours[workers, procs]
            print(result.line(f"configcenter, {workers} worker{'s' if workers > 1 else ''}"))
            print(f"  {'':<26} ratio to direct: p50 {pct(result.delays, .5) / pct(direct[procs].delays, .5):.2f}x, "
                  f"p99 {pct(result.delays, .99) / pct(direct[procs].delays, .99):.2f}x")
            print(result.cpu_line())


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
