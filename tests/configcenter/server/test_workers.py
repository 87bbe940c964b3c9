"""``configcenter serve --workers N``: a real supervisor process, real workers on one port, real etcd.

Which worker answers a connection is the kernel's choice (SO_REUSEPORT hashes the 4-tuple), so the
tests open fresh connections until they reach the worker they need and check the
``X-Configcenter-Worker: <index>/<pid>`` header of the response that mattered.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.errors import ConfigError
from configcenter.server.settings import Settings, load_settings
from configcenter.server.workers import WORKER_HEADER, Policy, WorkersFailed, run_workers
from helpers import WRITER, SSEStream, envelope, eventually
from serve_helpers import Served, answer, every_worker_ready, push, start, write_config

pytestmark = pytest.mark.slow


@pytest.fixture
async def served(etcd: EtcdCluster, tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    proc = start(tmp_path, "--config", str(write_config(tmp_path, etcd, port)))
    server = Served(proc, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
    try:
        await every_worker_ready(server, 2)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def session_on(server: Served, wanted: Callable[[str], bool]) -> tuple[aiohttp.ClientSession, str]:
    """A one-connection session whose (kept-alive) connection reached a worker ``wanted`` accepts."""
    for _ in range(200):
        http = server.session()
        async with http.get(server.url + "/healthz") as resp:
            label = resp.headers[WORKER_HEADER]
        if wanted(label):
            return http, label
        await http.close()
    raise AssertionError("no connection reached the wanted worker in 200 tries")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_workers_share_the_port_and_changes_cross_workers(served: Served) -> None:
    labels = await every_worker_ready(served, 2)
    assert {label.split("/")[0] for label in labels} == {"0", "1"}
    pids = {int(label.split("/")[1]) for label in labels}
    assert len(pids) == 2 and served.proc.pid not in pids

    watcher, sub_worker = await session_on(served, lambda _label: True)
    writer, write_worker = await session_on(served, lambda label: label != sub_worker)
    async with watcher, writer, watcher.get(served.url + "/v1/watch", params={"ns": "x/"}) as stream_resp:
        assert stream_resp.headers[WORKER_HEADER] == sub_worker
        stream = SSEStream(stream_resp)
        assert (await stream.next()).event == "reset"
        async with writer.put(served.url + "/v1/namespaces/x/a", json=envelope({"v": 1}),
                              headers={"Authorization": f"Bearer {WRITER}"}) as put:
            assert put.status == 201 and put.headers[WORKER_HEADER] == write_worker
            revision = (await put.json())["revision"]
        (change,) = await stream.changes(1)
        assert change.id == revision and change.data["ns"] == "x/a"
        async with writer.get(served.url + "/metrics") as metrics:
            pid = write_worker.split("/")[1]
            assert f'configcenter_worker_info{{worker="{write_worker[0]}",pid="{pid}",workers="2"}} 1' in (
                await metrics.text())
        # SIGTERM with a live SSE stream: everything stops, exit 0
        assert await served.stop() == 0
    assert all(gone(pid) for pid in pids)
    with socket.create_server(("127.0.0.1", int(served.url.rsplit(":", 1)[1]))):
        pass  # the port is free again
    assert "Traceback" not in served.log_text()


async def test_killed_worker_is_restarted_and_subscribers_resume_without_loss(served: Served) -> None:
    first = await push(served, "k/a", 0)
    watcher, victim = await session_on(served, lambda _label: True)
    async with watcher, watcher.get(served.url + "/v1/watch", params={"ns": "k/", "since": str(first - 1)}) as resp:
        stream = SSEStream(resp)
        (seen,) = await stream.changes(1)
        assert seen.id == first
        os.kill(int(victim.split("/")[1]), signal.SIGKILL)
        with pytest.raises((ConnectionError, aiohttp.ClientError)):
            await stream.changes(1, timeout=10)
    pushed = [await push(served, "k/a", i) for i in range(1, 4)]
    index = victim.split("/")[0]
    restarted = await eventually(lambda: restarted_label(served, index, victim), timeout=30)
    assert "worker " + index in served.log_text() and "SIGKILL" in served.log_text()
    for wanted in (lambda label: label == restarted, lambda label: label != restarted):
        resumer, worker = await session_on(served, wanted)
        async with resumer, resumer.get(served.url + "/v1/watch", params={"ns": "k/"},
                                        headers={"Last-Event-ID": seen.raw_id or ""}) as resp:
            assert resp.headers[WORKER_HEADER] == worker
            stream = SSEStream(resp)
            assert [c.id for c in await stream.changes(len(pushed))] == pushed  # no loss, no duplicate, in order
            later = await push(served, "k/a", 99)
            assert [c.id for c in await stream.changes(1)] == [later]
        pushed.append(later)
    assert await served.stop() == 0


async def restarted_label(served: Served, index: str, victim: str) -> str | None:
    label, status = await answer(served)
    return label if status == 200 and label.startswith(index + "/") and label != victim else None


async def test_tls_in_workers(etcd: EtcdCluster, certs: Any, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, etcd, port)
    proc = start(tmp_path, "--config", str(config), "--tls-cert", str(certs.server_cert),
                 "--tls-key", str(certs.server_key))
    server = Served(proc, f"https://127.0.0.1:{port}", tmp_path / "serve.log",
                    ssl.create_default_context(cafile=str(certs.ca)))
    try:
        assert len(await every_worker_ready(server, 2)) == 2
        assert await server.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_port_in_use_is_one_clear_error(etcd: EtcdCluster, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = start(tmp_path, "--workers", "2", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.endpoints[0])
        assert await asyncio.to_thread(proc.wait, 30) == 2
    log = (tmp_path / "serve.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"], log
    assert "starting 2 workers" not in log and "Traceback" not in log


def test_worker_configuration_error_stops_everything(etcd: EtcdCluster, certs: Any, tmp_path: Path) -> None:
    """A TLS key the workers cannot load (it changed after the supervisor checked it): exit 2, one line."""
    key = tmp_path / "key.pem"
    key.write_bytes(certs.server_key.read_bytes())
    settings = Settings(port=free_port(), etcd_endpoints=tuple(etcd.endpoints), workers=2,
                        tls=load_settings(tls_cert=str(certs.server_cert), tls_key=str(key), env={}).tls)
    key.write_text("not a key\n")
    with pytest.raises(WorkersFailed) as failed:
        run_workers(settings, policy=Policy(backoff_initial=0.01))  # main thread: it installs signal handlers
    assert failed.value.code == 2 and str(failed.value).startswith("worker ")
    assert "\n" not in str(failed.value)


def test_workers_crashing_at_start_make_the_supervisor_give_up(tmp_path: Path) -> None:
    from worker_targets import crash_at_start

    settings = Settings(port=free_port(), workers=2)
    policy = Policy(backoff_initial=0.01, max_start_failures=3)
    with pytest.raises(WorkersFailed) as failed:
        run_workers(settings, policy=policy, target=crash_at_start)
    assert failed.value.code == 1
    assert "died 3 times in a row before listening (last: exited with status 3)" in str(failed.value)


def test_workers_setting_precedence(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("workers: 3\n")
    assert load_settings(env={}).workers == 1
    assert load_settings(config, env={}).workers == 3
    assert load_settings(config, env={"CONFIGCENTER_WORKERS": "4"}).workers == 4
    assert load_settings(config, env={"CONFIGCENTER_WORKERS": "4"}, workers=2).workers == 2
    for bad in ("0", "two", "257", "-1"):
        with pytest.raises(ConfigError, match="workers must be an integer from 1 to 256"):
            load_settings(env={"CONFIGCENTER_WORKERS": bad})
    config.write_text("workers: true\n")
    with pytest.raises(ConfigError):
        load_settings(config, env={})


async def test_workers_exit_when_the_supervisor_is_killed(served: Served) -> None:
    pids = {int(label.split("/")[1]) for label in await every_worker_ready(served, 2)}
    served.proc.kill()
    served.proc.wait()
    await eventually(lambda: all(gone(pid) for pid in pids), timeout=15)


async def test_sdk_with_one_url_rides_through_worker_kills(served: Served) -> None:
    """The load-balanced-URL shape: one URL, the backends behind it die and come back; the SDK's
    stream lands on whichever worker the kernel picks and resumes without loss, duplicate or gap."""
    from configcenter_sdk import ConfigClient

    seen: list[int] = []
    client = ConfigClient([served.url], ["k/"], backoff_initial=0.05, backoff_max=0.2)
    client.on_change("k/", lambda _ns, _doc, revision: seen.append(revision))
    async with client:
        pushed = [await push(served, "k/a", 0)]
        await eventually(lambda: seen == pushed)
        for index in ("0", "1"):  # the SDK's stream is on one of them: it is cut once at least
            victim = await eventually(lambda index=index: labelled(served, index))
            os.kill(int(victim.split("/")[1]), signal.SIGKILL)
            pushed += [await push(served, "k/a", n) for n in (1, 2)]
            await eventually(lambda index=index, victim=victim: restarted_label(served, index, victim), timeout=30)
            pushed.append(await push(served, "k/a", 3))
            await eventually(lambda pushed=pushed: seen == pushed, timeout=15)
        status = client.status()
        assert status.reconnects >= 1 and status.gaps == 0 and status.duplicates == 0
    assert await served.stop() == 0


async def labelled(served: Served, index: str) -> str | None:
    label, status = await answer(served)
    return label if status == 200 and label.startswith(index + "/") else None
