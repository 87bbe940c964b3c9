"""Admission of CPU-heavy request work, per class: writes never queue behind reads.

Parsing, validating, diffing and compiling never run on the event loop that serves streams.
With one shared pool, anonymous ``POST …/route`` bodies of 1 MiB YAML or diffs of large
documents queued every push behind them.  Now each class has its own lane:

* ``write``: pushes, rollbacks, schema writes (callers already authorized as writers/admins):
  ``limits.cpu_workers`` threads of the server process, ``limits.write_queue`` waiting jobs;
* ``read``: route-evaluation bodies and diffs (anonymous callers reach these):
  ``limits.read_cpu_workers`` worker *processes* at ``nice 19`` (``_read_pool.py``,
  ``_read_worker.py``), ``limits.read_queue`` waiting jobs.  Threads of the server would share
  its GIL and CPU with the event loop: with the read lane on a thread, push p99 was 3-16x idle
  during the attacks of ``bench/bench_hostile.py``.  The lane also has one thread for compiling a
  stored route table (the result must live in the server; once per revision, caused by a write).

Why writes stay on threads: only authorized writers reach them, so they compete with each other
and with streams, not with anonymous callers; and a write needs its parsed document back in
the server (to check and store it), so a process would pickle back as much as it parsed.

A request takes a slot of its lane (``slot()``) before it reads its body or fetches the
documents it diffs; with none free (``workers + queue`` taken) it is refused at once with
``TooManyRequestsError`` (429, ``Retry-After``), nothing read or written.  A slot is freed when
the request is done and its jobs have ended in their thread or process (a cancelled request does
not free it early), so at most ``workers + queue`` requests of a class hold bodies, documents or
workers at any time: their memory is bounded by that many request budgets (and each worker
process's by ``_read_pool.PoolLimits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from configcenter.errors import TooManyRequestsError

from ._read_pool import PoolLimits, ReadPool

T = TypeVar("T")
Lane = Literal["read", "write"]
RETRY_AFTER_SECONDS = 1
# Threads of the server share the GIL with the event loop: the write lane's, and the read lane's
# compile thread.  At CPython's default 5 ms switch interval a busy thread makes the loop wait up to
# 5 ms at every one of the dozens of GIL re-acquisitions a push needs (one per socket read or write):
# pushes took 200 ms during a /route flood when reads were threads.  0.5 ms hands the GIL back ten
# times sooner; it still matters for 1 MB YAML pushes (a writer's thread) beside the streams.
SWITCH_INTERVAL = 0.0005


class _Lane:
    def __init__(self, name: str, workers: int, queue: int, pool: ReadPool | None = None) -> None:
        self.name = name
        self.workers, self.queue = max(1, workers), max(0, queue)
        self.capacity = self.workers + self.queue
        self.pending = 0  # requests holding a slot (waiting, running, or a job still running after them)
        self.refused = 0
        self.pool = pool  # the read lane's processes; None: jobs run on ``executor``'s threads
        threads = 1 if pool is not None else self.workers  # with processes: one thread for route compiles
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix=f"configcenter-cpu-{name}")

    def full(self) -> bool:
        return self.pending >= self.capacity

    def refuse(self) -> TooManyRequestsError:
        self.refused += 1
        kind = "processes" if self.pool is not None else "threads"
        return TooManyRequestsError(
            f"too many {self.name} requests in progress ({self.workers} {kind} busy, {self.queue} waiting): "
            "retry later", retry_after=RETRY_AFTER_SECONDS, lane=self.name)

    def reserve(self) -> Slot:
        if self.full():
            raise self.refuse()
        self.pending += 1
        return Slot(self)


class Slot:
    """One request's place in a lane: freed when the request is done *and* its jobs have ended."""

    def __init__(self, lane: _Lane) -> None:
        self.lane, self.holders = lane, 1

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the lane's worker processes (the read lane: ``fn`` must be a
        module-level function of a light module, arguments bytes, small values or ``_read_pool.Doc``),
        else on its threads."""
        if self.lane.pool is None:
            return await self.run_thread(functools.partial(fn, *args, **kwargs))
        self.holders += 1
        job = self.lane.pool.submit(fn, *args, **kwargs)
        job.add_done_callback(lambda _job: self.release())
        return await asyncio.shield(job)

    async def run_thread(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the lane's threads (the read lane: its one compile thread)."""
        loop = asyncio.get_running_loop()
        self.holders += 1
        job: Future[T] = self.lane.executor.submit(fn)
        job.add_done_callback(functools.partial(self._job_done, loop))
        return await asyncio.wrap_future(job)

    def _job_done(self, loop: asyncio.AbstractEventLoop, _job: Future[Any]) -> None:
        """On the job's thread: release on the loop (which may be closed at shutdown)."""
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.release)

    def release(self) -> None:
        self.holders -= 1
        if self.holders == 0:
            self.lane.pending -= 1


class Admission:
    """The two lanes; ``run(lane, fn, *args)`` runs ``fn`` in that lane or raises 429."""

    def __init__(self, write_threads: int, write_queue: int, read_workers: int, read_queue: int,
                 *, read_pool: PoolLimits | None = None) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.read_pool = ReadPool(read_pool or PoolLimits(workers=read_workers))
        self._lanes = {"write": _Lane("write", write_threads, write_queue),
                       "read": _Lane("read", self.read_pool.limits.workers, read_queue, self.read_pool)}

    def full(self, lane: Lane) -> bool:
        """Whether a request of ``lane`` would be refused now."""
        return self._lanes[lane].full()

    @contextlib.asynccontextmanager
    async def slot(self, lane: Lane) -> AsyncIterator[Slot]:
        """Hold a place in ``lane`` for a whole request (429 now if there is none): take it before
        reading a body or fetching documents, so their memory is bounded by the lane's capacity."""
        slot = self._lanes[lane].reserve()
        try:
            yield slot
        finally:
            slot.release()

    def pending(self, lane: Lane) -> int:
        return self._lanes[lane].pending

    def refused(self, lane: Lane) -> int:
        return self._lanes[lane].refused

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in ``lane`` (``Slot.run``) in a slot of its own (429 if there is none)."""
        async with self.slot(lane) as slot:
            return await slot.run(fn, *args, **kwargs)

    async def run_thread(self, lane: Lane, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on ``lane``'s threads in a slot of its own (429 if there is none)."""
        async with self.slot(lane) as slot:
            return await slot.run_thread(functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Stop the threads (queued jobs are dropped) and kill the read workers (no orphans)."""
        for lane in self._lanes.values():
            lane.executor.shutdown(wait=False, cancel_futures=True)
        await self.read_pool.close()
