"""Release control on a real server and a real etcd: review policies (four eyes), proposals, change freezes.

Each refusal also checks that etcd's revision did not move (nothing was written).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.server.etcd import GatedWrite
from configcenter.server.release import MAX_OPEN
from configcenter.server.security import Principal
from helpers import TEST_PRINCIPALS, WRITER, RunningServer, envelope

ALICE, BOB, CAROL = "alice-token", "bob-token", "carol-token"
PRINCIPALS = (*TEST_PRINCIPALS, Principal.from_token("alice", ALICE, "writer"),
              Principal.from_token("bob", BOB, "writer"),
              Principal.from_token("carol", CAROL, "writer", ["other/"]))


@pytest.fixture
async def rc(make_server: Any) -> RunningServer:
    server: RunningServer = await make_server(tokens=PRINCIPALS)
    return server


async def call(http: aiohttp.ClientSession, server: RunningServer, method: str, path: str, token: str = WRITER,
               **kw: Any) -> tuple[int, Any]:
    async with http.request(method, server.url + path, headers=server.auth(token), **kw) as resp:
        return resp.status, await resp.json(content_type=None)


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any], token: str = WRITER,
               query: str = "") -> tuple[int, Any]:
    return await call(http, server, "PUT", f"/v1/namespaces/{ns}{query}", token, json=envelope(doc, message="m"))


async def revision(server: RunningServer) -> int:
    return await server.runtime.store.current_revision()


async def test_a_proposal_is_not_released_by_its_author_but_by_another_writer(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await push(http, rc, "pay/cfg", {"v": 1}))[0] == 201
    status, policy = await call(http, rc, "PUT", "/v1/policies/pay/", json={"require_review": True})
    assert status == 201 and policy["target"] == "pay/" and policy["require_review"] is True, policy
    status, held = await push(http, rc, "pay/cfg", {"v": 2}, ALICE)
    assert status == 202, held
    proposal = held["proposal"]
    assert proposal["principal"] == "alice" and proposal["ns"] == "pay/cfg" and "awaiting approval" in held["message"]
    assert (await rc.runtime.store.get("pay/cfg")).doc == {"v": 1}  # nothing released
    status, shown = await call(http, rc, "GET", f"/v1/proposals/{proposal['id']}", BOB)
    assert status == 200 and shown["diff"]["changes"] == [{"path": "$.v", "op": "changed", "old": 1, "new": 2}], shown
    assert shown["stale"] is False and shown["proposal"]["doc"] == {"v": 2}
    before = await revision(rc)
    status, refused = await call(http, rc, "POST", f"/v1/proposals/{proposal['id']}/approve", ALICE)
    assert status == 403 and "may not approve" in refused["error"]["message"], refused
    assert await revision(rc) == before
    status, refused = await call(http, rc, "POST", f"/v1/proposals/{proposal['id']}/approve", CAROL)
    assert status == 403 and "outside its scope" in refused["error"]["message"]  # a writer, but not of pay/
    status, release = await call(http, rc, "POST", f"/v1/proposals/{proposal['id']}/approve", BOB)
    assert status == 200, release
    assert (release["principal"], release["approved_by"], release["proposal"]) == ("alice", "bob", proposal["id"])
    current = await rc.runtime.store.get("pay/cfg")
    assert current.doc == {"v": 2} and current.approved_by == "bob" and current.principal == "alice"
    status, hist = await call(http, rc, "GET", "/v1/namespaces/pay/cfg/history")
    assert [(e["principal"], e.get("approved_by")) for e in hist["entries"]] == [("alice", "bob"),
                                                                                  ("test-writer", None)]
    status, _ = await call(http, rc, "POST", f"/v1/proposals/{proposal['id']}/approve", BOB)
    assert status == 404  # released once only


async def test_an_approval_on_a_stale_base_is_refused_and_reject_removes(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await call(http, rc, "PUT", "/v1/policies/pay/cfg", json={"require_review": True}))[0] == 201
    first = (await push(http, rc, "pay/cfg", {"v": 1}, ALICE))[1]["proposal"]["id"]
    second = (await push(http, rc, "pay/cfg", {"v": 2}, ALICE))[1]["proposal"]["id"]
    status, listed = await call(http, rc, "GET", "/v1/proposals?ns=pay/cfg")
    assert status == 200 and [p["id"] for p in listed["proposals"]] == [first, second]
    assert (await call(http, rc, "POST", f"/v1/proposals/{first}/approve", BOB))[0] == 201
    before = await revision(rc)
    status, stale = await call(http, rc, "POST", f"/v1/proposals/{second}/approve", BOB)
    assert status == 409 and "has changed since" in stale["error"]["message"], stale
    assert await revision(rc) == before
    status, rejected = await call(http, rc, "POST", f"/v1/proposals/{second}/reject", BOB)
    assert status == 200 and rejected["rejected_by"] == "bob"
    assert (await call(http, rc, "GET", f"/v1/proposals/{second}"))[0] == 404
    assert (await call(http, rc, "GET", "/v1/proposals?ns=pay/cfg"))[1]["proposals"] == []


async def test_rollback_under_allow_rollback_needs_no_review_and_without_it_is_proposed(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    one = (await push(http, rc, "pay/cfg", {"v": 1}))[1]["revision"]
    assert (await push(http, rc, "pay/cfg", {"v": 2}))[0] == 200
    policy = {"require_review": True, "allow_rollback": True}
    assert (await call(http, rc, "PUT", "/v1/policies/pay/", json=policy))[0] == 201
    status, back = await call(http, rc, "POST", "/v1/namespaces/pay/cfg/rollback", ALICE, json={"to_revision": one})
    assert status == 200 and back["op"] == "rollback" and "approved_by" not in back, back
    assert (await call(http, rc, "PUT", "/v1/policies/pay/", json={"require_review": True}))[0] == 200
    status, held = await call(http, rc, "POST", "/v1/namespaces/pay/cfg/rollback", ALICE, json={"to_revision": one})
    assert status == 202 and held["proposal"]["op"] == "rollback", held
    status, release = await call(http, rc, "POST", f"/v1/proposals/{held['proposal']['id']}/approve", BOB)
    assert status == 200 and release["op"] == "rollback" and release["from_revision"] == one, release
    # a narrower policy exempts a namespace from a broader one
    assert (await call(http, rc, "PUT", "/v1/policies/pay/sandbox", json={"require_review": False}))[0] == 201
    assert (await push(http, rc, "pay/sandbox", {"v": 1}, ALICE))[0] == 201


async def test_a_freeze_refuses_a_push_with_its_reason_and_writes_nothing(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await push(http, rc, "pay/cfg", {"v": 1}))[0] == 201
    freeze = {"reason": "incident 4711: payments down", "until": "2h"}
    status, set_ = await call(http, rc, "PUT", "/v1/freezes/pay/", json=freeze)
    assert status == 201 and set_["active"] is True and set_["principal"] == "test-writer", set_
    before = await revision(rc)
    for ns in ("pay/cfg", "pay/new/thing"):
        status, refused = await push(http, rc, ns, {"v": 2}, ALICE)
        assert status == 423 and refused["error"]["code"] == "frozen", refused
        message = refused["error"]["message"]
        assert "incident 4711: payments down" in message and "test-writer" in message and "until 20" in message
        assert refused["error"]["details"]["target"] == "pay/"
    assert (await call(http, rc, "DELETE", "/v1/namespaces/pay/cfg"))[0] == 423
    assert await revision(rc) == before
    assert (await push(http, rc, "payments/cfg", {"v": 1}, ALICE))[0] == 201  # not under pay/
    status, listed = await call(http, rc, "GET", "/v1/freezes")
    assert [f["target"] for f in listed["freezes"]] == ["pay/"]
    assert (await call(http, rc, "DELETE", "/v1/freezes/pay/?message=resolved"))[0] == 200
    assert (await push(http, rc, "pay/cfg", {"v": 2}, ALICE))[0] == 200
    status, hist = await call(http, rc, "GET", "/v1/freeze-history/pay/")
    assert [e["op"] for e in hist["entries"]] == ["delete", "set"]


async def test_a_freeze_set_between_the_guard_read_and_the_commit_still_wins(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    """The freeze is written after the gate has read (and admitted) the write, before its commit: the
    commit's compare on the freeze key fails, the retry reads the freeze and refuses."""
    assert (await push(http, rc, "pay/cfg", {"v": 1}))[0] == 201
    gate = rc.runtime.release.gate
    admit, calls = gate.admit, []

    async def admit_then_freeze(write: GatedWrite) -> Any:
        release = await admit(write)
        calls.append(write.ns)
        if len(calls) == 1:  # between this check and the commit
            await rc.runtime.release.freezes.write("pay/cfg", {"reason": "raced in", "from": None, "until": None},
                                                   write.origin)
        return release

    gate.admit = admit_then_freeze  # type: ignore[method-assign]
    before = await revision(rc)
    status, refused = await push(http, rc, "pay/cfg", {"v": 2}, ALICE)
    assert status == 423 and "raced in" in refused["error"]["message"], refused
    assert len(calls) == 1 and await revision(rc) == before + 1  # only the freeze was written
    assert (await rc.runtime.store.get("pay/cfg")).doc == {"v": 1}


