"""Audit: trace ids and principals on releases, history, SSE frames, the CLI and the JSON audit log."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.cli.main import run as run_cli_main
from configcenter.server.security import parse_networks
from configcenter_sdk import ConfigClient, Revision
from helpers import READER, WRITER, RunningServer, SSEStream, envelope, eventually

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "configcenter.audit"]


async def put(http: aiohttp.ClientSession, server: RunningServer, ns: str, headers: dict[str, str],
              message: str = "") -> tuple[int, dict[str, Any], str]:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope({"v": 1}, message=message),
                        headers={**server.auth(), **headers}) as resp:
        return resp.status, await resp.json(), resp.headers["X-Request-ID"]


async def test_push_with_traceparent_is_traced_everywhere(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    async with http.get(f"{server.url}/v1/watch?ns=audit/") as watch:
        stream = SSEStream(watch)
        assert (await stream.next()).event == "reset"
        status, release, echoed = await put(http, server, "audit/cfg",
                                            {"traceparent": TRACEPARENT, "User-Agent": "ci-bot/1.0"}, "canary")
        (change,) = await stream.changes(1)
    assert status == 201 and echoed == TRACE
    assert (release["trace_id"], release["principal"], release["client"], release["user_agent"]) == (
        TRACE, "test-writer", "127.0.0.1", "ci-bot/1.0")
    assert (change.data["trace_id"], change.data["principal"]) == (TRACE, "test-writer")

    async with http.get(f"{server.url}/v1/namespaces/audit/cfg/history") as resp:
        (entry,) = (await resp.json())["entries"]
    assert (entry["principal"], entry["trace_id"], entry["message"]) == ("test-writer", TRACE, "canary")

    (line,) = audit_lines(caplog)
    assert {k: line[k] for k in ("event", "principal", "client", "method", "path", "namespace", "status",
                                 "trace_id", "revision", "action")} == {
        "event": "write", "principal": "test-writer", "client": "127.0.0.1", "method": "PUT",
        "path": "/v1/namespaces/audit/cfg", "namespace": "audit/cfg", "status": 201, "trace_id": TRACE,
        "revision": release["revision"], "action": "push"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


HOSTILE_TRACEPARENTS = [
    f"00-{TRACE.upper()}-00f067aa0ba902b7-01",  # uppercase hex
    f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"ff-{TRACE}-00f067aa0ba902b7-01",  # forbidden version
    f"00-{TRACE}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
    f"00-{TRACE}0-00f067aa0ba902b7-01",  # trace id too long
    f"00-{TRACE}-00f067aa0ba902b7-01" + "x" * 600,  # beyond the length bound
    "<script>alert(1)</script>",
]


@pytest.mark.parametrize("traceparent", HOSTILE_TRACEPARENTS)
async def test_malformed_traceparent_is_ignored(server: RunningServer, http: aiohttp.ClientSession,
                                                traceparent: str) -> None:
    status, release, echoed = await put(http, server, "audit/bad", {"traceparent": traceparent})
    assert status == 201, release  # a fresh server: the namespace is created
    assert HEX32.fullmatch(echoed) and echoed not in traceparent.lower() and release["trace_id"] == echoed


async def test_x_request_id_is_used_when_valid(server: RunningServer, http: aiohttp.ClientSession) -> None:
    _, release, echoed = await put(http, server, "audit/rid", {"X-Request-ID": "deploy-42/step:3"})
    assert echoed == release["trace_id"] == "deploy-42/step:3"
    _, release, echoed = await put(http, server, "audit/rid", {"traceparent": TRACEPARENT, "X-Request-ID": "r-1"})
    assert echoed == release["trace_id"] == TRACE  # a valid traceparent wins
    for bad in ("x" * 129, "has space", "tab\there", "ünïcode"):
        async with http.get(f"{server.url}/healthz", headers={"X-Request-ID": bad}) as resp:
            assert HEX32.fullmatch(resp.headers["X-Request-ID"]), bad


async def test_every_response_carries_a_request_id(server: RunningServer, http: aiohttp.ClientSession) -> None:
    requests = [("GET", "/healthz", {}), ("GET", "/metrics", {}), ("GET", "/v1/nothing", {}),
                ("GET", "/v1/namespaces/Bad", {}), ("PUT", "/v1/namespaces/a/b", {"json": envelope({})}),
                ("DELETE", "/v1/namespaces/never/there", {"headers": server.auth()})]
    for method, path, kwargs in requests:
        async with http.request(method, server.url + path, **kwargs) as resp:
            assert HEX32.fullmatch(resp.headers.get("X-Request-ID", "")), (method, path, resp.status)
    async with http.get(f"{server.url}/v1/watch", headers={"X-Request-ID": "sse-1"}) as resp:
        assert resp.headers["X-Request-ID"] == "sse-1"


async def test_denials_are_logged_not_reads(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    async with http.get(f"{server.url}/v1/namespaces"):
        pass
    async with http.put(f"{server.url}/v1/namespaces/a/cfg", json=envelope({}), headers=server.auth(READER)) as resp:
        assert resp.status == 403
    async with http.put(f"{server.url}/v1/namespaces/a/cfg", json=envelope({}),
                        headers={"Authorization": "Bearer wrong", "X-Request-ID": "probe-7"}) as resp:
        assert resp.status == 401
    denied, unknown = audit_lines(caplog)
    assert (denied["event"], denied["principal"], denied["status"], denied["namespace"]) == (
        "denied", "test-reader", 403, None)  # refused on its role, before the name was read
    assert "needs the writer role" in denied["reason"]
    assert (unknown["principal"], unknown["status"], unknown["trace_id"], unknown["reason"]) == (
        "anonymous", 401, "probe-7", "unknown bearer token")
    assert [r.levelno for r in caplog.records if r.name == "configcenter.audit"] == [logging.WARNING] * 2


async def test_failed_writes_are_logged_with_their_status(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    async with http.delete(f"{server.url}/v1/namespaces/not/there", headers=server.auth()) as resp:
        assert resp.status == 404
    (line,) = audit_lines(caplog)
    assert (line["event"], line["action"], line["status"], line["revision"]) == ("write", "delete", 404, None)


async def test_delete_is_stamped_in_history(server: RunningServer, http: aiohttp.ClientSession) -> None:
    await put(http, server, "audit/del", {})
    async with http.delete(f"{server.url}/v1/namespaces/audit/del?message=bye",
                           headers={**server.auth(), "X-Request-ID": "del-1"}) as resp:
        deleted = await resp.json()
    assert (deleted["principal"], deleted["trace_id"]) == ("test-writer", "del-1")
    async with http.get(f"{server.url}/v1/namespaces/audit/del/history") as resp:
        latest = (await resp.json())["entries"][0]
    assert (latest["op"], latest["principal"], latest["trace_id"], latest["message"]) == (
        "delete", "test-writer", "del-1", "bye")


async def test_forwarded_for_needs_a_trusted_proxy(make_server: Any, http: aiohttp.ClientSession) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.9, 10.1.2.3"}
    plain = await make_server()
    _, release, _ = await put(http, plain, "audit/xff", forwarded)
    assert release["client"] == "127.0.0.1"  # nobody trusted: the socket peer
    behind = await make_server(trusted_proxies=parse_networks(["127.0.0.0/8", "10.0.0.0/8"]))
    _, release, _ = await put(http, behind, "audit/xff", forwarded)
    assert release["client"] == "203.0.113.9"  # walked right to left past the trusted hops
    _, release, _ = await put(http, behind, "audit/xff", {"X-Forwarded-For": "not-an-ip, 10.1.2.3"})
    assert release["client"] == "10.1.2.3"  # garbage stops the walk at the last vouched hop


async def test_user_agent_is_bounded(server: RunningServer, http: aiohttp.ClientSession) -> None:
    _, release, _ = await put(http, server, "audit/ua", {"User-Agent": "a" * 5000})
    assert release["user_agent"] == "a" * 256


async def test_author_is_only_a_claim(server: RunningServer, http: aiohttp.ClientSession) -> None:
    body = {"kind": "config", "doc": {}, "author": "ceo"}
    async with http.put(f"{server.url}/v1/namespaces/audit/who", json=body, headers=server.auth()) as resp:
        release = await resp.json()
    assert (release["author"], release["principal"]) == ("ceo", "test-writer")


def cli_run(*argv: str) -> int:
    return run_cli_main(list(argv))


async def test_cli_sends_request_id_and_shows_it(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    doc = tmp_path / "doc.yaml"
    doc.write_text("a: 1\n")
    base = ["--server", server.url, "--token", WRITER]
    code = await asyncio.to_thread(cli_run, *base, "--request-id", "cli-req-1", "push", "audit/cli", str(doc),
                                   "--kind", "config", "-m", "from cli")
    assert code == 0
    capsys.readouterr()
    assert await asyncio.to_thread(cli_run, *base, "history", "audit/cli") == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["REVISION", "VERSION", "OP", "PRINCIPAL", "TRACE", "TIME", "MESSAGE"]
    assert row.split()[2:5] == ["push", "test-writer", "cli-req-1"] and row.endswith("from cli")
    assert await asyncio.to_thread(cli_run, *base, "--json", "history", "audit/cli") == 0
    (entry,) = orjson.loads(capsys.readouterr().out)["entries"]
    assert (entry["principal"], entry["trace_id"], entry["message"]) == ("test-writer", "cli-req-1", "from cli")

    assert await asyncio.to_thread(cli_run, *base, "--request-id", "cli-req-2", "get", "audit/none") == 1
    assert capsys.readouterr().err.rstrip().endswith("(HTTP 404) [request id cli-req-2]")
    assert await asyncio.to_thread(cli_run, *base, "get", "audit/none") == 1
    assert re.search(r"\(HTTP 404\) \[request id [0-9a-f]{32}\]$", capsys.readouterr().err.rstrip())
    assert await asyncio.to_thread(cli_run, *base, "--request-id", "has space", "list") == 2


async def test_sdk_listeners_get_trace_id_and_principal(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter_sdk.client")
    seen: list[tuple[str, Any, Any]] = []
    async with ConfigClient([server.url], ["audit/"], backoff_max=0.3, idle_timeout=1.5) as client:
        client.on_change("audit/", lambda ns, doc, rev: seen.append((ns, doc, rev)))
        _, release, _ = await put(http, server, "audit/sdk", {"traceparent": TRACEPARENT})
        async with http.delete(f"{server.url}/v1/namespaces/audit/sdk",
                               headers={**server.auth(), "X-Request-ID": "bye-1"}) as resp:
            deleted = await resp.json()
        await eventually(lambda: len(seen) == 2)
    (ns, doc, rev), (_, gone, rev_gone) = seen
    assert (ns, doc, rev) == ("audit/sdk", {"v": 1}, release["revision"])  # still an int for old listeners
    assert isinstance(rev, Revision) and (rev.trace_id, rev.principal) == (TRACE, "test-writer")
    assert gone is None and rev_gone == deleted["revision"]  # delete events carry no audit stamp (mirror.py)
    applied = [r.getMessage() for r in caplog.records if r.getMessage().startswith("applied audit/sdk@")]
    assert f"applied audit/sdk@{release['revision']} (trace {TRACE}, by test-writer)" in applied


async def test_schema_writes_are_audited(
    server: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 16 item 8: setting or deleting a schema (which binds every writer under it) left no audit line."""
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    url = f"{server.url}/v1/schemas/audited/"
    async with http.put(url, json={"schema": {"type": "object"}}, headers=server.auth()) as resp:
        assert resp.status == 201
        revision = (await resp.json())["revision"]
    async with http.delete(url, headers=server.auth()) as resp:
        assert resp.status == 200
    async with http.get(url) as resp:  # reads stay out of the audit log
        assert resp.status == 404
    lines = audit_lines(caplog)
    assert [(a["event"], a["action"], a["method"], a["namespace"], a["principal"]) for a in lines] == [
        ("write", "schema", "PUT", "audited/", "test-writer"), ("write", "schema", "DELETE", "audited/", "test-writer")]
    assert lines[0]["revision"] == revision and lines[1]["revision"] > revision
