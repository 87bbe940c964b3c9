"""Admission of CPU-heavy request work, per class: writes never queue behind reads.

Parsing, validating, diffing and compiling run on worker threads so the event loop keeps
serving streams.  With one shared pool, anonymous ``POST …/route`` bodies of 1 MiB YAML or
diffs of large documents queued every push behind them.  Now each class has its own lane:

* ``write``: pushes, rollbacks, schema writes (callers already authorized as writers/admins):
  ``limits.cpu_workers`` threads, ``limits.write_queue`` waiting jobs;
* ``read``: route evaluation bodies and table compiles, diffs (anonymous callers reach these):
  ``limits.read_cpu_workers`` threads, ``limits.read_queue`` waiting jobs.

A request takes a slot of its lane (``slot()``) before it reads its body or fetches the
documents it diffs; with none free (``threads + queue`` taken) it is refused at once with
``TooManyRequestsError`` (429, ``Retry-After``), nothing read or written.  A slot is freed when
the request is done and its jobs have ended on their threads (a cancelled request does not free
it early), so at most ``threads + queue`` requests of a class hold bodies, documents or threads
at any time: their memory is bounded by that many request budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from ..errors import TooManyRequestsError

T = TypeVar("T")
Lane = Literal["read", "write"]
RETRY_AFTER_SECONDS = 1
# The lanes are threads of one process, so they share the GIL with the event loop.  At CPython's
# default 5 ms switch interval a busy read thread makes the loop wait up to 5 ms at every one of the
# dozens of GIL re-acquisitions a push needs (one per socket read or write): pushes took 200 ms
# during a /route flood.  0.5 ms hands the GIL back ten times sooner (p50 21 ms in the same run).
SWITCH_INTERVAL = 0.0005


class _Lane:
    def __init__(self, name: str, threads: int, queue: int) -> None:
        self.name = name
        self.threads, self.queue = max(1, threads), max(0, queue)
        self.capacity = self.threads + self.queue
        self.pending = 0  # requests holding a slot (waiting, running, or a job still running after them)
        self.refused = 0
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix=f"configcenter-cpu-{name}")

    def full(self) -> bool:
        return self.pending >= self.capacity

    def refuse(self) -> TooManyRequestsError:
        self.refused += 1
        return TooManyRequestsError(
            f"too many {self.name} requests in progress ({self.threads} running, {self.queue} waiting): retry later",
            retry_after=RETRY_AFTER_SECONDS, lane=self.name)

    def reserve(self) -> _Slot:
        if self.full():
            raise self.refuse()
        self.pending += 1
        return _Slot(self)


class _Slot:
    """One request's place in a lane: freed when the request is done *and* its jobs have ended."""

    def __init__(self, lane: _Lane) -> None:
        self.lane, self.holders = lane, 1

    async def run(self, fn: Callable[[], T]) -> T:
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
    """The two lanes; ``run(lane, fn, *args)`` runs ``fn`` on that lane's threads or raises 429."""

    def __init__(self, write_threads: int, write_queue: int, read_threads: int, read_queue: int) -> None:
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._lanes = {"write": _Lane("write", write_threads, write_queue),
                       "read": _Lane("read", read_threads, read_queue)}

    def full(self, lane: Lane) -> bool:
        """Whether a request of ``lane`` would be refused now."""
        return self._lanes[lane].full()

    @contextlib.asynccontextmanager
    async def slot(self, lane: Lane) -> AsyncIterator[_Slot]:
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
        """``fn(*args, **kwargs)`` on ``lane``'s threads in a slot of its own (429 if there is none)."""
        async with self.slot(lane) as slot:
            return await slot.run(functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        for lane in self._lanes.values():
            lane.executor.shutdown(wait=False, cancel_futures=True)
