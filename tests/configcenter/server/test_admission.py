"""Admission per class (issue 16): reads cannot starve writes, a full class answers 429 with Retry-After.

The lanes themselves are tested directly (threads, queue, a slot held until the job really ends);
then over real sockets on a real etcd: anonymous route evaluations with large YAML bodies fill the
read lane, the surplus gets 429 ``too_many_requests`` with ``Retry-After``, and a push sent in the
middle of the flood is answered while the flood is still running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from configcenter._yaml_render import render_lines
from configcenter.errors import TooManyRequestsError
from configcenter.server.admission import Admission
from configcenter.server.settings import Limits
from helpers import RunningServer, envelope


async def test_a_full_lane_refuses_and_the_other_lane_still_runs() -> None:
    admission = Admission(write_threads=1, write_queue=0, read_threads=1, read_queue=1)
    release = threading.Event()
    try:
        blocked = [asyncio.ensure_future(admission.run("read", release.wait, 10)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert admission.full("read") and admission.pending("read") == 2
        with pytest.raises(TooManyRequestsError) as info:
            await admission.run("read", time.sleep, 0)
        assert info.value.status == 429 and info.value.headers() == {"Retry-After": "1"}
        assert info.value.details["lane"] == "read" and admission.refused("read") == 1
        assert await asyncio.wait_for(admission.run("write", lambda: "written"), 2) == "written"
    finally:
        release.set()
    assert await asyncio.gather(*blocked) == [True, True]
    await asyncio.sleep(0.01)
    assert admission.pending("read") == 0
    admission.shutdown()


async def test_a_cancelled_request_keeps_its_slot_until_its_job_ends() -> None:
    admission = Admission(write_threads=1, write_queue=0, read_threads=1, read_queue=0)
    release = threading.Event()
    task = asyncio.ensure_future(admission.run("read", release.wait, 10))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert admission.full("read")  # the thread is still busy: a new job would only queue behind it
    release.set()
    for _ in range(100):
        if not admission.full("read"):
            break
        await asyncio.sleep(0.01)
    assert not admission.full("read")
    admission.shutdown()


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
        flooded: RunningServer, http: aiohttp.ClientSession) -> None:
    body = big_yaml_route_body()
    url = f"{flooded.url}/v1/namespaces/flood/routes/route"
    headers = {"Content-Type": "application/yaml"}

    async def evaluate() -> tuple[int, str | None, float]:
        started = time.perf_counter()
        async with http.post(url, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers.get("Retry-After"), time.perf_counter() - started

    flood = [asyncio.ensure_future(evaluate()) for _ in range(8)]
    await asyncio.sleep(0.2)  # the first bodies are being parsed
    push_body = "".join(render_lines(envelope({"v": list(range(2_000))}), max_lines=1 << 20, max_chars=1 << 24))
    started = time.perf_counter()
    async with http.put(f"{flooded.url}/v1/namespaces/flood/cfg", data=push_body.encode(),
                        headers={**flooded.auth(), "Content-Type": "application/yaml"}) as resp:
        assert resp.status == 201, await resp.text()
    push_took = time.perf_counter() - started
    answers = await asyncio.gather(*flood)
    refused = [a for a in answers if a[0] == 429]
    assert refused and all(retry == "1" for _, retry, _ in refused), answers
    assert {status for status, _, _ in answers} <= {404, 429}, answers  # 404: admitted, parsed, no such table
    slowest_read = max(took for status, _, took in answers if status == 404)
    assert push_took < slowest_read, (push_took, answers)  # the push did not queue behind the reads
