"""Admission per class (issue 16): reads cannot starve writes, a full class answers 429 with Retry-After.

The lanes themselves are tested directly (the read lane's worker processes, the write lane's threads,
the queue, a slot held until the job really ends); then over real sockets on a real etcd: anonymous
route evaluations with large YAML bodies fill the read lane, the surplus gets 429 ``too_many_requests``
with ``Retry-After`` (counted per lane in ``/metrics``), and a push sent in the middle of the flood is
answered while the flood is still running.  (Worker deaths, errors and shutdown: ``test_read_workers.py``.)
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import worker_jobs
from configcenter._yaml_render import render_lines
from configcenter.errors import TooManyRequestsError
from configcenter.server.cpu import Admission
from configcenter.server.settings import Limits
from helpers import RunningServer, envelope, eventually


async def test_a_full_lane_refuses_and_the_other_lane_still_runs(tmp_path: Path) -> None:
    admission = Admission(write_threads=1, write_queue=0, read_workers=1, read_queue=1)
    release = tmp_path / "release"
    try:
        blocked = [asyncio.ensure_future(admission.run("read", worker_jobs.wait_for, str(release)))
                   for _ in range(2)]
        await eventually(lambda: admission.pending("read") == 2)  # both tasks have taken their slot
        assert admission.full("read")
        with pytest.raises(TooManyRequestsError) as info:
            await admission.run("read", worker_jobs.pid)
        assert info.value.status == 429 and info.value.headers() == {"Retry-After": "1"}
        assert info.value.details["lane"] == "read" and admission.refused("read") == 1
        assert await asyncio.wait_for(admission.run("write", lambda: "written"), 2) == "written"
        release.touch()
        pids = await asyncio.wait_for(asyncio.gather(*blocked), 30)
        assert len(set(pids)) == 1 and pids[0] == admission.read_pool.pids()[0]  # one worker, in turn
        await eventually(lambda: admission.pending("read") == 0)  # freed once each job's reply is in
    finally:
        release.touch()
        await admission.close()


async def test_a_cancelled_request_keeps_its_slot_until_its_job_ends(tmp_path: Path) -> None:
    admission = Admission(write_threads=1, write_queue=0, read_workers=1, read_queue=0)
    release = tmp_path / "release"
    try:
        task = asyncio.ensure_future(admission.run("read", worker_jobs.wait_for, str(release)))
        await eventually(lambda: admission.full("read"))  # the slot is taken and the job sent to the worker
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled()
        assert admission.full("read")  # the worker is still busy: a new job would only queue behind it
        release.touch()
        await eventually(lambda: not admission.full("read"), timeout=30)
        assert isinstance(await admission.run("read", worker_jobs.pid), int)  # the worker is usable again
    finally:
        release.touch()
        await admission.close()


def big_yaml_route_body() -> bytes:
    """A valid route-evaluation body of ~0.5 MB of block YAML (slow to parse, as the issue's flood)."""
    body = {"headers": {"x": "y"}, "padding": [{"name": f"item-{i}", "tags": ["a", "b"]} for i in range(15_000)]}
    return "".join(render_lines(body, max_lines=1 << 30, max_chars=1 << 30)).encode()


@pytest.fixture
async def flooded(make_server: Any) -> RunningServer:
    limits = replace(Limits(), max_body_bytes=2 << 20, read_cpu_workers=1, read_queue=1, history_ring=1000)
    server: RunningServer = await make_server(limits=limits)
    return server


async def test_reads_past_their_lane_get_429_and_a_push_is_not_delayed(
        flooded: RunningServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The read lane's worker is held by a job the test releases: one flood request waits in the
    queue, the 7 others get 429 at once, and a push sent meanwhile is answered while the read lane
    is still held, so it never waited for a read. (CPU contention between the lanes: bench_hostile.)"""
    body = big_yaml_route_body()
    url = f"{flooded.url}/v1/namespaces/flood/routes/route"
    headers = {"Content-Type": "application/yaml"}
    admission, release = flooded.runtime.admission, tmp_path / "release"

    async def evaluate() -> tuple[int, str | None]:
        async with http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After")

    async with admission.slot("read") as slot:
        held = asyncio.ensure_future(slot.run(worker_jobs.wait_for, str(release)))
        try:
            flood = [asyncio.ensure_future(evaluate()) for _ in range(8)]
            await eventually(lambda: sum(f.done() for f in flood) == 7, timeout=30)  # the refused ones
            assert admission.full("read")
            push_body = "".join(render_lines(envelope({"v": list(range(2_000))}), max_lines=1 << 20,
                                             max_chars=1 << 24))
            async with http.put(f"{flooded.url}/v1/namespaces/flood/cfg", data=push_body.encode(),
                                headers={**flooded.auth(), "Content-Type": "application/yaml"}) as resp:
                assert resp.status == 201, await resp.text()
            waiting = [f for f in flood if not f.done()]
            assert len(waiting) == 1 and not held.done()  # the push was answered with the read lane still held
        finally:
            release.touch()
        await asyncio.wait_for(held, 30)
    answers = await asyncio.wait_for(asyncio.gather(*flood), 60)
    assert sorted(answers) == [(404, None)] + [(429, "1")] * 7, answers  # 404: admitted, parsed, no such table
    async with http.get(f"{flooded.url}/metrics") as resp:
        text = await resp.text()
    assert 'configcenter_admission_refused_total{lane="read"} 7.0' in text, text[-3000:]
    assert 'configcenter_admission_refused_total{lane="write"} 0.0' in text
