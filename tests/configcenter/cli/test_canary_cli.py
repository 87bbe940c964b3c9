"""``configcenter push --canary``, ``canary``, ``promote``, ``abort`` against real SDKs, servers and etcd.

Exit codes are written as the literals docs/cli.md promises (0, 2, 5), not imported.
"""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_helpers import run_cli, write
from configcenter.cli.canary_cli import parse_selector
from configcenter.cli.client import CliError
from configcenter.server.settings import WatchTuning
from configcenter_sdk import ConfigClient
from configcenter_sdk.canary import CANARY_SEED
from configcenter_sdk.routing import stable_bucket
from helpers import RunningServer, eventually

FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=2.0)
ROUTES = ("kind: routes\ndoc:\n  service: web\n  rules: [{{id: all, route: {{cluster: {c}}}}}]\n"
          "  default: {{cluster: {c}}}\n")
STRICT = ("kind: routes\ndoc:\n  service: web\n  rules:\n"
          "    - {id: rx, match: {headers: [{name: x-release, regex: 'v[0-9]+-(alpha|beta|gamma)'}]},"
          " route: {cluster: special}}\n  default: {cluster: v9}\n")


def test_selectors_parse_into_targets() -> None:
    assert parse_selector("10%") == {"percent": 10}
    assert parse_selector("zone=az1, 25%") == {"labels": {"zone": "az1"}, "percent": 25}
    assert parse_selector("id:web-2,id:web-1") == {"instances": ["web-1", "web-2"]}
    for bad, words in [("", "empty term"), ("10%,", "empty term"), ("150%", "0 to 100"), ("x%", "0 to 100"),
                       ("10%,20%", "more than one percent"), ("id:", "needs an instance id"),
                       ("zone=", "KEY=VALUE"), ("zone=a,zone=b", "two values"), ("web-1", "is not N%"),
                       ("k=" + "v" * 200, "target.labels")]:
        with pytest.raises(CliError, match=re.escape(words)) as caught:
            parse_selector(bad)
        assert caught.value.code == 2


async def test_bad_selectors_and_flags_exit_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    doc = write(tmp_path, "r.yaml", ROUTES.format(c="v1"))
    unreachable = ["--server", "http://127.0.0.1:9"]  # nothing listens: exit 3 if the CLI tried
    for argv in (["push", "a/b", doc, "--canary", "ten%"], ["push", "a/b", doc, "--abort-on-reject"],
                 ["canary", "a/b", "zone"], ["canary", "a/canary", "10%"], ["promote", "a/promote"]):
        result = await run_cli(capsys, None, *unreachable, *argv)
        assert result.code == 2, (argv, result)
        assert result.err.startswith("error: "), result.err


def ids(below: int, count: int, *, outside: bool = False) -> list[str]:
    found = [f"web-{i}" for i in range(10_000) if (stable_bucket(f"web-{i}", CANARY_SEED) < below) != outside]
    return found[:count]


def sdk(server: RunningServer, instance_id: str, **kw: Any) -> ConfigClient:
    return ConfigClient([server.url], ["team/routes"], service="web", instance_id=instance_id, backoff_max=0.3,
                        idle_timeout=2.0, **kw)


