"""``configcenter edit`` with a real editor process (a script as ``$EDITOR``), a real server and etcd.

The editor script follows a plan, one step per time it is opened: text replacements, and
optionally a concurrent push made while "the user is editing".
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cli_helpers import run_cli
from helpers import WRITER, RunningServer

EDITOR = """#!{python}
import json, pathlib, sys, urllib.request
plan_path, log_path = pathlib.Path({plan!r}), pathlib.Path({log!r})
plan = json.loads(plan_path.read_text())
step = plan.pop(0)
plan_path.write_text(json.dumps(plan))
target = pathlib.Path(sys.argv[1])
text = target.read_text()
with log_path.open("a") as log:
    log.write(json.dumps(text) + "\\n")
if "put" in step:
    request = urllib.request.Request(step["put"]["url"], data=json.dumps(step["put"]["body"]).encode(), method="PUT",
                                     headers={{"Authorization": "Bearer " + step["put"]["token"],
                                              "Content-Type": "application/json"}})
    urllib.request.urlopen(request).read()
for old, new in step.get("replace", []):
    text = text.replace(old, new)
target.write_text(text)
"""


def editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[dict[str, Any]]) -> Path:
    """Install the scripted editor with ``steps``; returns its log (one JSON string per opening)."""
    plan, log, script = tmp_path / "plan.json", tmp_path / "editor.log", tmp_path / "editor.py"
    plan.write_text(json.dumps(steps))
    script.write_text(EDITOR.format(python=sys.executable, plan=str(plan), log=str(log)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("EDITOR", str(script))
    return log


def opened(log: Path) -> list[str]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


async def run_edit(capsys: pytest.CaptureFixture[str], server: RunningServer, ns: str) -> tuple[int, str, str]:
    result = await run_cli(capsys, server, "edit", ns)
    return result.code, result.out, result.err


async def put(http: aiohttp.ClientSession, server: RunningServer, ns: str, kind: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json={"kind": kind, "doc": doc},
                        headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        return int((await resp.json())["revision"])


async def current(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> Any:
    async with http.get(f"{server.url}/v1/namespaces/{ns}") as resp:
        return await resp.json()


async def test_edit_pushes_the_change_with_a_diff(server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    revision = await put(http, server, "team/app", "config", {"timeout_ms": 100, "retries": 2})
    log = editor(tmp_path, monkeypatch, [{"replace": [["timeout_ms: 100", "timeout_ms: 250"]]}])
    code, out, err = await run_edit(capsys, server, "team/app")
    assert code == 0, err
    assert f"revision: {revision}" in opened(log)[0] and "namespace: team/app" in opened(log)[0]
    assert "-timeout_ms: 100\n+timeout_ms: 250\n" in out and "pushed team/app revision" in out
    release = await current(http, server, "team/app")
    assert release["doc"] == {"timeout_ms": 250, "retries": 2} and release["message"] == "configcenter edit"


async def test_an_invalid_edit_reopens_the_editor_with_the_error(
        server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    await put(http, server, "shop/routes", "routes", {"service": "shop", "rules": [], "default": {"cluster": "blue"}})
    before = await server.runtime.store.current_revision()
    log = editor(tmp_path, monkeypatch, [
        {"replace": [["cluster: blue", "cluster: 5"]]},  # the route schema wants a string
        {"replace": [["cluster: 5", "cluster: green"]]},
    ])
    code, out, err = await run_edit(capsys, server, "shop/routes")
    assert code == 0 and "+  cluster: green" in out, err
    second = opened(log)[1]
    assert second.startswith("# error: ") and "violates its schema at $.default" in second.splitlines()[0]
    assert (await current(http, server, "shop/routes"))["doc"]["default"] == {"cluster": "green"}
    assert await server.runtime.store.current_revision() == before + 1  # one push: the valid one


async def test_cancel_and_still_invalid_write_nothing(server: RunningServer, http: aiohttp.ClientSession,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    await put(http, server, "team/app", "config", {"a": 1})
    before = await server.runtime.store.current_revision()
    editor(tmp_path, monkeypatch, [{}])  # saved unchanged
    code, out, _ = await run_edit(capsys, server, "team/app")
    assert code == 0 and "edit cancelled" in out
    editor(tmp_path, monkeypatch, [{"replace": [["a: 1", "a: [1"]]}, {}])  # broken YAML, then given up
    code, _, err = await run_edit(capsys, server, "team/app")
    assert code == 2 and "still invalid" in err
    assert await server.runtime.store.current_revision() == before


async def test_a_concurrent_change_while_editing_is_exit_4(server: RunningServer, http: aiohttp.ClientSession,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    await put(http, server, "team/app", "config", {"a": 1})
    other = {"url": f"{server.url}/v1/namespaces/team/app", "token": WRITER,
             "body": {"kind": "config", "doc": {"a": 7}}}
    editor(tmp_path, monkeypatch, [{"put": other, "replace": [["a: 1", "a: 2"]]}])
    code, _, err = await run_edit(capsys, server, "team/app")
    assert code == 4 and "changed since revision" in err, err
    kept = Path(err.rsplit("your version is in ", 1)[1].strip())
    assert "a: 2" in kept.read_text()
    assert (await current(http, server, "team/app"))["doc"] == {"a": 7}
