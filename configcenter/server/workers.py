"""``configcenter serve --workers N``: N server processes on one port, and the small supervisor over them.

Each worker is a whole server (``app.serve``): its own etcd connection, mirror, catch-up ring and
SSE hub, listening on the same address with ``SO_REUSEPORT`` so the kernel spreads new connections
over the workers.  Revisions are etcd's, so a subscriber that reconnects to another worker resumes
with its ``Last-Event-ID`` exactly as it would on another replica.  ``workers: 1`` (the default)
does not come here: one process, no supervisor.

The supervisor (this process):

* checks first that nothing listens on the address (a probe bind *without* ``SO_REUSEPORT``, which
  the kernel refuses while any socket holds the port), so "address in use" is one clear error and a
  second instance can never silently join the first one's port group; port 0 becomes a free port;
* starts the workers (``multiprocessing`` spawn; each gets the loaded ``Settings``, builds its own
  TLS context from ``settings.tls``) and learns from each when it listens;
* restarts a worker that dies, after a backoff that doubles while it keeps dying within
  ``healthy_after`` seconds of its start (logged with its exit status);
* gives up (``WorkersFailed``; the command exits non-zero, all workers stopped) when a worker
  reports a configuration or listen error, or dies ``max_start_failures`` times in a row before
  it ever listened;
* forwards SIGTERM/SIGINT to the workers, waits for them to stop cleanly (SIGKILL after
  ``stop_timeout``) and exits 0.  Workers die with the supervisor (``PR_SET_PDEATHSIG``).

Every response of a worker carries ``X-Configcenter-Worker: <index>/<pid>``, and its ``/metrics``
(only that worker's numbers) ends with ``configcenter_worker_info{worker,pid,workers} 1``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from aiohttp import web

from configcenter.errors import ConfigCenterError
from configcenter.server.settings import Settings

log = logging.getLogger("configcenter.workers")
WORKER_HEADER = "X-Configcenter-Worker"
EXIT_CONFIG = 2  # a worker's exit status for "bad configuration / cannot listen": retrying cannot help



@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is told besides the settings."""

    index: int
    parent: int  # the supervisor's pid
    log_level: int  # the supervisor's root logging level (workers log to stderr with their index and pid)


Target = Callable[[Settings, WorkerSpec, Connection], None]


class WorkersFailed(RuntimeError):
    """The workers cannot be kept running; ``code`` is the exit code for the command."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Policy:
    """When to restart, when to give up, how long a clean stop may take (seconds)."""

    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    healthy_after: float = 30.0  # a worker that ran this long restarts after backoff_initial again
    max_start_failures: int = 5  # consecutive deaths before listening, then give up
    stop_timeout: float = 10.0


# --------------------------------------------------------------------------- the worker side


def serve_worker(settings: Settings, spec: WorkerSpec, conn: Connection) -> None:
    """A worker process: the server on a shared port until SIGTERM/SIGINT (or the supervisor dies)."""
    import asyncio

    from configcenter.server.http import serve

    _die_with_parent(spec.parent)
    index = spec.index
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s worker-{index}[%(process)d] %(name)s: %(message)s")

    async def listening(_runtime: Any) -> None:
        conn.send(("listening", os.getpid()))

    try:
        asyncio.run(serve(settings, reuse_port=True, on_ready=listening,
                          configure=lambda app: label_worker(app, index, settings.workers)))
    except KeyboardInterrupt:
        pass
    except ConfigCenterError as exc:
        _fail(conn, exc.message)
    except OSError as exc:
        _fail(conn, f"cannot listen on {settings.listen}: {exc.strerror or exc}")


def _fail(conn: Connection, message: str) -> None:
    conn.send(("error", message))
    sys.exit(EXIT_CONFIG)


def _die_with_parent(parent: int) -> None:
    """Ask Linux for SIGTERM when the supervisor dies; exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: workers outlive a SIGKILLed supervisor
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(0)


