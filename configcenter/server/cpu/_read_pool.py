"""The read lane's worker processes, from the server's side: start, hand out, retire, stop.

``ReadPool.submit(fn, *args)`` runs ``fn`` (a module-level function of a light module, e.g.
``_read_worker.route_headers``) in one of ``workers`` processes (``_read_worker.py``: a fresh
interpreter at ``nice 19``) and returns a task that ends when the worker has answered, whatever
happens to the request that asked (admission keeps the request's slot until then).

What crosses the boundary is bytes or small values: a body as it came off the socket; a document
as a ``Doc`` (its key and how to load its JSON), sent only when that worker does not hold it
already (``sent`` mirrors the worker's LRU of ``_read_worker.DOC_CACHE`` documents; a "miss" reply,
should the two ever disagree, clears both and sends again).  Replies are unpickled with an
allow-list (``_Replies``): the worker parses hostile input, so its answers are data to the server,
never code.

Failures become answers, never a hung request:

* a ``ConfigCenterError`` in the worker is raised here as the same class, message and details;
* a worker that dies (killed, crashed), breaks the protocol or outruns ``job_timeout`` is killed,
  its request gets ``WorkerUnavailableError`` (503, ``Retry-After``), and a fresh worker is started
  for the next job;
* a worker whose resident size passed ``max_rss`` after a job is retired (it exits at end-of-file)
  and replaced, so what a job leaves behind (allocator slack, cached documents) stays bounded; the
  address-space cap (``max_address_space``) turns one job's runaway allocation into a 503.

``close()`` kills every worker, running or idle, and reaps it: no process outlives the server
(nor its SIGKILL: the workers ask the kernel for ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from cachetools import LRUCache

from configcenter import errors

from ._read_worker import BOOT, DOC_CACHE, HEADER, MAX_FRAME, DocArg, frame

log = logging.getLogger("configcenter.read_worker")
T = TypeVar("T")
MB = 1 << 20


class WorkerUnavailableError(errors.ConfigCenterError):
    """The read worker died, crashed or overran its time on this request; a fresh one takes the next."""

    status = 503
    code = "worker_unavailable"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


@dataclass(frozen=True)
class PoolLimits:
    """``workers`` processes; a job may take ``job_timeout`` seconds; a worker is replaced once its
    RSS passes ``max_rss`` after a job; its address space is capped at ``max_address_space`` (0: no cap)."""

    workers: int = 1
    max_rss: int = 256 * MB
    job_timeout: float = 30.0
    max_address_space: int = 1024 * MB


class Doc:
    """A document argument: ``key`` names it in the workers' caches, ``load()`` gives its JSON bytes."""

    __slots__ = ("key", "load")

    def __init__(self, key: Hashable, load: Callable[[], Awaitable[bytes]]) -> None:
        self.key, self.load = key, load


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc, self.sock = proc, sock
        self.sent: LRUCache[Hashable, None] = LRUCache(maxsize=DOC_CACHE)  # what its LRU holds


class _Replies(pickle.Unpickler):
    """Unpickles a worker's reply: plain data, and the classes of ``configcenter.errors`` only."""

    def find_class(self, module: str, name: str) -> Any:
        found = getattr(errors, name, None) if module == errors.__name__ else None
        if isinstance(found, type) and issubclass(found, errors.ConfigCenterError):
            return found
        raise pickle.UnpicklingError(f"a read worker's reply may not name {module}.{name}")


class _Lost(Exception):
    """The worker cannot be trusted with another job (dead, timed out, garbled): kill and replace it."""


