"""``configcenter freeze|unfreeze|freezes|policy|proposals|proposal|approve|reject`` and ``push`` under
release control, against a real server and etcd (the README's walkthrough)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from cli_helpers import run_cli, write
from configcenter.server.security import Principal
from helpers import TEST_PRINCIPALS, RunningServer

ALICE, BOB = "alice-token", "bob-token"
PRINCIPALS = (*TEST_PRINCIPALS, Principal.from_token("alice", ALICE, "writer"),
              Principal.from_token("bob", BOB, "writer"))


@pytest.fixture
async def rc(make_server: Any) -> RunningServer:
    server: RunningServer = await make_server(tokens=PRINCIPALS)
    return server


async def test_freeze_refuses_a_push_with_its_reason_until_unfrozen(
        rc: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = write(tmp_path, "cfg.yaml", "kind: config\ndoc: {v: 1}\n")
    assert (await run_cli(capsys, rc, "push", "pay/cfg", doc)).code == 0
    frozen = await run_cli(capsys, rc, "freeze", "pay/", "--reason", "incident 4711", "--until", "2h")
    assert frozen.code == 0 and re.match(r"froze pay/ \(incident 4711\) until 20\S+Z at revision \d+", frozen.out)
    refused = await run_cli(capsys, rc, "push", "pay/cfg", doc, token=ALICE)
    assert refused.code == 1 and "incident 4711" in refused.err and "HTTP 423" in refused.err, refused
    listed = await run_cli(capsys, rc, "freezes")
    assert "pay/" in listed.out and "incident 4711" in listed.out and "yes" in listed.out
    override = await run_cli(capsys, rc, "push", "pay/cfg", doc, "--override-freeze", "hotfix", "--json")
    assert override.code == 0 and orjson.loads(override.out)["freeze_override"].startswith("hotfix")
    assert (await run_cli(capsys, rc, "unfreeze", "pay/")).code == 0
    assert (await run_cli(capsys, rc, "push", "pay/cfg", doc, token=ALICE)).code == 0
    bad = await run_cli(capsys, rc, "freeze", "pay/", "--reason", "x", "--until", "tomorrow")
    assert bad.code == 1 and "RFC 3339" in bad.err and "HTTP 400" in bad.err
    assert (await run_cli(capsys, rc, "freeze", "Bad_Name", "--reason", "x")).code == 2


async def test_policy_proposal_approval_by_another_principal(
        rc: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "one.yaml", "kind: config\ndoc: {timeout_ms: 100}\n")
    second = write(tmp_path, "two.yaml", "kind: config\ndoc: {timeout_ms: 250}\n")
    assert (await run_cli(capsys, rc, "push", "pay/cfg", first)).code == 0
    set_ = await run_cli(capsys, rc, "policy", "set", "pay/", "--require-review", "--allow-rollback")
    assert set_.code == 0 and "review required, rollbacks without review" in set_.out, set_
    held = await run_cli(capsys, rc, "push", "pay/cfg", second, "-m", "raise timeout", token=ALICE)
    match = re.match(r"proposal ([0-9a-f]{12}) created, awaiting approval", held.out)
    assert held.code == 0 and match, held
    proposal = match.group(1)
    listed = await run_cli(capsys, rc, "proposals", "pay/cfg")
    assert proposal in listed.out and "alice" in listed.out and "raise timeout" in listed.out
    shown = await run_cli(capsys, rc, "proposal", proposal)
    assert "-timeout_ms: 100" in shown.out and "+timeout_ms: 250" in shown.out, shown.out
    own = await run_cli(capsys, rc, "approve", proposal, token=ALICE)
    assert own.code == 1 and "may not approve" in own.err and "HTTP 403" in own.err
    approved = await run_cli(capsys, rc, "approve", proposal, token=BOB)
    assert approved.code == 0 and "proposed by alice, approved by bob" in approved.out, approved
    history = await run_cli(capsys, rc, "history", "pay/cfg", "--json")
    entries = orjson.loads(history.out)["entries"]
    assert (entries[0]["principal"], entries[0]["approved_by"]) == ("alice", "bob")
    assert (await run_cli(capsys, rc, "proposals")).out.startswith("no open proposals")
    again = await run_cli(capsys, rc, "push", "pay/cfg", first, "--json", token=ALICE)
    answer = orjson.loads(again.out)
    assert again.code == 0 and answer["proposal"]["op"] == "push"
    rejected = await run_cli(capsys, rc, "reject", answer["proposal"]["id"], token=BOB)
    assert rejected.code == 0 and rejected.out.startswith(f"rejected {answer['proposal']['id']}")
    got = await run_cli(capsys, rc, "policy", "get", "pay/", "--json")
    assert orjson.loads(got.out)["require_review"] is True
    assert (await run_cli(capsys, rc, "policy", "delete", "pay/")).code == 0
    assert (await run_cli(capsys, rc, "policy", "list")).out.startswith("no review policies")
