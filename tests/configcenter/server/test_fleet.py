"""The fleet shape: replicas of ``configcenter serve --workers 2`` on one etcd behind a load balancer,
an SDK that knows only the balancer's URL (see ``docs/capacity.md``)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from helpers import eventually
from serve_helpers import Served, every_worker_ready, push, start, write_config

pytestmark = pytest.mark.slow


class Balancer:
    """A minimal L4 load balancer: each connection goes to the next backend (round robin) that accepts it."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.turn = 0
        self.handlers: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        for _ in self.ports:
            self.turn += 1
            port = self.ports[self.turn % len(self.ports)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.handlers.discard(task)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


async def start_replica(directory: Path, etcd: EtcdCluster, port: int, prefix: str) -> Served:
    directory.mkdir()
    proc = start(directory, "--config", str(write_config(directory, etcd, port, prefix=prefix)))
    replica = Served(proc, f"http://127.0.0.1:{port}", directory / "serve.log")
    await every_worker_ready(replica, 2)
    return replica


def kill_replica(replica: Served) -> None:
    """SIGKILL the supervisor and every process it started: the host died."""
    pid = replica.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for victim in (pid, *map(int, children)):
        os.kill(victim, signal.SIGKILL)
    replica.proc.wait()


async def test_fleet_of_replicas_behind_a_load_balancer(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Two replicas of ``serve --workers 2`` on one etcd prefix behind an L4 balancer, an SDK given only
    the balancer's URL.  Each replica in turn dies outright and comes back: the SDK follows without
    loss, duplicate or gap."""
    from configcenter_sdk import ConfigClient

    prefix, ports = f"/cc-fleet/{uuid.uuid4().hex[:12]}/", [free_port(), free_port()]
    replicas = [await start_replica(tmp_path / f"r{i}", etcd, port, prefix) for i, port in enumerate(ports)]
    balancer = Balancer(ports)
    front = Served(replicas[0].proc, await balancer.start(), replicas[0].log)
    seen: list[int] = []
    client = ConfigClient([front.url], ["f/"], backoff_initial=0.05, backoff_max=0.2)
    client.on_change("f/", lambda _ns, _doc, revision: seen.append(revision))
    try:
        async with client:
            pushed = [await push(front, "f/a", 0)]
            await eventually(lambda: seen == pushed)
            for i in (0, 1):  # the SDK's stream is on one of them: it is cut once at least
                kill_replica(replicas[i])
                pushed += [await push(front, "f/a", n) for n in (1, 2)]
                await eventually(lambda pushed=pushed: seen == pushed, timeout=15)
                replicas[i] = await start_replica(tmp_path / f"r{i}-again", etcd, ports[i], prefix)
            status = client.status()
            assert status.reconnects >= 1 and status.gaps == 0 and status.duplicates == 0
    finally:
        await balancer.close()
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait()
