"""No single request stalls the others: big pushes and diffs run off the event loop, bombs are cheap.

No wall-clock bound here: each heavy request is held in its lane (``cpu/admission.py``) behind a
job the test releases, and while it is held the event loop must answer and the request must not
be done, which it would be if its work ran on the loop. How long the work takes, and /healthz
latency during it, are measured by ``bench/bench_hostile.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from configcenter.codec import dump_yaml
from configcenter.server.cpu import Lane
from configcenter.server.settings import Limits
from helpers import RunningServer, eventually, lane_held

BIG = 2 * 1024 * 1024


def big_config(marker: str, items: int = 12_000) -> dict[str, Any]:
    """A ~1 MB config document (as YAML) that differs from another marker's in every item."""
    return {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(items)]}


async def held_while_loop_answers(server: RunningServer, http: aiohttp.ClientSession, lane: Lane,
                                  work: Awaitable[Any]) -> asyncio.Future[Any]:
    """Start ``work`` while ``lane`` is held: once it has its place in the lane (the lane is full), the
    event loop answers /healthz and ``work`` is not done. The caller releases the lane."""
    task = asyncio.ensure_future(work)
    await eventually(lambda: server.runtime.admission.full(lane) or task.done(), timeout=30)
    for _ in range(3):
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        assert not task.done(), "the request finished while its lane was held: its work ran on the event loop"
    return task


async def put_yaml(http: aiohttp.ClientSession, server: RunningServer, ns: str, body: str,
                   status: int) -> dict[str, Any]:
    headers = {**server.auth(), "Content-Type": "application/yaml"}
    async with http.put(f"{server.url}/v1/namespaces/{ns}", data=body.encode(), headers=headers) as resp:
        assert resp.status == status, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def test_healthz_answers_while_a_1mb_yaml_push_and_its_diff_are_processed(
        make_server: Any, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    # one worker and one waiting place per lane: the test's job takes the worker, the request the place
    limits = replace(Limits(), max_body_bytes=BIG, max_doc_bytes=BIG, cpu_workers=1, write_queue=1,
                     read_cpu_workers=1, read_queue=1)
    server = await make_server(limits=limits)
    first_body = dump_yaml({"kind": "config", "doc": big_config("x")})
    assert len(first_body) > 700_000
    async with lane_held(server, "write", tmp_path):
        pushing = await held_while_loop_answers(server, http, "write", put_yaml(http, server, "big/config",
                                                                                first_body, 201))
    first = await asyncio.wait_for(pushing, 60)
    second = await put_yaml(http, server, "big/config", dump_yaml({"kind": "config", "doc": big_config("y")}), 200)

    async def diff() -> dict[str, Any]:
        url = f"{server.url}/v1/namespaces/big/config/diff?from={first['revision']}&to={second['revision']}"
        async with http.get(url) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    async with lane_held(server, "read", tmp_path):
        diffing = await held_while_loop_answers(server, http, "read", diff())
    result = await asyncio.wait_for(diffing, 60)
    assert result["changes_total"] > 1000 and result["changes_truncated"] and len(result["changes"]) == 1000


async def test_an_alias_bomb_costs_nothing_and_writes_nothing(server: RunningServer,
                                                              http: aiohttp.ClientSession) -> None:
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = "kind: config\ndoc:\n" + "\n".join("  " + line for line in levels) + "\n"
    before = await server.runtime.store.current_revision()
    headers = {**server.auth(), "Content-Type": "application/yaml"}
    # refused while parsing, at limits.max_doc_bytes: 10^10 strings are never built (10 s: a hang guard;
    # the time it takes is measured by bench/bench_hostile.py)
    async with asyncio.timeout(10):
        async with http.put(f"{server.url}/v1/namespaces/bomb/config", data=bomb.encode(), headers=headers) as resp:
            body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "payload_too_large", body
    assert "limits.max_doc_bytes" in body["error"]["message"], body
    assert await server.runtime.store.current_revision() == before