async def test_canary_walkthrough_start_wait_grow_promote_abort_and_history(
    make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    server = await make_server(watch=FAST)
    v1, v2, v3 = (write(tmp_path, f"{c}.yaml", ROUTES.format(c=c)) for c in ("v1", "v2", "v3"))
    assert (await run_cli(capsys, server, "push", "team/routes", v1)).code == 0
    (early,), (late,) = ids(10, 1), [i for i in ids(50, 10) if stable_bucket(i, CANARY_SEED) >= 10][:1]
    (never,) = ids(50, 1, outside=True)
    async with AsyncExitStack() as stack:
        clients = {i: await stack.enter_async_context(sdk(server, i)) for i in (early, late, never)}
        await eventually(lambda: all(c.reports_sent for c in clients.values()))

        started = await run_cli(capsys, server, "push", "team/routes", v2, "--canary", "10%", "-m", "try v2",
                                "--wait", "--wait-timeout", "15")
        assert started.code == 0, started
        assert re.search(r"started a canary of team/routes for 10% at revision \d+", started.out), started.out
        assert re.search(r"canary \(started at \d+, 10%\): 1/1 applied", started.out), started.out
        assert "base: 2/2 applied" in started.out and re.search(r"web-\d+ +web +canary +applied", started.out)
        cluster = {i: c.route("web", {}).cluster for i, c in clients.items()}
        assert cluster == {early: "v2", late: "v1", never: "v1"}

        shown = await run_cli(capsys, server, "get", "team/routes")
        assert shown.code == 0 and "cluster: v1" in shown.out
        assert re.search(r"# canary started at revision \d+ for 10%: candidate kind routes\n(.|\n)*cluster: v2",
                         shown.out), shown.out

        grown = await run_cli(capsys, server, "canary", "team/routes", "50%", "--wait", "--wait-timeout", "15")
        assert grown.code == 0 and "canary of team/routes now for 50%" in grown.out, grown
        assert {i: c.route("web", {}).cluster for i, c in clients.items()} == {early: "v2", late: "v2", never: "v1"}
        rollout = orjson.loads((await run_cli(capsys, server, "rollout", "team/routes", "--json")).out)
        assert rollout["canary"]["summary"]["applied"] == 2 and rollout["base"]["summary"]["applied"] == 1

        promoted = await run_cli(capsys, server, "promote", "team/routes", "--wait", "--wait-timeout", "15")
        assert promoted.code == 0 and "promoted the canary of team/routes" in promoted.out, promoted
        assert {c.route("web", {}).cluster for c in clients.values()} == {"v2"}

        assert (await run_cli(capsys, server, "push", "team/routes", v3, "--canary", f"id:{never}")).code == 0
        refused = await run_cli(capsys, server, "push", "team/routes", v1)
        assert refused.code == 1 and "has an active canary" in refused.err, refused
        aborted = await run_cli(capsys, server, "abort", "team/routes", "-m", "not today")
        assert aborted.code == 0 and "aborted the canary of team/routes" in aborted.out, aborted

        history = (await run_cli(capsys, server, "history", "team/routes")).out
        ops = [line.split()[2] for line in history.splitlines()[1:]]
        assert ops == ["canary_abort", "canary_start", "promote", "canary_update", "canary_start", "push"], history
        assert f"canary_start id:{never}" in history and "canary_update 50%" in history
        assert re.search(r"promote canary \d+", history) and "try v2" in history


async def test_push_canary_abort_on_reject_wait_exits_5(
    make_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    server = await make_server(watch=FAST)
    assert (await run_cli(capsys, server, "push", "team/routes", write(tmp_path, "v1.yaml", ROUTES.format(c="v1")))
            ).code == 0
    (strict_id,) = ids(10, 1)
    async with sdk(server, strict_id, max_regex_program_size=20) as strict:
        await eventually(lambda: strict.reports_sent)
        result = await run_cli(capsys, server, "push", "team/routes", write(tmp_path, "s.yaml", STRICT),
                               "--canary", "10%", "--abort-on-reject", "--wait", "--wait-timeout", "15")
        assert result.code == 5, result
        assert strict_id in result.err and ("program size 24" in result.err or "aborted" in result.err), result.err

        async def aborted() -> dict[str, Any] | None:
            current = orjson.loads((await run_cli(capsys, server, "get", "team/routes", "--json")).out)
            return current if current["op"] == "canary_abort" else None

        current = await eventually(aborted, timeout=10)
        assert current["message"].startswith(f"aborted: instance {strict_id} rejected revision ")
        assert current["principal"] == "configcenter" and "canary" not in current
        assert strict.route("web", {}).cluster == "v1"  # it never left the base
        history = (await run_cli(capsys, server, "history", "team/routes")).out
        assert [line.split()[2] for line in history.splitlines()[1:3]] == ["canary_abort", "canary_start"]
