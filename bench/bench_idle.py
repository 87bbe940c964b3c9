"""Server memory per idle SSE subscriber, against an idle keep-alive HTTP connection, same run.

Real path: ``configcenter serve`` (its own process, embedded etcd) and N raw client sockets in
this process (plain asyncio streams: the client side costs little).  Measured: the server's
RSS (``/proc/<pid>/status`` VmRSS) before and after N connections, per connection, for

* baseline: N keep-alive connections that made one ``GET /healthz`` and stay open (what
  aiohttp itself costs per connection: transport, protocol, parser, buffers);
* configcenter: N ``GET /v1/watch?ns=...`` streams that received their ``reset`` and idle.

``--tls`` also runs both over the server's own TLS listener (``tls.cert_file``, a throw-away CA
from ``trustme``) and prints the TLS subscriber's cost beside the plain one, with the ratio
(issue 16: within 2x).  Each measurement gets a fresh server (freed memory is reused otherwise).

    python bench/bench_idle.py [--subscribers 5000] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.server.settings import Limits, ServerTLS, Settings, WatchTuning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fanout import serve  # the server as `configcenter serve` runs it

WATCH = b"GET /v1/watch?ns=idle/ HTTP/1.1\r\nHost: b\r\nAccept: text/event-stream\r\n\r\n"
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n"
READY = b"GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@asynccontextmanager
async def running_server(settings: Settings, client_ssl: ssl.SSLContext | None) -> AsyncIterator[int]:
    """``configcenter serve`` in a separate process (HTTPS with ``settings.tls``); yields its pid once ready."""
    proc = multiprocessing.get_context("spawn").Process(target=serve, args=(settings,), daemon=False)
    proc.start()
    try:
        for _ in range(600):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", settings.port, ssl=client_ssl)
                writer.write(READY)
                answer = await reader.read()
                writer.close()
                if answer.startswith(b"HTTP/1.1 200"):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("server did not become ready")
        yield proc.pid or 0
    finally:
        proc.terminate()
        proc.join(20)


async def open_many(port: int, count: int, request: bytes, until: bytes,
                    client_ssl: ssl.SSLContext | None) -> list[asyncio.StreamWriter]:
    """``count`` connections that sent ``request`` and read up to ``until`` (then stay open)."""
    async def one() -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
        writer.write(request)
        await reader.readuntil(until)
        return writer

    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 200):
        writers += await asyncio.gather(*(one() for _ in range(min(200, count - start))))
    return writers


async def per_connection(pid: int, port: int, count: int, request: bytes, until: bytes,
                         client_ssl: ssl.SSLContext | None) -> float:
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    writers = await open_many(port, count, request, until, client_ssl)
    await asyncio.sleep(1.0)  # let allocations settle
    grown = rss_kib(pid) - before
    for writer in writers:
        writer.close()
    await asyncio.sleep(1.0)
    return grown / count


def make_tls(directory: Path) -> tuple[ServerTLS, ssl.SSLContext]:
    """A throw-away CA (``directory/ca.pem``) and a server certificate for 127.0.0.1: the server's
    ``tls`` and a client context trusting that CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return ServerTLS(str(directory / "cert.pem"), str(directory / "key.pem")), client


async def measure(settings: Settings, count: int, client_ssl: ssl.SSLContext | None) -> tuple[float, float]:
    """(keep-alive baseline, SSE subscriber) KiB per connection, each on a fresh server."""
    results = []
    for request, until in ((HEALTH, b"\r\n\r\n"), (WATCH, b"event: reset")):
        settings = replace(settings, port=free_port())
        async with running_server(settings, client_ssl) as pid:
            results.append(await per_connection(pid, settings.port, count, request, until, client_ssl))
    return results[0], results[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--tls", action="store_true", help="also over the server's own TLS listener")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * args.subscribers + 1000)), hard))
    with EtcdCluster(1) as etcd, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(etcd_endpoints=tuple(etcd.endpoints), prefix="/bench-idle/",
                            limits=Limits(max_connections=4 * args.subscribers,  # every client is 127.0.0.1:
                                          max_streams_per_address=4 * args.subscribers),
                            watch=WatchTuning(progress_interval=60.0))
        base, ours = await measure(settings, args.subscribers, None)
        if args.tls:
            server_tls, client_ssl = make_tls(Path(tmp))
            tls_base, tls_ours = await measure(replace(settings, tls=server_tls), args.subscribers, client_ssl)
    print(f"server memory per idle connection, {args.subscribers} connections (RSS growth / count)")
    print(f"  keep-alive HTTP connection (baseline) {base:6.1f} KiB")
    print(f"  SSE subscriber (configcenter)         {ours:6.1f} KiB   ratio {ours / base:.2f}x")
    if args.tls:
        print(f"  keep-alive HTTPS connection           {tls_base:6.1f} KiB")
        print(f"  SSE subscriber over TLS               {tls_ours:6.1f} KiB   "
              f"TLS / plain subscriber {tls_ours / ours:.2f}x")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    asyncio.run(main())
