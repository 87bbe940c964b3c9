"""No single request stalls the others: big pushes and diffs run off the event loop, bombs are cheap.

The bounds here are generous on purpose (noisy 2-core machines); the real numbers
come from ``bench/bench_hostile.py``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import aiohttp

from configcenter.codec import dump_yaml
from configcenter.server.settings import Limits
from helpers import RunningServer

BIG = 2 * 1024 * 1024


def big_config(marker: str, items: int = 12_000) -> dict[str, Any]:
    """A ~1 MB config document (as YAML) that differs from another marker's in every item."""
    return {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(items)]}


async def healthz_while(server: RunningServer, http: aiohttp.ClientSession, work: Any) -> tuple[Any, list[float]]:
    """Run ``work`` and poll /healthz meanwhile; return its result and every healthz latency."""
    task = asyncio.ensure_future(work)
    latencies: list[float] = []
    while not task.done():
        started = time.perf_counter()
        async with http.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.005)
    return await task, latencies


async def put_yaml(http: aiohttp.ClientSession, server: RunningServer, ns: str, body: str) -> dict[str, Any]:
    headers = {**server.auth(), "Content-Type": "application/yaml"}
    async with http.put(f"{server.url}/v1/namespaces/{ns}", data=body.encode(), headers=headers) as resp:
        assert resp.status in (200, 201), await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def test_healthz_answers_while_a_1mb_yaml_push_and_its_diff_are_processed(
        make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=replace(Limits(), max_body_bytes=BIG, max_doc_bytes=BIG))
    first_body = dump_yaml({"kind": "config", "doc": big_config("x")})
    assert len(first_body) > 700_000
    first, latencies = await healthz_while(server, http, put_yaml(http, server, "big/config", first_body))
    assert len(latencies) >= 3, "the push was too fast to observe anything"
    assert max(latencies) < 1.0, latencies
    second = await put_yaml(http, server, "big/config", dump_yaml({"kind": "config", "doc": big_config("y")}))

    async def diff() -> dict[str, Any]:
        url = f"{server.url}/v1/namespaces/big/config/diff?from={first['revision']}&to={second['revision']}"
        async with http.get(url) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    result, latencies = await healthz_while(server, http, diff())
    assert result["changes_total"] > 1000 and result["changes_truncated"] and len(result["changes"]) == 1000
    assert max(latencies) < 1.0, latencies


async def test_an_alias_bomb_costs_nothing_and_writes_nothing(server: RunningServer,
                                                              http: aiohttp.ClientSession) -> None:
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb = "kind: config\ndoc:\n" + "\n".join("  " + line for line in levels) + "\n"
    before = await server.runtime.store.current_revision()
    started = time.perf_counter()
    headers = {**server.auth(), "Content-Type": "application/yaml"}
    async with http.put(f"{server.url}/v1/namespaces/bomb/config", data=bomb.encode(), headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 413 and body["error"]["code"] == "payload_too_large", body
    assert time.perf_counter() - started < 1.0
    assert await server.runtime.store.current_revision() == before