async def test_an_admin_overrides_a_freeze_with_a_reason_and_it_is_audited(
        rc: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    assert (await call(http, rc, "PUT", "/v1/freezes/pay/cfg", json={"reason": "release week"}))[0] == 201
    before = await revision(rc)
    status, refused = await push(http, rc, "pay/cfg", {"v": 1}, ALICE, "?override_freeze=hotfix")
    assert status == 403 and "admin role" in refused["error"]["message"]
    status, refused = await push(http, rc, "pay/cfg", {"v": 1}, WRITER, "?override_freeze=")
    assert status == 400 and refused["error"]["code"] == "invalid_argument"
    assert await revision(rc) == before
    status, release = await push(http, rc, "pay/cfg", {"v": 1}, WRITER, "?override_freeze=hotfix%20for%20INC-9")
    assert status == 201 and release["freeze_override"].startswith("hotfix for INC-9 (freeze on pay/cfg"), release
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "configcenter.audit"]
    assert any(line["action"] == "freeze" and line["method"] == "PUT" for line in lines)
    written = [line for line in lines if line["action"] == "push" and line["status"] == 201]
    assert written[-1]["override_freeze"] == "hotfix for INC-9"
    # an expired freeze governs nothing (the server's clock decides)
    rc.runtime.release.gate.clock = lambda: time.time() + 7200
    assert (await call(http, rc, "PUT", "/v1/freezes/pay/cfg", json={"reason": "short", "until": "1h"}))[0] == 200
    assert (await push(http, rc, "pay/cfg", {"v": 2}, ALICE))[0] == 200