def label_worker(app: web.Application, index: int, workers: int) -> None:
    """``X-Configcenter-Worker: <index>/<pid>`` on every response; ``configcenter_worker_info`` in ``/metrics``."""
    pid = os.getpid()
    label = f"{index}/{pid}"
    info = ("# HELP configcenter_worker_info the worker of `serve --workers N` that answered "
            "(its metrics are its own, not the sum of the workers)\n# TYPE configcenter_worker_info gauge\n"
            f'configcenter_worker_info{{worker="{index}",pid="{pid}",workers="{workers}"}} 1\n')

    async def add_header(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers[WORKER_HEADER] = label

    @web.middleware
    async def worker_metrics(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if request.path == "/metrics" and isinstance(response, web.Response) and response.text is not None:
            response.text = response.text + info
        return response

    app.on_response_prepare.append(add_header)
    app.middlewares.append(worker_metrics)


# --------------------------------------------------------------------------- the supervisor


def claim_port(settings: Settings) -> Settings:
    """``OSError`` if something listens on the address already; port 0 becomes a concrete free port."""
    infos = socket.getaddrinfo(settings.host or None, settings.port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    port = settings.port
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address[0], port, *address[2:]))
            port = probe.getsockname()[1]
    return replace(settings, port=port)


@dataclass
class _Slot:
    index: int
    process: Any = None
    conn: Connection | None = None
    started: float = 0.0
    listening: bool = False
    error: str | None = None
    start_failures: int = 0
    backoff: float = 0.0
    restart_at: float | None = None


def run_workers(settings: Settings, *, policy: Policy | None = None, target: Target | None = None) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; 0 after a clean stop.

    ``OSError`` if the address is taken; ``WorkersFailed`` if the workers cannot be kept running.
    ``target`` (default ``serve_worker``) is the worker's entry point.
    """
    settings = claim_port(settings)
    return _Supervisor(settings, policy or Policy(), target or serve_worker).run()


class _Supervisor:
    def __init__(self, settings: Settings, policy: Policy, target: Target) -> None:
        self.settings = settings
        self.policy = policy
        self.target = target
        self.slots = [_Slot(i) for i in range(settings.workers)]
        self.stopping: int | None = None
        self.failure: WorkersFailed | None = None
        self._ctx = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = socket.socketpair()

    def run(self) -> int:
        previous = self._install_signals()
        try:
            log.info("starting %d workers on %s (SO_REUSEPORT)", len(self.slots), self.settings.listen)
            for slot in self.slots:
                self._start(slot)
            while self.stopping is None and self.failure is None:
                self._wait()
                self._tend(time.monotonic())
        finally:
            self._stop_all()
            self._restore_signals(previous)
        if self.failure is not None:
            raise self.failure
        log.info("stopped (signal %d): every worker exited", self.stopping or 0)
        return 0

    # -- signals ------------------------------------------------------------
    def _install_signals(self) -> dict[int, Any]:
        self._wake_w.setblocking(False)
        previous: dict[int, Any] = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[-1] = signal.set_wakeup_fd(self._wake_w.fileno())
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        signal.set_wakeup_fd(previous.pop(-1))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        self._wake_r.close()
        self._wake_w.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signum

    # -- the loop -----------------------------------------------------------
    def _wait(self) -> None:
        now = time.monotonic()
        due = [s.restart_at - now for s in self.slots if s.restart_at is not None]
        timeout = max(0.0, min(due, default=1.0))
        waitables: list[Any] = [self._wake_r]
        for slot in self.slots:
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
                if slot.conn is not None:
                    waitables.append(slot.conn)
        wait(waitables, timeout)
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096, socket.MSG_DONTWAIT)

    def _tend(self, now: float) -> None:
        for slot in self.slots:
            self._read_messages(slot)
            if slot.process is not None and slot.process.exitcode is not None:
                self._died(slot, now)
            if slot.restart_at is not None and now >= slot.restart_at and self.failure is None:
                self._start(slot)

    def _read_messages(self, slot: _Slot) -> None:
        conn = slot.conn
        try:
            while conn is not None and conn.poll():
                kind, value = conn.recv()
                if kind == "listening":
                    slot.listening, slot.start_failures = True, 0
                    log.info("worker %d (pid %d) listening on %s", slot.index, value, self.settings.listen)
                else:
                    slot.error = str(value)
        except (EOFError, OSError):
            slot.conn = None
            if conn is not None:
                conn.close()

    def _start(self, slot: _Slot) -> None:
        ours, theirs = self._ctx.Pipe(duplex=False)
        spec = WorkerSpec(slot.index, os.getpid(), logging.getLogger().getEffectiveLevel())
        process = self._ctx.Process(target=self.target, args=(self.settings, spec, theirs),
                                    name=f"configcenter-worker-{slot.index}", daemon=False)
        process.start()
        theirs.close()
        slot.process, slot.conn, slot.started = process, ours, time.monotonic()
        slot.listening, slot.error, slot.restart_at = False, None, None

    def _died(self, slot: _Slot, now: float) -> None:
        process, slot.process = slot.process, None
        self._read_messages(slot)
        if slot.conn is not None:
            slot.conn.close()
            slot.conn = None
        status = _describe(process.exitcode)
        if self.stopping is not None:
            return
        if slot.error is not None and process.exitcode == EXIT_CONFIG:
            self.failure = WorkersFailed(f"worker {slot.index}: {slot.error}", EXIT_CONFIG)
            return
        if not slot.listening:
            slot.start_failures += 1
            if slot.start_failures >= self.policy.max_start_failures:
                self.failure = WorkersFailed(
                    f"worker {slot.index} died {slot.start_failures} times in a row before listening "
                    f"(last: {status}); see its log above", 1)
                return
        healthy = now - slot.started >= self.policy.healthy_after
        slot.backoff = self.policy.backoff_initial if healthy or not slot.backoff else min(
            self.policy.backoff_max, slot.backoff * 2)
        slot.restart_at = now + slot.backoff
        log.warning("worker %d (pid %d) %s after %.1fs; restarting it in %.1fs", slot.index, process.pid, status,
                    now - slot.started, slot.backoff)

    def _stop_all(self) -> None:
        running = [s.process for s in self.slots if s.process is not None and s.process.exitcode is None]
        for process in running:
            process.terminate()  # SIGTERM: the worker's serve() stops cleanly
        deadline = time.monotonic() + self.policy.stop_timeout
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.warning("worker pid %d did not stop within %.0fs: SIGKILL", process.pid, self.policy.stop_timeout)
                process.kill()
                process.join(5)
        for slot in self.slots:
            if slot.conn is not None:
                slot.conn.close()
            slot.process, slot.conn = None, None


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with status {exitcode}"
