"""A TCP relay between one replica and etcd that a test can cut: only that replica loses etcd.

``Relay(targets)`` listens on a loopback port per target (``endpoints``: what the replica is
configured with) and forwards each connection to its target.  ``cut()`` resets every open
connection and resets new ones at once (the port stays bound, so the replica's gRPC channel keeps
trying the same address); ``restore()`` forwards again.  Everything runs on the caller's event
loop; ``close()`` stops it (idempotent).  Bounded: one 64 KiB read per direction in flight per
connection (the writer drains before the next read).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_CHUNK = 65536


class Relay:
    """See the module docstring."""

    def __init__(self, targets: list[str], ports: list[int] | None = None) -> None:
        self.targets = targets  # "host:port" of each etcd member
        self.ports = ports or [0] * len(targets)  # 0: any free port (``endpoints`` says which, once started)
        self.endpoints = [f"127.0.0.1:{port}" for port in self.ports]
        self.cuts = 0
        self._open = True
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_cut(self) -> bool:
        return not self._open

    async def start(self) -> Relay:
        for i, target in enumerate(self.targets):
            host, _, port = target.rpartition(":")
            server = await asyncio.start_server(
                lambda r, w, h=host, p=int(port): self._accept(r, w, h, p), "127.0.0.1", self.ports[i])
            self._servers.append(server)
            self.endpoints[i] = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return self

    def cut(self) -> None:
        """Reset every connection through the relay, and every new one until ``restore()``."""
        self._open = False
        self.cuts += 1
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    def restore(self) -> None:
        self._open = True

    async def close(self) -> None:
        tasks = self.shutdown()
        await asyncio.gather(*tasks, return_exceptions=True)

    def shutdown(self) -> list[asyncio.Task[None]]:
        """Stop listening and reset every connection without awaiting (e.g. from ``atexit``); the
        cancelled connection tasks are returned."""
        self.cut()
        for server in self._servers:
            server.close()
        self._servers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        if not self._open:
            _abort(writer)
            return
        task = asyncio.ensure_future(self._serve(reader, writer, host, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            _abort(writer)
            self._writers.discard(writer)
            return
        if not self._open:  # cut while connecting
            _abort(writer)
            _abort(up_writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                _abort(w)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a dropped network path looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
