"""Hostile route tables and hostile headers over real sockets against a real etcd.

Regex header matchers run on RE2: a table with a catastrophic-backtracking pattern is accepted
(it is harmless), a request header crafted against it costs linear time and never stalls the
server, and what RE2 cannot compile (or compiles to a program over
``limits.max_regex_program_size``) is refused at push with 422 naming the matcher's path,
writing nothing. No clock is read: a backtracking engine would not finish these evaluations
(the session's 30 s timeout fails them); their cost is measured by ``bench/bench_route.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.server.settings import Limits
from helpers import RunningServer, envelope, eventually, lane_held

REGEX_PATH = "$.rules[0].match.headers[0].regex"
EVIL = "a" * 100_000 + "!"


def table(pattern: str) -> dict[str, Any]:
    return {
        "service": "evil",
        "rules": [{"id": "r", "match": {"headers": [{"name": "x-a", "regex": pattern}]}, "route": {"cluster": "hit"}}],
        "default": {"cluster": "stable"},
    }


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, pattern: str) -> tuple[int, Any]:
    return await call(http, "PUT", f"{server.url}/v1/namespaces/{ns}", json=envelope(table(pattern), "routes"),
                      headers=server.auth())


async def evaluate(http: aiohttp.ClientSession, server: RunningServer, ns: str, value: str) -> Any:
    status, body = await call(http, "POST", f"{server.url}/v1/namespaces/{ns}/route",
                              json={"headers": {"X-A": value, "accept": "*/*"}}, headers=server.auth())
    assert status == 200, body
    return body


@pytest.fixture
async def big_server(make_server: Any) -> RunningServer:
    """A server that accepts request bodies large enough for a 100 KB header value."""
    # read_queue: 20 evaluations at once are the point here (admission past the read lane: test_admission.py)
    server: RunningServer = await make_server(limits=replace(Limits(), max_body_bytes=1_048_576, read_queue=32))
    return server


async def test_catastrophic_pattern_is_accepted_and_evaluates_in_linear_time(
        big_server: RunningServer, http: aiohttp.ClientSession) -> None:
    status, body = await push(http, big_server, "evil/routes", "^(a+)+$")
    assert status == 201, body
    decision = await evaluate(http, big_server, "evil/routes", EVIL)  # Python's re: ~6 s for 28 characters
    assert decision["cluster"] == "stable" and decision["rule_id"] == "default"
    decision = await evaluate(http, big_server, "evil/routes", EVIL[:-1])
    assert decision["cluster"] == "hit" and decision["rule_id"] == "r"


async def test_healthz_answers_while_adversarial_headers_are_evaluated(
        big_server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """20 adversarial evaluations wait in the read lane (its worker held by the test): the event loop
    answers meanwhile and none is done; released, each gets its right answer."""
    assert (await push(http, big_server, "evil/routes", "^(a+)+$"))[0] == 201
    await evaluate(http, big_server, "evil/routes", "warm-up")  # the table compiles once per revision
    admission = big_server.runtime.admission
    async with lane_held(big_server, "read", tmp_path):
        work = asyncio.gather(*(evaluate(http, big_server, "evil/routes", EVIL) for _ in range(20)))
        await eventually(lambda: admission.pending("read") == 21 or work.done(), timeout=30)  # all admitted
        async with http.get(f"{big_server.url}/healthz") as resp:
            assert resp.status == 200
        assert not work.done()
    results = await asyncio.wait_for(work, 60)
    assert [decision["cluster"] for decision in results] == ["stable"] * 20


async def test_hostile_header_values_never_fail(big_server: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await push(http, big_server, "evil/routes", "^[^\\x00]*$"))[0] == 201
    for value in ("", "a\x00b", "\U0010ffff" * 1000, "é" * 50_000):
        decision = await evaluate(http, big_server, "evil/routes", value)
        assert decision["cluster"] == ("stable" if "\x00" in value else "hit"), value[:20]
    # lone surrogates cannot travel in JSON, but YAML's "\ud800" escape carries one
    body = b'headers: {x-a: "ok\\ud800\\udcff"}\n'
    async with http.post(f"{big_server.url}/v1/namespaces/evil/routes/route", data=body,
                         headers={**big_server.auth(), "Content-Type": "application/yaml"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["cluster"] == "hit"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a)\\1", "invalid escape sequence"),  # backreference
        ("(?=a)", "invalid perl operator"),  # lookahead
        ("(?<=a)b", "invalid perl operator"),  # lookbehind
        ("(abc){200}", "program size 1004 exceeds the limit of 100"),  # needs the limit wired into the API
        ("x{500}", "program size"),
    ],
)
async def test_patterns_re2_refuses_are_422_at_the_matcher_and_write_nothing(
        server: RunningServer, http: aiohttp.ClientSession, pattern: str, reason: str) -> None:
    assert (await push(http, server, "seed/routes", "^ok$"))[0] == 201
    before = await server.runtime.store.current_revision()
    status, body = await push(http, server, "hostile/routes", pattern)
    assert status == 422, body
    error = body["error"]
    assert error["code"] == "schema_violation"
    violation = error["details"]["violations"][0]
    assert violation["path"] == REGEX_PATH, violation
    assert reason in violation["message"] and REGEX_PATH in error["message"], error
    assert await server.runtime.store.current_revision() == before, "a rejected push changed etcd"


async def test_program_size_limit_comes_from_the_settings(make_server: Any, http: aiohttp.ClientSession) -> None:
    server: RunningServer = await make_server(limits=replace(Limits(), max_regex_program_size=2000))
    status, body = await push(http, server, "roomy/routes", "(abc){200}")
    assert status == 201, body
    decision = await evaluate(http, server, "roomy/routes", "x" + "abc" * 200)
    assert decision["cluster"] == "hit"
