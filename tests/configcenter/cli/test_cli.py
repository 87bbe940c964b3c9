"""The ``configcenter`` CLI against a real server and a real etcd.

The server runs in the test's event loop, so every CLI call runs in a worker
thread (``asyncio.to_thread``) with its output captured by ``capsys``.
"""

from __future__ import annotations

import asyncio
import io
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cli_helpers import Printed, Result, call_main, run_cli, write
from configcenter.cli.embedded_etcd import free_port
from helpers import WRITER, RunningServer, eventually, pushed_status

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NS = "team/app"


def pushed_revision(result: Result) -> int:
    match = re.fullmatch(r"pushed \S+ revision (\d+) \(version \d+\)\n", result.out)
    assert match, result
    return int(match.group(1))


async def history_of(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> Any:
    async with http.get(f"{server.url}/v1/namespaces/{ns}/history") as resp:
        return await resp.json() if resp.status == 200 else resp.status


async def test_round_trip(server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    envelope = write(tmp_path, "v1.yaml", "kind: config\nmessage: first\ndoc:\n  a: 1\n  b: {c: x}\n")
    plain = write(tmp_path, "v2.json", '{"a": 2, "b": {"c": "y"}}')
    r1 = pushed_revision(await run_cli(capsys, server, "push", NS, envelope))
    r2 = pushed_revision(await run_cli(capsys, server, "push", NS, plain, "--kind", "config", "-m", "second"))
    assert r2 > r1

    got = await run_cli(capsys, server, "get", NS)
    assert got.code == 0
    assert got.out.splitlines()[0] == f"# {NS} revision {r2} version 2 kind config"
    assert "a: 2" in got.out and "c: y" in got.out
    old = await run_cli(capsys, server, "get", NS, "--revision", str(r1), "--format", "json")
    assert orjson.loads(old.out) == {"a": 1, "b": {"c": "x"}}
    full = await run_cli(capsys, server, "--json", "get", NS)
    assert orjson.loads(full.out)["revision"] == r2

    listed = await run_cli(capsys, server, "list")
    assert listed.out.splitlines()[0].split() == ["NS", "KIND", "REVISION", "VERSION", "PRINCIPAL", "MESSAGE"]
    assert listed.out.splitlines()[1].split()[:4] == [NS, "config", str(r2), "2"]

    diff = await run_cli(capsys, server, "diff", NS, str(r1), str(r2))
    assert "-a: 1" in diff.out and "+a: 2" in diff.out
    same = await run_cli(capsys, server, "diff", NS, str(r2))
    assert same.out.startswith("no differences")
    structured = orjson.loads((await run_cli(capsys, server, "diff", NS, str(r1), "--json")).out)
    assert {"path": "$.a", "op": "changed", "old": 1, "new": 2} in structured["changes"]

    rolled = await run_cli(capsys, server, "rollback", NS, "--to-revision", str(r1), "-m", "back")
    r3 = int(re.fullmatch(rf"rolled back {NS} to revision {r1} as revision (\d+)\n", rolled.out).group(1))  # type: ignore[union-attr]
    history = (await run_cli(capsys, server, "history", NS)).out.splitlines()
    assert history[0].split() == ["REVISION", "VERSION", "OP", "PRINCIPAL", "TRACE", "TIME", "MESSAGE"]
    assert history[1].split()[:5] == [str(r3), "3", "rollback", "from", str(r1)]
    assert [line.split()[0] for line in history[1:]] == [str(r3), str(r2), str(r1)]
    assert "a: 1" in (await run_cli(capsys, server, "get", NS)).out


async def test_history_paging_delete_and_stdin(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"n: {i}\n".encode())))
        assert (await run_cli(capsys, server, "push", NS, "-", "--kind", "config")).code == 0
    page = await run_cli(capsys, server, "history", NS, "--limit", "2")
    lines = page.out.splitlines()
    assert len(lines) == 4 and lines[-1].startswith(f"# older: configcenter history {NS} --limit 2 --before ")
    deleted = await run_cli(capsys, server, "delete", NS, "-m", "bye")
    assert deleted.code == 0 and deleted.out.startswith(f"deleted {NS} at revision ")
    gone = await run_cli(capsys, server, "get", NS)
    assert gone.code == 1 and "(HTTP 404)" in gone.err


async def test_invalid_yaml_exits_2_and_sends_nothing(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "good.yaml", "kind: config\ndoc: {a: 1}\n")
    assert (await run_cli(capsys, server, "push", NS, good)).code == 0
    before = await history_of(http, server, NS)
    bad = write(tmp_path, "bad.yaml", "kind: config\ndoc: {a: [1, 2\n")
    result = await run_cli(capsys, server, "push", NS, bad)
    assert result.code == 2 and result.out == ""
    assert re.fullmatch(rf"error: {re.escape(bad)}: invalid YAML: .+ \(line \d+, column \d+\)\n", result.err)
    assert await history_of(http, server, NS) == before
    fresh = await run_cli(capsys, server, "push", "team/other", bad)
    assert fresh.code == 2 and await history_of(http, server, "team/other") == 404