class ReadPool:
    def __init__(self, limits: PoolLimits) -> None:
        self.limits = limits
        self.restarts = 0  # workers replaced after a death, crash, timeout or the RSS limit
        self._workers: set[_Worker] = set()
        self._idle: list[_Worker] = []
        self._waiters: list[asyncio.Future[_Worker]] = []
        self._exiting: list[subprocess.Popen[bytes]] = []
        self._jobs: set[asyncio.Task[Any]] = set()
        self._closed = False

    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return sorted(w.proc.pid for w in self._workers)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Task[T]:
        """A task running ``fn(*args, **kwargs)`` in a worker; it ends only when the worker has answered."""
        job = asyncio.get_running_loop().create_task(self._call(fn, args, kwargs))
        self._jobs.add(job)
        job.add_done_callback(self._job_done)
        return job

    def _job_done(self, job: asyncio.Task[Any]) -> None:
        self._jobs.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved: the request may have gone, its slot is freed either way

    async def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        worker = await self._take()
        try:
            reply = await self._exchange(worker, await self._job(worker, fn, args, kwargs))
            if reply[0] == "miss":  # the two LRUs disagreed: both are empty now, send every document
                worker.sent.clear()
                reply = await self._exchange(worker, await self._job(worker, fn, args, kwargs))
        except _Lost as exc:
            self._retire(worker, kill=True, why=str(exc))
            raise WorkerUnavailableError("the read worker failed on this request; retry") from None
        except asyncio.CancelledError:  # only at shutdown; the worker may be mid-job: never reuse it
            self._retire(worker, kill=True, why="cancelled")
            raise
        except BaseException:  # a document's load failed (404, etcd down) before anything was sent
            self._give(worker)
            raise
        return self._answer(worker, reply)

    def _answer(self, worker: _Worker, reply: tuple[Any, ...]) -> Any:
        kind, *rest, rss = reply
        if kind == "crash":
            self._retire(worker, kill=True, why=f"it failed: {rest[0]}")
            raise WorkerUnavailableError("the read worker failed on this request; retry")
        if rss > self.limits.max_rss:
            self._retire(worker, kill=False, why=f"its RSS {rss // MB} MiB passed {self.limits.max_rss // MB} MiB")
        else:
            self._give(worker)
        if kind == "error":
            raise _rebuilt(*rest)
        return rest[0]

    async def _job(self, worker: _Worker, fn: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> bytes:
        """The job's frame payload: documents the worker holds by key, others with their JSON."""
        sent: list[Any] = []
        for arg in args:
            if not isinstance(arg, Doc):
                sent.append(arg)
            elif arg.key in worker.sent or any(isinstance(a, DocArg) and a.key == arg.key for a in sent):
                sent.append(DocArg(arg.key, None))
            else:
                sent.append(DocArg(arg.key, await arg.load()))
        payload = pickle.dumps((fn, sent, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        for arg in sent:  # the same operations, in the same order, as the worker's LRU will see
            if isinstance(arg, DocArg):
                if arg.data is None:
                    worker.sent.get(arg.key)
                else:
                    worker.sent[arg.key] = None
        return payload

    async def _exchange(self, worker: _Worker, payload: bytes) -> tuple[Any, ...]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.job_timeout):
                await loop.sock_sendall(worker.sock, frame(payload))
                size = HEADER.unpack(await _recv_exactly(loop, worker.sock, HEADER.size))[0]
                if size > MAX_FRAME:
                    raise _Lost(f"it sent a {size}-byte reply")
                reply = _Replies(io.BytesIO(await _recv_exactly(loop, worker.sock, size))).load()
        except TimeoutError:
            raise _Lost(f"a job ran past {self.limits.job_timeout:g}s") from None
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            raise _Lost(f"it {_exit_status(worker.proc)} ({type(exc).__name__})") from None
        if not isinstance(reply, tuple) or len(reply) < 3:
            raise _Lost("it sent a malformed reply")
        return reply

    # -- workers ------------------------------------------------------------------------------------

    async def _take(self) -> _Worker:
        if self._closed:
            raise WorkerUnavailableError("the server is stopping")
        while True:
            self._fill()
            if not self._idle:
                break
            worker = self._idle.pop()
            if worker.proc.poll() is None:
                return worker
            self._retire(worker, kill=False, why=f"it {_exit_status(worker.proc)} while idle")
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _give(self, worker: _Worker) -> None:
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def _fill(self) -> None:
        """Start workers up to ``limits.workers`` (at first use, and after one is retired)."""
        self._reap()
        while not self._closed and len(self._workers) < max(1, self.limits.workers):
            worker = self._spawn()
            self._workers.add(worker)
            self._give(worker)

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            argv = [sys.executable, "-c", BOOT, str(theirs.fileno()), str(os.getpid()),
                    str(self.limits.max_address_space), json.dumps(sys.path)]
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise WorkerUnavailableError(f"cannot start a read worker: {exc.strerror or exc}") from None
        finally:
            theirs.close()
        ours.setblocking(False)
        return _Worker(proc, ours)

    def _retire(self, worker: _Worker, *, kill: bool, why: str) -> None:
        """Stop using ``worker`` (killed, or left to exit at end-of-file) and start its replacement."""
        self._workers.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        if kill:
            with contextlib.suppress(OSError):
                worker.proc.kill()
        worker.sock.close()
        self._exiting.append(worker.proc)
        if not self._closed:
            self.restarts += 1
            log.warning("read worker pid %d replaced: %s", worker.proc.pid, why)
            self._fill()

    def _reap(self) -> None:
        self._exiting = [proc for proc in self._exiting if proc.poll() is None]

    async def close(self) -> None:
        """Kill every worker (a running job's request gets 503), wait for the jobs, reap the processes."""
        self._closed = True
        for worker in list(self._workers):
            with contextlib.suppress(OSError):
                worker.proc.kill()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(WorkerUnavailableError("the server is stopping"))
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=5)
        for worker in list(self._workers):
            self._retire(worker, kill=True, why="stopping")
        for proc in self._exiting:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self._reap()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = await loop.sock_recv_into(sock, view[got:])
        if n == 0:
            raise EOFError
        got += n
    return bytes(buf)


def _rebuilt(cls: type[errors.ConfigCenterError], args: tuple[Any, ...], state: dict[str, Any]
             ) -> errors.ConfigCenterError:
    """The worker's error as the same class, message, details (and e.g. ``retry_after``)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


def _exit_status(proc: subprocess.Popen[bytes]) -> str:
    try:
        code = proc.wait(0.1)  # it closed its end: dead or dying
    except subprocess.TimeoutExpired:
        code = None
    if code is None:
        return "stopped answering"
    return f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
