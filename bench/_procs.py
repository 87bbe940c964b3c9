"""Client processes for the benchmarks: ``total`` clients split over ``procs`` spawned processes,
one pipe to each (spawned, so no event loop or socket of the parent is inherited)."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any


class ClientProcesses:
    """Process i runs ``target(*args_of(first, count, pipe))``: its ``count`` clients are numbered
    from ``first`` (unique across processes)."""

    def __init__(self, target: Callable[..., None], total: int, procs: int,
                 args_of: Callable[[int, int, Connection], tuple[Any, ...]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        first = 0
        for i in range(procs):
            count = total // procs + (1 if i < total % procs else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=target, args=args_of(first, count, theirs), daemon=True)
            proc.start()
            first += count
            self.pipes.append(ours)
            self.procs.append(proc)

    def send_all(self, message: Any) -> None:
        for pipe in self.pipes:
            pipe.send(message)

    async def recv_all(self, timeout: float) -> list[Any]:
        """One message from each process, in process order."""
        return [await asyncio.wait_for(asyncio.to_thread(pipe.recv), timeout) for pipe in self.pipes]

    async def ready(self, timeout: float) -> None:
        """Every process said "ready" (anything else is its error)."""
        for answer in await self.recv_all(timeout):
            if answer != "ready":
                raise RuntimeError(f"a client process failed: {answer}")

    async def results(self, join_timeout: float) -> dict[int, list[float]]:
        """Send "stop"; merge what each answers ({revision: [seconds, ...]}); reap the processes."""
        self.send_all("stop")
        merged: dict[int, list[float]] = {}
        for answer in await self.recv_all(600):
            for revision, times in answer.items():
                merged.setdefault(revision, []).extend(times)
        self.join(join_timeout)
        return merged

    def join(self, timeout: float) -> None:
        for proc in self.procs:
            proc.join(timeout)
