"""Nested and prefix-sharing namespace names, and HTTP helpers, for the key-layout and migration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from helpers import RunningServer, SSEStream, envelope

NAMES = ("a", "a/b", "a/b/c", "ab", "a/000000000001")  # the last: a child whose segment looks like a version


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


async def push_all(http: aiohttp.ClientSession, server: RunningServer, rounds: int = 2) -> dict[str, list[int]]:
    """Each name pushed ``rounds`` times, children after parents and parents again after children."""
    revisions: dict[str, list[int]] = {ns: [] for ns in NAMES}
    for i in range(rounds):
        for ns in (*NAMES, *reversed(NAMES)):
            revisions[ns].append(await push(http, server, ns, {"owner": ns, "i": i}))
    return revisions


async def get_json(http: aiohttp.ClientSession, server: RunningServer, path: str) -> tuple[int, Any]:
    async with http.get(f"{server.url}{path}", headers=server.auth()) as resp:
        return resp.status, await resp.json()


@asynccontextmanager
async def watch(http: aiohttp.ClientSession, server: RunningServer, *selectors: str,
                resume: str | None = None) -> AsyncIterator[SSEStream]:
    params = [("ns", s) for s in selectors]
    headers = {"Last-Event-ID": resume} if resume is not None else {}
    async with http.get(f"{server.url}/v1/watch", params=params, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        yield SSEStream(resp)
