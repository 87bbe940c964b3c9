"""Server memory per idle SSE subscriber, against an idle keep-alive HTTP connection, same run.

Real path: ``configcenter serve`` (its own process, embedded etcd) and N raw client sockets in
this process (plain asyncio streams: the client side costs little).  Measured: the server's
RSS (``/proc/<pid>/status`` VmRSS) before and after N connections, per connection, for

* baseline: N keep-alive connections that made one ``GET /healthz`` and stay open (what
  aiohttp itself costs per connection: transport, protocol, parser, buffers);
* configcenter: N ``GET /v1/watch?ns=...`` streams that received their ``reset`` and idle.

    python bench/bench_idle.py [--subscribers 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import sys
from pathlib import Path

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Limits, Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fanout import running_server  # the server as `configcenter serve` runs it

WATCH = b"GET /v1/watch?ns=idle/ HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_many(port: int, count: int, request: bytes, until: bytes) -> list[asyncio.StreamWriter]:
    """``count`` connections that sent ``request`` and read up to ``until`` (then stay open)."""
    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await reader.readuntil(until)
        return writer

    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 200):
        writers += await asyncio.gather(*(one() for _ in range(min(200, count - start))))
    return writers


async def per_connection(pid: int, port: int, count: int, request: bytes, until: bytes) -> float:
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    writers = await open_many(port, count, request, until)
    await asyncio.sleep(1.0)  # let allocations settle
    grown = rss_kib(pid) - before
    for writer in writers:
        writer.close()
    await asyncio.sleep(1.0)
    return grown / count


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.subscribers + 1000)), hard))
    with EtcdCluster(1) as etcd:
        settings = Settings(port=free_port(), etcd_endpoints=tuple(etcd.endpoints), prefix="/bench-idle/",
                            limits=Limits(max_connections=4 * args.subscribers),
                            watch=WatchTuning(progress_interval=60.0))
        results = []
        for request, until in ((HEALTH, b"\r\n\r\n"), (WATCH, b"event: reset")):
            async with running_server(settings) as (_url, pid):  # a fresh server each: freed memory is reused
                results.append(await per_connection(pid, settings.port, args.subscribers, request, until))
        base, ours = results
    print(f"server memory per idle connection, {args.subscribers} connections (RSS growth / count)")
    print(f"  keep-alive HTTP connection (baseline) {base:6.1f} KiB")
    print(f"  SSE subscriber (configcenter)         {ours:6.1f} KiB   ratio {ours / base:.2f}x")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    asyncio.run(main())