async def test_local_input_errors_exit_2(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = write(tmp_path, "plain.yaml", "a: 1\n")
    missing_kind = await run_cli(capsys, server, "push", NS, plain)
    assert missing_kind.code == 2 and "--kind" in missing_kind.err
    assert (await run_cli(capsys, server, "push", NS, str(tmp_path / "nope.yaml"), "--kind", "config")).code == 2
    assert (await run_cli(capsys, server, "push", "Bad/NS", plain, "--kind", "config")).code == 2
    assert (await run_cli(capsys, server, "route", NS, "--header", "no-equals")).code == 2
    assert (await run_cli(capsys, server, "rollback", NS)).code == 2  # --to-revision is required
    assert (await run_cli(capsys, server, "frobnicate")).code == 2
    levels = ["l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = write(tmp_path, "bomb.yaml", "kind: config\ndoc:\n" + "".join(f"  {line}\n" for line in levels))
    refused = await run_cli(capsys, server, "push", NS, bomb)
    assert refused.code == 2 and "max_doc_bytes" in refused.err and "Traceback" not in refused.err
    deep = write(tmp_path, "deep.yaml", "kind: config\ndoc: {a: " + "[" * 100 + "]" * 100 + "}\n")
    assert "depth limit exceeded" in (await run_cli(capsys, server, "push", NS, deep)).err
    assert await history_of(http, server, NS) == 404


async def test_server_errors_exit_1(server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad_table = write(tmp_path, "routes.yaml",
                      "service: x\nrules:\n  - {id: r1, match: {}, route: {cluster: 5}}\ndefault: {cluster: a}\n")
    schema = await run_cli(capsys, server, "push", NS, bad_table, "--kind", "routes")
    assert schema.code == 1 and "$.rules[0]" in schema.err and "(HTTP 422)" in schema.err
    assert len(schema.err.splitlines()) == 1
    doc = write(tmp_path, "doc.yaml", "a: 1\n")
    pushed_revision(await run_cli(capsys, server, "push", NS, doc, "--kind", "config"))
    unknown = await run_cli(capsys, server, "get", NS, "--revision", "999999")
    assert unknown.code == 1 and unknown.err.startswith("error: ") and "(HTTP 404)" in unknown.err
    no_token = await run_cli(capsys, server, "push", NS, doc, "--kind", "config", token=None)
    assert no_token.code == 1 and "(HTTP 401)" in no_token.err


async def test_stale_if_revision_exits_4(server: RunningServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = write(tmp_path, "doc.yaml", "a: 1\n")
    r1 = pushed_revision(await run_cli(capsys, server, "push", NS, doc, "--kind", "config"))
    r2 = pushed_revision(await run_cli(capsys, server, "push", NS, doc, "--kind", "config", "--if-revision", str(r1)))
    stale = await run_cli(capsys, server, "push", NS, doc, "--kind", "config", "--if-revision", str(r1))
    assert stale.code == 4 and "(HTTP 412)" in stale.err
    assert (await run_cli(capsys, server, "rollback", NS, "--to-revision", str(r1), "--if-revision", str(r1))).code == 4
    assert (await run_cli(capsys, server, "delete", NS, "--if-revision", str(r1))).code == 4
    assert (await run_cli(capsys, server, "delete", NS, "--if-revision", str(r2))).code == 0


async def test_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = await run_cli(capsys, None, "--server", url, "list")
    assert result.code == 3 and result.err.startswith(f"error: cannot reach server at {url}: ")
    watch = await run_cli(capsys, None, "watch", "--server", url, "--count", "1")
    assert watch.code == 3


async def test_environment_supplies_server_and_token(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONFIGCENTER_SERVER", server.url)
    monkeypatch.setenv("CONFIGCENTER_TOKEN", WRITER)
    doc = write(tmp_path, "doc.yaml", "a: 1\n")
    assert (await run_cli(capsys, None, "push", NS, doc, "--kind", "config", token=None)).code == 0


async def test_watch_sees_changes_in_order(server: RunningServer, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    doc = write(tmp_path, "doc.yaml", "a: 0\n")
    since = pushed_revision(await run_cli(capsys, server, "push", "w/zero", doc, "--kind", "config"))
    watcher = asyncio.create_task(asyncio.to_thread(
        call_main, ["--server", server.url, "watch", "w/", "--since", str(since), "--count", "3", "--timeout", "20"]))
    pushed = []
    for i in range(3):
        async with aiohttp.ClientSession() as session, session.put(
            f"{server.url}/v1/namespaces/w/n{i}", json={"kind": "config", "doc": {"i": i}, "message": f"m {i}"},
            headers=server.auth(),
        ) as resp:
            assert resp.status == 201
            pushed.append((await resp.json())["revision"])
    assert await watcher == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{rev} w/n{i} push (version 1) m {i}" for i, rev in enumerate(pushed)]


async def test_watch_json_lines_and_timeout(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    result = await run_cli(capsys, server, "--json", "watch", "w/", "--count", "1", "--timeout", "1")
    assert result.code == 1 and "timed out" in result.err
    first = orjson.loads(result.out.splitlines()[0])
    assert first["event"] == "reset" and first["data"]["namespaces"] == {}


async def test_route_matches_server_evaluation(
    server: RunningServer, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = "payment/routes"
    revision = pushed_revision(await run_cli(capsys, server, "push", ns, str(EXAMPLES / "payment-routes.yaml")))
    result = await run_cli(capsys, server, "route", ns, "--header", "x-release=v2-beta")
    assert result.out == f"cluster payment-canary (rule beta-header, revision {revision})\n"
    for headers in ({"x-release": "v2-beta"}, {"x-user-id": "alice"}, {}):
        argv = [arg for name, value in headers.items() for arg in ("-H", f"{name}={value}")]
        cli_answer = orjson.loads((await run_cli(capsys, server, "--json", "route", ns, *argv)).out)
        async with http.post(f"{server.url}/v1/namespaces/{ns}/route", json={"headers": headers}) as resp:
            assert cli_answer == await resp.json()


async def test_serve_rejects_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "server.yaml", "listen: [1\n")
    result = await run_cli(capsys, None, "serve", "--config", bad, token=None)
    assert result.code == 2 and len(result.err.splitlines()) == 1 and "line" in result.err
    unknown = write(tmp_path, "unknown.yaml", "bogus: 1\n")
    assert (await run_cli(capsys, None, "serve", "--config", unknown, token=None)).code == 2


async def test_watch_reconnects_and_resumes(make_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    first = await make_server()
    port, prefix = first.settings.port, first.prefix

    async def push(srv: RunningServer, name: str) -> int:
        async with aiohttp.ClientSession() as session, session.put(
            f"{srv.url}/v1/namespaces/r/{name}", json={"kind": "config", "doc": {"n": name}}, headers=srv.auth()
        ) as resp:
            answer = await resp.json()
            assert resp.status == pushed_status(answer), answer
            return int(answer["revision"])

    since = await push(first, "a")
    watcher = asyncio.create_task(asyncio.to_thread(
        call_main, ["--server", first.url, "watch", "r/", "--since", str(since), "--count", "2", "--timeout", "30"]))
    rev_b = await push(first, "b")
    printed = Printed(capsys)
    await eventually(lambda: printed.has(f"{rev_b} r/b push"))  # the watcher saw b: now the server goes away
    await first.stop()
    second = await make_server(port=port, prefix=prefix)
    rev_c = await push(second, "c")
    assert await watcher == 0
    captured = printed.read()
    assert captured.out.splitlines() == [f"{rev_b} r/b push (version 1)", f"{rev_c} r/c push (version 1)"]
    assert "reconnecting" in captured.err


HOSTILE = "clear\x1b[2Jscreen\rover\x07bell\x9b31m"


async def test_control_characters_from_the_server_print_escaped(
        server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16 item 8: release messages, authors and documents reached the terminal raw."""
    body = {"kind": "config", "doc": {"k": HOSTILE, HOSTILE: 1}, "message": HOSTILE, "author": HOSTILE}
    async with aiohttp.ClientSession() as session, session.put(
            f"{server.url}/v1/namespaces/esc/app", json=body, headers=server.auth()) as resp:
        assert resp.status == 201
        since = (await resp.json())["revision"] - 1
    escaped = "clear\\u001b[2Jscreen\\rover\\u0007bell\\u009b31m"
    results = {argv: await run_cli(capsys, server, *argv) for argv in (
        ("history", "esc/app"), ("list",), ("get", "esc/app"), ("--json", "get", "esc/app"),
        ("get", "esc/app", "-o", "json"), ("watch", "esc/", "--since", str(since), "--count", "1", "--timeout", "10"),
        ("--json", "history", "esc/app"))}
    for argv, result in results.items():
        assert result.code == 0, (argv, result)
        raw = [c for c in result.out + result.err if c in "\x1b\r\x07\x9b"]
        assert raw == [], (argv, result.out)
    assert escaped in results[("history", "esc/app")].out and escaped in results[("list",)].out
    assert escaped in results[("watch", "esc/", "--since", str(since), "--count", "1", "--timeout", "10")].out
    full = orjson.loads(results[("--json", "get", "esc/app")].out)  # still JSON, still the same strings
    assert full["message"] == HOSTILE and full["author"] == HOSTILE and full["doc"] == body["doc"]
    assert orjson.loads(results[("get", "esc/app", "-o", "json")].out)["doc"] == body["doc"]
    assert orjson.loads(results[("--json", "history", "esc/app")].out)["entries"][0]["message"] == HOSTILE
