"""``configcenter rollout`` and ``push/rollback --wait`` against real SDK clients, servers and etcd.

Every exit code of the wait: 0 (all live subscribed instances applied), 5 (one rejected: who and
why on stderr), 6 (timeout: who is still pending on stderr). 5 and 6 are written here as the
literals docs/cli.md promises, not imported: renumbering them in the code must fail these tests.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cli_helpers import run_cli, write
from configcenter.server.settings import WatchTuning
from configcenter_sdk import ConfigClient
from helpers import RunningServer, eventually

FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=2.0)
# a hand-written report's lease outlives any stall of a loaded machine (it is revoked at the end of the test)
LASTING = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0,
                      instance_ttl=30.0)
PLAIN = "kind: routes\ndoc:\n  service: web\n  rules: [{id: all, route: {cluster: v1}}]\n  default: {cluster: v1}\n"
# RE2 program size 24: the server (limit 100) takes it, an SDK limited to 20 rejects it
STRICT = ("kind: routes\ndoc:\n  service: web\n  rules:\n"
          "    - {id: rx, match: {headers: [{name: x-release, regex: 'v[0-9]+-(alpha|beta|gamma)'}]},"
          " route: {cluster: canary}}\n  default: {cluster: v2}\n")


def sdk(server: RunningServer, service: str, **kw: Any) -> ConfigClient:
    return ConfigClient([server.url], ["team/routes"], service=service, backoff_max=0.3, idle_timeout=2.0, **kw)


async def test_rollout_wait_exit_codes(make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       http: aiohttp.ClientSession) -> None:
    a = await make_server(watch=FAST)
    b = await make_server(watch=FAST, prefix=a.prefix)
    plain, strict_file = write(tmp_path, "plain.yaml", PLAIN), write(tmp_path, "strict.yaml", STRICT)
    pushed = await run_cli(capsys, b, "push", "team/routes", plain)
    match = re.match(r"pushed team/routes revision (\d+)", pushed.out)
    assert pushed.code == 0 and match, pushed
    first = int(match.group(1))
    async with sdk(a, "web") as web, sdk(b, "strict", max_regex_program_size=20) as strict:
        await eventually(lambda: web.reports_sent and strict.reports_sent)  # both are known to the fleet
        done = await run_cli(capsys, b, "rollout", "team/routes", "--wait", "--timeout", "10")
        assert done.code == 0, done
        assert f"team/routes revision {first}: 2/2 applied, 0 pending, 0 rejected" in done.out
        assert web.identity.instance_id in done.out and strict.identity.instance_id in done.out

        refused = await run_cli(capsys, b, "push", "team/routes", strict_file, "--wait", "--wait-timeout", "10")
        assert refused.code == 5, refused
        assert re.search(rf"rejected team/routes@\d+: {strict.identity.instance_id} \(strict\): .*program size 24",
                         refused.err), refused.err
        shown = await run_cli(capsys, a, "rollout", "team/routes")
        assert shown.code == 0 and "1/2 applied, 0 pending, 1 rejected" in shown.out
        assert (await run_cli(capsys, a, "rollout", "team/routes", "--wait", "--timeout", "5")).code == 5

        back = await run_cli(capsys, a, "rollback", "team/routes", "--to-revision", str(first), "--wait")
        assert back.code == 0, back
        assert "2/2 applied" in back.out
        as_json = await run_cli(capsys, a, "rollout", "team/routes", "--json")
        body = orjson.loads(as_json.out)
        assert body["complete"] is True and body["summary"]["applied"] == 2


async def test_rollout_wait_times_out_naming_the_pending(make_server: Any, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         http: aiohttp.ClientSession) -> None:
    server = await make_server(watch=LASTING)
    config = write(tmp_path, "c.yaml", "kind: config\ndoc: {a: 1}\n")
    assert (await run_cli(capsys, server, "push", "team/other", config)).code == 0
    async with stuck_instance(http, server, "team/other"):
        waited = await run_cli(capsys, server, "rollout", "team/other", "--wait", "--timeout", "0.5")
        assert waited.code == 6, waited
        assert "still pending after 0.5s: stuck-1 (stuck)" in waited.err
        assert "0/1 applied, 1 pending" in waited.out
    assert (await run_cli(capsys, server, "rollout", "team/rollout")).code == 2  # reserved name: usage error


async def test_push_wait_timeout_exits_6_naming_the_pending(make_server: Any, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            http: aiohttp.ClientSession) -> None:
    server = await make_server(watch=LASTING)
    first, second = (write(tmp_path, f"{n}.yaml", f"kind: config\ndoc: {{a: {n}}}\n") for n in (1, 2))
    assert (await run_cli(capsys, server, "push", "team/gate", first)).code == 0
    async with stuck_instance(http, server, "team/gate"):
        waited = await run_cli(capsys, server, "push", "team/gate", second, "--wait", "--wait-timeout", "0.5")
        assert waited.code == 6, waited
        assert re.match(r"pushed team/gate revision \d+", waited.out), waited  # the push itself went through
        assert "still pending after 0.5s: stuck-1 (stuck)" in waited.err
        assert "0/1 applied, 1 pending" in waited.out


@contextlib.asynccontextmanager
async def stuck_instance(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> AsyncIterator[None]:
    """An instance that says it is live but never applies ``ns`` (a hand-written report, no SDK); it says
    goodbye at the end, so its lease does not expire later under another test on the shared etcd."""
    stuck = {"service": "stuck", "selectors": [ns], "mode": "live", "namespaces": {}}
    async with http.post(f"{server.url}/v1/instances/stuck-1/report", data=orjson.dumps(stuck)) as resp:
        assert resp.status == 200, await resp.text()
        lease = (await resp.json())["lease"]
    try:
        yield
    finally:
        async with http.delete(f"{server.url}/v1/instances/stuck-1", params={"lease": lease}) as resp:
            assert resp.status == 204, await resp.text()
