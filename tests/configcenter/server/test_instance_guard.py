"""The fleet registry under attack (issue 16, item 3): bounded, unspoofable, scoped.

Real servers on a real etcd: a flood of new instances stops at the caps with nothing more written
(keys counted in etcd itself), a record changes or goes only with its capability, the capability is
never listed, scoped tokens see only the instances (and parts of them) inside their scope, and
removals are in the audit log.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest
from etcd3aio import prefix_range_end

from configcenter.server.security import Principal
from configcenter.server.settings import Limits, WatchTuning
from helpers import READER, TEST_PRINCIPALS, WRITER, RunningServer, eventually

TTL = 3.0
FAST = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0, instance_ttl=TTL)
OTHER = "other-reader-token"


def caps(total: int, per_client: int) -> Limits:
    return Limits(max_body_bytes=64 * 1024, subscriber_queue=256, history_ring=1000, max_instances=total,
                  max_instances_per_client=per_client)


def body(ns: str = "payment/routes", applied: int | None = 1, **extra: Any) -> dict[str, Any]:
    return {"service": "svc", "labels": {"zone": "a"}, "selectors": [ns], "mode": "live",
            "namespaces": {ns: {"applied": applied, "source": "live"}}, **extra}


async def post(http: aiohttp.ClientSession, server: RunningServer, iid: str, report: dict[str, Any],
               token: str | None = None) -> tuple[int, dict[str, Any], str | None]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{server.url}/v1/instances/{iid}/report", data=orjson.dumps(report),
                         headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After")


async def delete(http: aiohttp.ClientSession, server: RunningServer, iid: str, lease: str | None = None,
                 token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {} if lease is None else {"lease": lease}
    async with http.delete(f"{server.url}/v1/instances/{iid}", params=params, headers=headers) as resp:
        return resp.status


async def keys_in_etcd(server: RunningServer) -> int:
    """Instance records under the prefix, counted by etcd itself."""
    start = f"{server.prefix}instances/".encode()
    kv = server.runtime.client.kv
    assert kv is not None
    return int((await kv.get(start, range_end=prefix_range_end(start), count_only=True)).count)


async def listing(http: aiohttp.ClientSession, server: RunningServer, token: str | None = None,
                  **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"{server.url}/v1/instances", params=params, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_a_flood_of_new_instances_stops_at_the_caps(make_server: Any, http: aiohttp.ClientSession) -> None:
    """Row 5: fresh ids from one anonymous address, then from a token: 429 with Retry-After past the
    per-client cap, then past the global one; nothing more in etcd; live instances go on."""
    server = await make_server(watch=FAST, limits=caps(total=30, per_client=20))
    answers = [await post(http, server, f"flood-{n}", body()) for n in range(60)]
    assert [a[0] for a in answers] == [200] * 20 + [429] * 40
    status, refused, retry_after = answers[-1]
    assert refused["error"]["code"] == "too_many_requests" and "max_instances_per_client" in refused["error"]["message"]
    assert retry_after == "1"  # a heartbeat (ttl / 3): when the next list may show leases gone
    assert await keys_in_etcd(server) == 20
    before = await server.runtime.store.current_revision()
    assert (await post(http, server, "flood-99", body()))[0] == 429
    assert await server.runtime.store.current_revision() == before  # a refusal writes nothing
    tokened = [(await post(http, server, f"team-{n}", body(), token=READER))[0] for n in range(15)]
    assert tokened == [200] * 10 + [429] * 5  # its own per-client count, but the fleet holds 30
    assert "limits.max_instances)" in (await post(http, server, "team-99", body(), token=READER))[1]["error"]["message"]
    assert await keys_in_etcd(server) == 30
    first = answers[0][1]  # a live instance keeps reporting at the cap: heartbeats and changes
    assert (await post(http, server, "flood-0", body(lease=first["lease"], stored=first["digest"])))[0] == 200
    status, changed, _ = await post(http, server, "flood-0", body(applied=2, lease=first["lease"]))
    assert status == 200 and changed["written"] is True
    assert await delete(http, server, "flood-1", answers[1][1]["lease"]) == 204  # leaving frees a place

    async def admitted() -> bool:
        return (await post(http, server, "flood-new", body()))[0] == 200

    await eventually(admitted, timeout=5, interval=0.3)
    assert await keys_in_etcd(server) == 30


async def test_caps_over_two_replicas_hold_within_the_documented_bound(make_server: Any,
                                                                       http: aiohttp.ClientSession) -> None:
    """Each replica admits against its own view: a client's cap can be passed by what the other
    replica admitted since its last refresh (at most one cap per replica), then both refuse."""
    a = await make_server(watch=FAST, limits=caps(total=1000, per_client=10))
    b = await make_server(watch=FAST, limits=caps(total=1000, per_client=10), prefix=a.prefix)
    statuses = [(await post(http, (a, b)[n % 2], f"spread-{n}", body()))[0] for n in range(40)]
    admitted = statuses.count(200)
    assert 10 <= admitted <= 20 and await keys_in_etcd(a) == admitted  # at most processes * cap
    await a.runtime.instances.fleet()  # the next refresh (at most a heartbeat away) sees them all
    await b.runtime.instances.fleet()
    assert [(await post(http, s, f"late-{s is a}", body()))[0] for s in (a, b)] == [429, 429]


async def test_only_the_holder_changes_or_removes_a_record(make_server: Any, http: aiohttp.ClientSession) -> None:
    """Spoofed reports and goodbyes are 409 and write nothing, with a leaked lease id, a guessed
    neighbour of the attacker's own lease, or the attacker's own capability; so a lagging instance
    cannot be reported 'applied' by someone else (``push --wait`` cannot succeed falsely)."""
    server = await make_server(watch=FAST)
    async with http.put(f"{server.url}/v1/namespaces/payment/routes", headers=server.auth(),
                        json={"kind": "config", "doc": {"v": 1}}) as resp:
        revision = int((await resp.json())["revision"])
    status, victim, _ = await post(http, server, "victim-1", body(applied=None))
    assert status == 200
    _, attacker, _ = await post(http, server, "attacker-1", body())
    lease_id = int(attacker["lease"][:16], 16)  # etcd hands out lease ids in sequence
    guesses = [None, victim["lease"][:16], attacker["lease"],
               *(f"{lease_id + d:016x}{attacker['lease'][16:]}" for d in (-4, -2, -1, 1, 2))]
    before = await server.runtime.store.current_revision()
    for lease in guesses:
        extra = {} if lease is None else {"lease": lease}
        status, answer, retry_after = await post(http, server, "victim-1", body(applied=revision, **extra))
        assert status == 409, f"report with lease {lease} for another's record: {status} {answer}"
        assert (answer["error"]["code"], retry_after) == ("conflict", "3")
        if lease is not None:
            assert await delete(http, server, "victim-1", lease) == 409
    assert await server.runtime.store.current_revision() == before
    assert len(victim["lease"]) == 32  # lease id and secret: the id alone is guessable (above)
    async with http.get(f"{server.url}/v1/namespaces/payment/routes/rollout") as resp:
        rows = {r["id"]: r for r in (await resp.json())["instances"]}
    assert rows["victim-1"]["status"] == "pending"
    status, own, _ = await post(http, server, "victim-1", body(applied=revision, lease=victim["lease"]))
    assert status == 200 and own["written"] and own["lease"] == victim["lease"]
    assert await delete(http, server, "victim-1", victim["lease"]) == 204
    assert await delete(http, server, "victim-1", victim["lease"]) == 404


async def test_leases_are_never_listed(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(watch=FAST)
    _, answer, _ = await post(http, server, "quiet-1", body())
    status, fleet = await listing(http, server)
    assert status == 200 and [i["id"] for i in fleet["instances"]] == ["quiet-1"]
    item = fleet["instances"][0]
    assert not {"lease", "holder", "owner", "digest"} & set(item)
    async with http.get(f"{server.url}/v1/instances") as resp:
        raw = await resp.text()
    assert answer["lease"] not in raw and answer["lease"][:16] not in raw and answer["lease"][16:] not in raw


@pytest.fixture
async def guarded(make_server: Any) -> RunningServer:
    scoped = Principal.from_token("payment-reader", "payment-reader-token", "reader", ["payment/"])
    other = Principal.from_token("orders-reader", OTHER, "reader", ["orders/"])
    payment_admin = Principal.from_token("payment-admin", "payment-admin-token", "admin", ["payment/"])
    server: RunningServer = await make_server(watch=FAST, read_requires_token=True,
                                              tokens=(*TEST_PRINCIPALS, scoped, other, payment_admin))
    return server


async def test_scoped_tokens_see_only_instances_inside_their_scope(guarded: RunningServer,
                                                                   http: aiohttp.ClientSession) -> None:
    both = {**body(), "selectors": ["payment/", "orders/"],
            "namespaces": {"payment/routes": {"applied": 1, "source": "live"},
                           "orders/config": {"applied": 2, "source": "live"}}}
    assert (await post(http, guarded, "both-1", both, token=READER))[0] == 200
    assert (await post(http, guarded, "orders-1", body("orders/config"), token=OTHER))[0] == 200
    assert (await post(http, guarded, "all-1", {**body(), "selectors": [], "namespaces": {}}, token=READER))[0] == 200
    status, seen = await listing(http, guarded, "payment-reader-token")
    assert status == 200
    items = {i["id"]: i for i in seen["instances"]}
    assert set(items) == {"both-1", "all-1"}  # the orders-only instance is not shown at all
    assert items["both-1"]["namespaces"] == {"payment/routes": {"applied": 1, "source": "live"}}
    assert items["both-1"]["selectors"] == ["payment/"] and items["all-1"]["selectors"] == ["payment/"]
    assert (await listing(http, guarded, "payment-reader-token", ns="orders/config"))[0] == 403
    status, only = await listing(http, guarded, "payment-reader-token", ns="payment/routes")
    assert status == 200 and {i["id"] for i in only["instances"]} == {"both-1", "all-1"}
    async with http.get(f"{guarded.url}/v1/namespaces/orders/config/rollout",
                        headers=guarded.auth("payment-reader-token")) as resp:
        assert resp.status == 403
    assert (await listing(http, guarded, READER))[1]["count"] == 3  # an unscoped token sees the fleet


async def test_removals_are_audited_and_eviction_is_for_admins(guarded: RunningServer, http: aiohttp.ClientSession,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.audit")
    _, mine, _ = await post(http, guarded, "leaving-1", body(), token=READER)
    assert await delete(http, guarded, "leaving-1", mine["lease"], token=READER) == 204
    assert (await post(http, guarded, "orders-2", body("orders/config"), token=OTHER))[0] == 200
    assert (await post(http, guarded, "pay-2", body(), token=READER))[0] == 200
    assert await delete(http, guarded, "orders-2") == 401  # removing without the lease: an operator's act
    assert await delete(http, guarded, "orders-2", token=OTHER) == 403  # a reader is no operator
    assert await delete(http, guarded, "orders-2", token="payment-admin-token") == 403  # outside its scope
    assert await delete(http, guarded, "pay-2", token="payment-admin-token") == 204
    assert await delete(http, guarded, "orders-2", token=WRITER) == 204
    assert await delete(http, guarded, "orders-2", token=WRITER) == 404
    lines = [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "configcenter.audit"]
    removals = [(e["action"], e["principal"], e["path"], e["status"]) for e in lines if e["event"] == "write"]
    assert removals == [("goodbye", "test-reader", "/v1/instances/leaving-1", 204),
                        ("evict", "payment-admin", "/v1/instances/pay-2", 204),
                        ("evict", "test-writer", "/v1/instances/orders-2", 204),
                        ("evict", "test-writer", "/v1/instances/orders-2", 404)]
    assert {"pay-2", "orders-2", "leaving-1"}.isdisjoint(i["id"] for i in (await listing(http, guarded, READER))[1]
                                                           ["instances"])


async def test_an_instance_rewriting_its_record_in_a_loop_is_slowed(make_server: Any,
                                                                    http: aiohttp.ClientSession) -> None:
    """Changes of one's own record are writes too: a burst, then about one a second (429 beyond);
    heartbeats are not counted."""
    server = await make_server(watch=FAST)
    _, first, _ = await post(http, server, "flappy-1", body(applied=0))
    results = [await post(http, server, "flappy-1", body(applied=n, lease=first["lease"])) for n in range(1, 16)]
    statuses = [r[0] for r in results]
    assert statuses[:10] == [200] * 10 and 429 in statuses[10:], statuses
    refused = next(r for r in results if r[0] == 429)
    assert refused[1]["error"]["details"]["limit"] == "instance_writes" and refused[2] == "1"
    before = await server.runtime.store.current_revision()
    last = max(n for n, r in enumerate(results, start=1) if r[0] == 200)  # what is stored now
    status, heartbeat, _ = await post(http, server, "flappy-1", body(applied=last, lease=first["lease"],
                                                                     stored=results[last - 1][1]["digest"]))
    assert status == 200 and heartbeat["written"] is False  # a heartbeat is not a write: never slowed
    assert await server.runtime.store.current_revision() == before

    async def accepted_again() -> bool:
        return (await post(http, server, "flappy-1", body(applied=99, lease=first["lease"])))[0] == 200

    await eventually(accepted_again, timeout=5, interval=0.5)


async def test_a_record_of_an_older_server_is_upgraded_by_its_bare_lease(make_server: Any,
                                                                         http: aiohttp.ClientSession) -> None:
    """Rolling upgrade: a record written by a server before capabilities (lease id in the value, no
    secret) is renewed by its bare lease id, which then gets a capability; nothing else holds it."""
    server = await make_server(watch=FAST)
    client = server.runtime.client
    assert client.lease is not None and client.kv is not None
    lease = int((await client.lease.grant(30)).ID)
    old = {**body(), "id": "old-1", "digest": "0" * 32, "updated_at": 1.0, "lease": f"{lease:x}"}
    await client.kv.put(f"{server.prefix}instances/old-1".encode(), orjson.dumps(old), lease=lease)
    assert (await post(http, server, "old-1", body(lease=f"{lease + 2:x}")))[0] == 409
    status, answer, _ = await post(http, server, "old-1", body(lease=f"{lease:x}"))
    assert status == 200 and answer["written"] and answer["lease"][:16] == f"{lease:016x}"
    assert len(answer["lease"]) == 32
    assert (await post(http, server, "old-1", body(lease=f"{lease:x}")))[0] == 409  # the bare id is spent
    status, again, _ = await post(http, server, "old-1", body(lease=answer["lease"], stored=answer["digest"]))
    assert status == 200 and again["written"] is False
    assert "lease" not in (await listing(http, server))[1]["instances"][0]
