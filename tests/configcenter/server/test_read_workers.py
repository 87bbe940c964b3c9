"""The read lane's worker processes (issue 16): errors come back as themselves, a dead worker is a
503 for its request and a fresh worker for the next, nothing outlives the server.

First the pool directly (``Admission`` with jobs of ``worker_jobs``), then real servers on real
sockets and a real etcd: a worker killed while it parses a request's body, a server stopped while a
job runs, a ``configcenter serve`` process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import worker_jobs
from configcenter._yaml_render import render_lines
from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.errors import ConfigCenterError, InvalidBodyError, TooManyRequestsError
from configcenter.server.cpu import Admission
from configcenter.server.cpu._read_pool import PoolLimits, WorkerUnavailableError
from configcenter.server.settings import Limits
from helpers import RunningServer, envelope, pushed_status
from serve_helpers import start, write_config

MB = 1 << 20


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it holds no memory and runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The live read workers whose parent is ``pid`` (not e.g. the etcd a fixture started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"configcenter.server.cpu._read_worker" in command:
            found.append(int(stat.parent.name))
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


async def working(pid: int) -> None:
    """Wait until ``pid`` is burning CPU (a job is running in it)."""
    deadline = time.monotonic() + 10
    while True:
        before = cpu_ticks(pid)
        await asyncio.sleep(0.05)
        if cpu_ticks(pid) - before >= 2:
            return
        assert time.monotonic() < deadline, "the worker never started the job"


async def eventually_true(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


@pytest.fixture
async def admission() -> Any:
    lane = Admission(1, 0, 1, 2, read_pool=PoolLimits(workers=1, job_timeout=20.0))
    yield lane
    await lane.close()


# --------------------------------------------------------------------------- the pool directly


async def test_the_worker_is_a_separate_low_priority_process(admission: Admission) -> None:
    worker = await admission.run("read", worker_jobs.pid)
    assert worker != os.getpid() and admission.read_pool.pids() == [worker]
    assert await admission.run("read", worker_jobs.niceness) == 19
    assert await admission.run("read", worker_jobs.echo, b"\x00" * 100, {"a": [1]}) == (b"\x00" * 100, {"a": [1]})


@pytest.mark.parametrize(("kind", "cls", "status"), [("invalid_body", InvalidBodyError, 400),
                                                     ("too_many", TooManyRequestsError, 429),
                                                     ("base", ConfigCenterError, 500)])
async def test_an_error_in_the_worker_comes_back_as_the_same_class(
        admission: Admission, kind: str, cls: type[ConfigCenterError], status: int) -> None:
    before = await admission.run("read", worker_jobs.pid)
    with pytest.raises(ConfigCenterError) as info:
        await admission.run("read", worker_jobs.fail, kind)
    assert type(info.value) is cls and info.value.status == status
    if kind == "invalid_body":
        assert info.value.message == "body must be a mapping" and info.value.details == {"line": 3, "column": 7}
        assert info.value.to_json()["error"]["code"] == "invalid_body"
    if kind == "too_many":
        assert info.value.headers() == {"Retry-After": "7"} and info.value.details["lane"] == "x"
    assert await admission.run("read", worker_jobs.pid) == before  # an error is an answer: same worker


async def test_a_crash_a_kill_and_a_timeout_are_503_and_the_next_job_gets_a_fresh_worker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    admission = Admission(1, 0, 1, 2, read_pool=PoolLimits(workers=1, job_timeout=3.0))
    try:
        first = await admission.run("read", worker_jobs.pid)
        with pytest.raises(WorkerUnavailableError) as info:
            await admission.run("read", worker_jobs.fail, "bug")  # not a ConfigCenterError: the worker is replaced
        assert info.value.status == 503 and info.value.headers() == {"Retry-After": "1"}
        second = await admission.run("read", worker_jobs.pid)
        assert second != first and not alive(first)

        running = tmp_path / "running"
        job = asyncio.ensure_future(admission.run("read", worker_jobs.started_then_wait_for, str(running),
                                                  str(tmp_path / "never")))
        await eventually_true(running.exists)  # the worker has the job: it dies in the middle of it
        os.kill(second, signal.SIGKILL)
        with pytest.raises(WorkerUnavailableError):
            await asyncio.wait_for(job, 10)
        third = await admission.run("read", worker_jobs.pid)
        assert third != second

        caplog.clear()
        with caplog.at_level("WARNING", "configcenter.read_worker"), pytest.raises(WorkerUnavailableError):
            await asyncio.wait_for(admission.run("read", worker_jobs.wait_for, str(tmp_path / "never")), 30)
        assert [r.getMessage() for r in caplog.records] == [f"read worker pid {third} replaced: a job ran past 3s"]
        assert await admission.run("read", worker_jobs.pid) not in (third, second)
        assert admission.read_pool.restarts == 3 and admission.pending("read") == 0
        await eventually_true(lambda: not any(alive(p) for p in (first, second, third)))
    finally:
        await admission.close()


async def test_a_worker_that_died_while_idle_is_replaced_before_the_next_job(admission: Admission) -> None:
    first = await admission.run("read", worker_jobs.pid)
    os.kill(first, signal.SIGKILL)
    await eventually_true(lambda: not alive(first))
    second = await admission.run("read", worker_jobs.pid)  # not a 503: the dead one was never given the job
    assert second != first and admission.read_pool.restarts == 1


async def test_a_worker_past_its_memory_limits_is_replaced() -> None:
    admission = Admission(1, 0, 1, 2, read_pool=PoolLimits(workers=1, max_rss=120 * MB, max_address_space=400 * MB))
    try:
        first = await admission.run("read", worker_jobs.keep, 40 * MB)  # under the RSS limit: kept
        assert await admission.run("read", worker_jobs.keep, 100 * MB) == first  # answered, then retired
        second = await admission.run("read", worker_jobs.pid)
        assert second != first
        await eventually_true(lambda: not alive(first))
        with pytest.raises(WorkerUnavailableError):  # past the address-space cap: MemoryError, 503
            await admission.run("read", worker_jobs.allocate, 600 * MB)
        assert await admission.run("read", worker_jobs.allocate, 50 * MB) == 50 * MB
    finally:
        await admission.close()


async def test_close_kills_a_running_job_and_every_worker(tmp_path: Path) -> None:
    admission = Admission(1, 0, 2, 2, read_pool=PoolLimits(workers=2))
    running = tmp_path / "running"
    job = asyncio.ensure_future(admission.run("read", worker_jobs.started_then_wait_for, str(running),
                                              str(tmp_path / "never")))
    await eventually_true(lambda: len(admission.read_pool.pids()) == 2)
    pids = admission.read_pool.pids()
    await eventually_true(running.exists)  # a worker runs the job (it would wait 30 s for "never")
    await asyncio.wait_for(admission.close(), 10)  # a hang guard: close kills, it does not wait for the job
    with pytest.raises(WorkerUnavailableError):
        await asyncio.wait_for(job, 5)
    assert not [p for p in pids if alive(p)] and not children(os.getpid())


# --------------------------------------------------------------------------- real servers


def slow_route_body(items: int = 15_000) -> bytes:
    """A valid route body of block YAML (~35 bytes an item): 15,000 items parse in a few hundred ms."""
    body = {"headers": {"X-Release": "v2-beta"}, "padding": [{"name": f"i-{i}", "tags": ["a"]} for i in range(items)]}
    return "".join(render_lines(body, max_lines=1 << 30, max_chars=1 << 30)).encode()


ROUTES = {"service": "pay", "rules": [{"id": "beta", "match": {"headers": [{"name": "x-release", "exact": "v2-beta"}]},
                                       "route": {"cluster": "canary"}}], "default": {"cluster": "stable"}}


@pytest.fixture
async def routed(make_server: Any, http: aiohttp.ClientSession) -> RunningServer:
    limits = replace(Limits(), max_body_bytes=4 * MB, max_doc_bytes=4 * MB, history_ring=1000)
    server: RunningServer = await make_server(limits=limits)
    async with http.put(f"{server.url}/v1/namespaces/pay/routes", json=envelope(ROUTES, "routes"),
                        headers=server.auth()) as resp:
        assert resp.status == 201, await resp.text()
    return server


async def evaluate(http: aiohttp.ClientSession, server: RunningServer, body: bytes) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{server.url}/v1/namespaces/pay/routes/route", data=body,
                         headers={"Content-Type": "application/yaml"}) as resp:
        return resp.status, await resp.json()


async def test_a_worker_killed_during_a_request_is_a_503_and_the_next_request_is_answered(
        routed: RunningServer, http: aiohttp.ClientSession) -> None:
    body = slow_route_body()
    status, answer = await evaluate(http, routed, body)  # parsed in the worker; only X-Release came back
    assert status == 200 and answer["cluster"] == "canary", answer
    pool = routed.runtime.admission.read_pool
    [first] = pool.pids()
    request = asyncio.ensure_future(evaluate(http, routed, slow_route_body(60_000)))
    await working(first)
    os.kill(first, signal.SIGKILL)
    status, answer = await asyncio.wait_for(request, 20)
    assert status == 503 and answer["error"]["code"] == "worker_unavailable", answer
    status, answer = await evaluate(http, routed, body)
    assert status == 200 and answer["cluster"] == "canary", answer
    assert pool.pids() != [first] and not alive(first)
    async with http.get(f"{routed.url}/metrics") as resp:
        assert "configcenter_read_worker_restarts_total 1.0" in await resp.text()


async def test_a_diff_is_computed_in_the_worker_which_keeps_the_documents(
        routed: RunningServer, http: aiohttp.ClientSession) -> None:
    revisions = []
    for marker in ("x", "y"):
        doc = {"items": [{"name": f"item-{i}", "tags": [marker]} for i in range(6_000)]}
        async with http.put(f"{routed.url}/v1/namespaces/pay/big", json=envelope(doc),
                            headers=routed.auth()) as resp:
            answer = await resp.json()
            assert resp.status == pushed_status(answer), answer
            revisions.append(answer["revision"])
    store, loads = routed.runtime.store, []
    get_at = store.get_at

    async def counted(ns: str, revision: int) -> Any:
        loads.append(revision)
        return await get_at(ns, revision)

    store.get_at = counted  # type: ignore[method-assign]  # a spy on the real store (real etcd behind it)
    url = f"{routed.url}/v1/namespaces/pay/big/diff?from={revisions[0]}"
    answers = []
    for _ in range(2):  # "to" is the current release (from the mirror): nothing to load for it
        async with http.get(url) as resp:
            assert resp.status == 200, await resp.text()
            answers.append(await resp.read())
    assert answers[0] == answers[1] and len(answers[0]) > 256 * 1024  # too large for the server's diff cache
    assert loads == [revisions[0]]  # the worker kept both documents: the second diff sent only their keys
    diff = (await (await http.get(f"{url}&to={revisions[1]}")).json())
    assert diff["changes_total"] == 6_000 and diff["changes"][0] == {
        "path": "$.items[0].tags[0]", "op": "changed", "old": "x", "new": "y"}
    async with http.get(f"{routed.url}/v1/namespaces/pay/big/diff?from=1") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_stopping_the_server_during_a_job_leaves_no_process(
        routed: RunningServer, http: aiohttp.ClientSession) -> None:
    await evaluate(http, routed, slow_route_body())
    pids = routed.runtime.admission.read_pool.pids()
    request = asyncio.ensure_future(evaluate(http, routed, slow_route_body(60_000)))
    await working(pids[0])
    await asyncio.wait_for(routed.stop(), 30)  # a hang guard; the 503 below shows the job was killed, not awaited
    try:  # the request gets the 503 of its killed job, or its connection is closed: it does not hang
        status, answer = await asyncio.wait_for(request, 10)
        assert status == 503 and answer["error"]["code"] == "worker_unavailable", answer
    except aiohttp.ClientError:
        pass
    assert pids and not [p for p in pids if alive(p)] and not children(os.getpid())


async def test_a_killed_server_takes_its_read_worker_with_it(etcd: EtcdCluster, tmp_path: Path) -> None:
    port = free_port()
    proc = start(tmp_path, "--config", str(write_config(tmp_path, etcd, port, workers=1)))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                try:
                    async with http.post(f"{url}/v1/namespaces/none/route", data=slow_route_body(),
                                         headers={"Content-Type": "application/yaml"}) as resp:
                        if resp.status == 404:  # parsed in the worker: it runs
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        [worker] = children(proc.pid)
        assert alive(worker)
    finally:
        proc.kill()
        proc.wait(10)
    await eventually_true(lambda: not alive(worker))  # PR_SET_PDEATHSIG
