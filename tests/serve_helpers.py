"""Running ``configcenter serve`` as a real subprocess for the worker and fleet tests."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import ssl
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.workers import WORKER_HEADER
from helpers import WRITER, envelope, eventually


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    ssl: ssl.SSLContext | bool = True

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def session(self, **connector: Any) -> aiohttp.ClientSession:
        """A session on one connection (kept alive), or a new connection per request with ``force_close``."""
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1, ssl=self.ssl, **connector),
                                     timeout=aiohttp.ClientTimeout(total=20))

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.proc.wait, 20)


def write_config(tmp_path: Path, etcd: EtcdCluster, port: int, workers: int = 2, prefix: str | None = None) -> Path:
    digest = hashlib.sha256(WRITER.encode()).hexdigest()
    path = tmp_path / "server.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{port}\nworkers: {workers}\n"
        f"etcd: {{endpoints: [{etcd.endpoints[0]}], prefix: {prefix or f'/cc-workers/{uuid.uuid4().hex[:12]}/'}}}\n"
        f"auth: {{tokens: [{{name: w, token_sha256: '{digest}', role: admin}}]}}\n"
        "limits: {history_ring: 1000}\nwatch: {progress_interval: 0.5, backoff_initial: 0.05, backoff_max: 0.5}\n")
    return path


def start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / "serve.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "configcenter", "serve", *args], stdout=log,
                            stderr=subprocess.STDOUT)



async def answer(server: Served, path: str = "/readyz") -> tuple[str, int]:
    """(worker label, status) of ``path`` on a fresh connection; ('', 0) if the connection failed."""
    try:
        async with server.session(force_close=True) as http, http.get(server.url + path) as resp:
            return resp.headers.get(WORKER_HEADER, ""), resp.status
    except aiohttp.ClientError:
        return "", 0


async def every_worker_ready(server: Served, count: int, timeout: float = 30) -> set[str]:
    """Poll on fresh connections until ``count`` distinct workers answered /readyz with 200."""
    seen: set[str] = set()

    async def check() -> bool:
        assert server.proc.poll() is None, server.log_text()
        label, status = await answer(server)
        if status == 200:
            seen.add(label)
        return len(seen) >= count

    await eventually(check, timeout=timeout, interval=0.01)
    return seen



async def push(server: Served, ns: str, value: int) -> int:
    """Push through any worker (fresh connection, retried while a killed worker's connections fail)."""
    for _ in range(50):
        try:
            async with server.session(force_close=True) as http, http.put(
                    f"{server.url}/v1/namespaces/{ns}", json=envelope({"v": value}),
                    headers={"Authorization": f"Bearer {WRITER}"}) as resp:
                assert resp.status in (200, 201), await resp.text()
                return int((await resp.json())["revision"])
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    raise AssertionError("push failed 50 times")