async def test_bad_release_control_input_gets_a_400_and_writes_nothing(
        rc: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await revision(rc)
    for path, body, code in [
        ("/v1/freezes/pay/", {"until": "2h"}, "invalid_body"),  # no reason
        ("/v1/freezes/pay/", {"reason": "x", "until": "tomorrow"}, "invalid_body"),
        ("/v1/freezes/pay/", {"reason": "x", "until": "2020-01-01T00:00:00Z"}, "invalid_body"),
        ("/v1/freezes/pay/", {"reason": "x", "until": "2030-01-01T00:00:00"}, "invalid_body"),  # no offset
        ("/v1/freezes/pay/", {"reason": "x\x1b[2J"}, "invalid_body"),
        ("/v1/freezes/Bad_Target", {"reason": "x"}, "invalid_namespace"),
        ("/v1/policies/pay/", {"require_review": "yes"}, "invalid_body"),
        ("/v1/policies/pay/", {"require_review": True, "extra": 1}, "invalid_body"),
    ]:
        status, answer = await call(http, rc, "PUT", path, json=body)
        assert (status, answer["error"]["code"]) == (400, code), (path, body, answer)
    assert (await call(http, rc, "POST", "/v1/proposals/nothex/approve", BOB))[0] == 400
    assert (await call(http, rc, "PUT", "/v1/freezes/pay/", ALICE, json={"reason": "x"}))[0] == 403
    assert await revision(rc) == before


async def test_open_proposals_are_capped_per_namespace(rc: RunningServer, http: aiohttp.ClientSession) -> None:
    assert (await call(http, rc, "PUT", "/v1/policies/pay/cfg", json={"require_review": True}))[0] == 201
    for i in range(MAX_OPEN):
        assert (await push(http, rc, "pay/cfg", {"v": i}, ALICE))[0] == 202
    before = await revision(rc)
    status, refused = await push(http, rc, "pay/cfg", {"v": 99}, ALICE)
    assert status == 409 and "open proposals" in refused["error"]["message"], refused
    assert await revision(rc) == before
