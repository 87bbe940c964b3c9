"""The SDK side of canary releases: membership, the effective document per track, status and report,
restart from disk, fallback, and resume across canary operations against a real server and etcd.

A record of ``docs/<ns>`` may carry ``canary`` (``docs/architecture.md``, "Canary releases"): an
instance that is a member of its target runs ``canary.candidate``, every other one the record's
``doc``.  The decision is the SDK's, from the record alone, so the same record decides the same way
live, after a resume, after a reset and from a disk snapshot.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.server.etcd import KeyLayout
from configcenter_sdk import ConfigClient, SnapshotStore
from configcenter_sdk._report import namespace_report
from configcenter_sdk._sse import SSEEvent
from configcenter_sdk.canary import CANARY_SEED, is_member, parse_target
from configcenter_sdk.routing import stable_bucket
from configcenter_sdk.snapshot import _checksum
from helpers import RunningServer, eventually

NS = "app/routes"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens, the client starts in fallback


def table(cluster: str) -> dict[str, Any]:
    return {"service": "payment", "rules": [], "default": {"cluster": cluster}}


def canary(started: int, target: dict[str, Any], doc: dict[str, Any], kind: str = "routes") -> dict[str, Any]:
    return {"started": started, "target": target, "candidate": {"kind": kind, "doc": doc},
            "abort_on_reject": False, "principal": "alice", "message": "try it", "trace_id": "t1"}


def release(rev: int, doc: dict[str, Any], *, prev: int | None, op: str = "push",
            cny: dict[str, Any] | None = None, ns: str = NS) -> dict[str, Any]:
    out = {"ns": ns, "revision": rev, "version": rev, "op": op, "kind": "routes", "doc": doc, "prev_revision": prev}
    if cny is not None:
        out["canary"] = cny
    return out


def ids_in_buckets(low: int, high: int, count: int = 1) -> list[str]:
    """Instance ids whose stable bucket lies in [low, high): members from ``high`` percent on."""
    found = [i for i in (f"web-{n}" for n in range(5000)) if low <= stable_bucket(i, CANARY_SEED) < high]
    assert len(found) >= count
    return found[:count]


def client(instance_id: str, cache_dir: Path | None = None, **labels: str) -> tuple[ConfigClient, list[Any]]:
    """A client driven by hand (``feed``); ``seen``: every callback as (revision, default cluster)."""
    c = ConfigClient([UNREACHABLE], ["app/"], instance_id=instance_id, labels=labels, report=False,
                     cache_dir=cache_dir, start_timeout=0.5, connect_timeout=0.2, backoff_max=0.3)
    seen: list[Any] = []
    c.on_change(None, lambda ns, doc, rev: seen.append((int(rev), None if doc is None else doc["default"]["cluster"])))
    return c, seen


async def feed(c: ConfigClient, *releases: dict[str, Any]) -> None:
    """Apply change events exactly as the subscription would (parsed from their SSE text)."""
    for r in releases:
        await c._stream.apply(SSEEvent("change", orjson.dumps(r).decode(), f"abc:{r['revision']}"), "test")


def track(c: ConfigClient, ns: str = NS) -> tuple[str, int | None]:
    st = c.status().namespaces[ns]
    return st.track, st.candidate_revision


def cluster(c: ConfigClient) -> str:
    return c.route("payment", {}).cluster


# ---------------------------------------------------------------- membership


def test_membership_by_labels_ids_and_percent() -> None:
    az1 = {"zone": "az1", "service": "checkout"}
    assert is_member(parse_target({"labels": {"zone": "az1"}}), "x", az1)
    assert not is_member(parse_target({"labels": {"zone": "az2"}}), "x", az1)
    assert not is_member(parse_target({"labels": {"zone": "az1", "tier": "db"}}), "x", az1)  # every label counts
    ids = parse_target({"instances": ["web-1", "web-2"]})
    assert is_member(ids, "web-2", {}) and not is_member(ids, "web-3", {})
    low, high = ids_in_buckets(0, 10)[0], ids_in_buckets(90, 100)[0]
    ten = parse_target({"percent": 10})
    assert is_member(ten, low, {}) and not is_member(ten, high, {})
    # labels narrow the percent and the ids: a low bucket in another zone is out
    assert not is_member(parse_target({"labels": {"zone": "az2"}, "percent": 10}), low, az1)
    assert is_member(parse_target({"labels": {"zone": "az1"}, "instances": [high], "percent": 10}), high, az1)
    assert not is_member(parse_target({"percent": 0}), low, {})
    assert is_member(parse_target({"percent": 100}), high, {})
    for bad in ({"percent": 101}, {"percent": True}, {"labels": []}, {"instances": "web-1"}, {"zone": "az1"}, []):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_growing_percent_only_adds_instances() -> None:
    fleet = [f"i-{n}" for n in range(1000)]
    members = {p: {i for i in fleet if is_member(parse_target({"percent": p}), i, {})} for p in (5, 25, 50)}
    assert members[5] <= members[25] <= members[50]
    for p, got in members.items():  # a stable hash: about p percent of any large fleet
        assert abs(len(got) - p * 10) < 40, (p, len(got))


async def test_growing_5_25_50_never_moves_a_member_out() -> None:
    first, later = ids_in_buckets(0, 5)[0], ids_in_buckets(20, 25)[0]
    early, early_seen = client(first)
    late, late_seen = client(later)
    ops = [release(10, table("stable"), prev=None),
           release(11, table("stable"), prev=10, op="canary_start", cny=canary(11, {"percent": 5}, table("cand"))),
           release(12, table("stable"), prev=11, op="canary_update", cny=canary(11, {"percent": 25}, table("cand"))),
           release(13, table("stable"), prev=12, op="canary_update", cny=canary(11, {"percent": 50}, table("cand")))]
    tracks: dict[str, list[str]] = {first: [], later: []}
    for op in ops:
        for c in (early, late):
            await feed(c, op)
            tracks[c.identity.instance_id].append(track(c)[0])
    assert tracks[first] == ["base", "canary", "canary", "canary"]  # in at 5 %, never out again
    assert tracks[later] == ["base", "base", "canary", "canary"]
    assert early_seen == [(10, "stable"), (11, "cand"), (12, "cand"), (13, "cand")]
    assert late_seen == [(10, "stable"), (11, "stable"), (12, "cand"), (13, "cand")]


# ---------------------------------------------------------------- effective document per track


async def test_effective_document_route_table_status_and_callbacks_per_track() -> None:
    member, member_seen = client("web-a", zone="az1")
    outsider, outsider_seen = client("web-b", zone="az2")
    start = release(21, table("stable"), prev=20, op="canary_start",
                    cny=canary(21, {"labels": {"zone": "az1"}}, table("cand")))
    for c in (member, outsider):
        await feed(c, release(20, table("stable"), prev=None), start)
    assert (cluster(member), cluster(outsider)) == ("cand", "stable")
    assert member.get(NS) == table("cand") and outsider.get(NS) == table("stable")
    assert track(member) == ("canary", 21) and track(outsider) == ("base", None)
    assert member.status().namespaces[NS].revision == outsider.status().namespaces[NS].revision == 21

    abort = release(22, table("stable"), prev=21, op="canary_abort")
    restart = release(23, table("stable"), prev=22, op="canary_start",
                      cny=canary(23, {"labels": {"zone": "az1"}}, table("cand2")))
    promote = release(24, table("cand2"), prev=23, op="promote")
    for c in (member, outsider):
        await feed(c, abort)
        assert cluster(c) == "stable" and track(c) == ("base", None)  # abort returns members to the base
        await feed(c, restart, promote)
        assert cluster(c) == "cand2" and track(c) == ("base", None)  # promoted: everyone, plain record
    assert member_seen == [(20, "stable"), (21, "cand"), (22, "stable"), (23, "cand2"), (24, "cand2")]
    assert outsider_seen == [(20, "stable"), (21, "stable"), (22, "stable"), (23, "stable"), (24, "cand2")]
    # a rollback during a canary ends it (the record has no canary): the member is back on a plain document
    await feed(member, release(25, table("cand2"), prev=24, op="canary_start",
                               cny=canary(25, {"labels": {"zone": "az1"}}, table("cand3"))),
               release(26, table("old"), prev=25, op="rollback"))
    assert cluster(member) == "old" and track(member) == ("base", None)


async def test_a_member_rejects_a_candidate_table_that_does_not_compile() -> None:
    member, member_seen = client("web-a", zone="az1")
    outsider, _ = client("web-b", zone="az2")
    bad = {"service": "payment", "rules": [{"id": "x", "match": {"headers": [{"name": "a", "regex": "("}]},
                                            "route": {"cluster": "c"}}], "default": {"cluster": "cand"}}
    start = release(31, table("stable"), prev=30, op="canary_start", cny=canary(31, {"labels": {"zone": "az1"}}, bad))
    for c in (member, outsider):
        await feed(c, release(30, table("stable"), prev=None), start)
    assert cluster(member) == "stable"  # the last good table stays
    report = namespace_report(member._state, "live")[NS]
    assert report["applied"] == 30 and report["rejected"] == 31 and report["track"] == "canary"
    assert namespace_report(outsider._state, "live")[NS] == {"applied": 31, "source": "live"}
    assert member_seen == [(30, "stable"), (31, "cand")]  # listeners hear of the candidate (as of any table)


async def test_an_invalid_canary_is_rejected_and_the_last_good_document_stays(caplog: Any) -> None:
    c, seen = client("web-a")
    await feed(c, release(40, table("stable"), prev=None))
    bad = release(41, table("stable"), prev=40, op="canary_start", cny=canary(41, {"percent": 101}, table("cand")))
    await feed(c, bad)
    assert cluster(c) == "stable" and c.get(NS) == table("stable") and track(c) == ("base", None)
    status = c.status()
    assert [(e.ns, e.revision) for e in status.errors] == [(NS, 41)] and "percent" in status.errors[0].message
    assert namespace_report(c._state, "live")[NS]["rejected"] == 41
    assert any("rejected" in r.getMessage() for r in caplog.records)
    assert seen == [(40, "stable")]  # no callback for a record it could not use
    for broken in ({"started": 41, "target": {}, "candidate": {"kind": "routes"}},  # no candidate doc
                   {"started": 41, "target": {}, "candidate": {"kind": "yaml", "doc": {}}},
                   {"started": -1, "target": {}, "candidate": {"kind": "routes", "doc": table("x")}}):
        d, _ = client("web-a")
        await feed(d, release(40, table("stable"), prev=None), {**bad, "canary": broken})
        assert cluster(d) == "stable" and [e.revision for e in d.status().errors] == [41]
    # the next good record heals it
    await feed(c, release(42, table("stable"), prev=41, op="canary_start", cny=canary(42, {}, table("cand"))))
    assert cluster(c) == "cand" and track(c) == ("canary", 42)
    assert "rejected" not in namespace_report(c._state, "live")[NS]


# ---------------------------------------------------------------- report


async def test_the_report_carries_the_track_and_the_server_takes_it(server: RunningServer,
                                                                   http: aiohttp.ClientSession) -> None:
    member, _ = client("canary-report-a", zone="az1")
    await feed(member, release(50, table("stable"), prev=None, ns="app/a"),
               release(51, table("stable"), prev=None, ns="app/b", op="canary_start",
                       cny=canary(51, {"labels": {"zone": "az1"}}, table("cand"))))
    reporter = member._make_reporter()
    body = reporter.body()
    assert body["namespaces"] == {"app/a": {"applied": 50, "source": "memory"},  # fed by hand: not live
                                  "app/b": {"applied": 51, "source": "memory", "track": "canary"}}
    url = f"{server.url}/v1/instances/canary-report-a"
    async with http.post(url + "/report", json=body, headers=server.auth()) as resp:
        assert resp.status == 200, await resp.text()
        lease = (await resp.json())["lease"]
    try:
        async with http.get(f"{server.url}/v1/instances", headers=server.auth()) as resp:
            listed = {i["id"]: i for i in (await resp.json())["instances"]}
        assert listed["canary-report-a"]["namespaces"]["app/b"]["track"] == "canary"
        assert "track" not in listed["canary-report-a"]["namespaces"]["app/a"]
        wrong = {**body, "lease": lease, "namespaces": {"app/b": {"applied": 51, "track": "blue"}}}
        async with http.post(url + "/report", json=wrong, headers=server.auth()) as resp:
            assert resp.status == 400 and "track" in await resp.text()
    finally:
        async with http.delete(url, params={"lease": lease}, headers=server.auth()) as resp:
            assert resp.status == 204


# ---------------------------------------------------------------- restart from disk, fallback


async def test_restart_from_disk_knows_its_track_and_fallback_serves_it(tmp_path: Path) -> None:
    first, _ = client("web-a", tmp_path / "a", zone="az1")
    await feed(first, release(60, table("stable"), prev=None),
               release(61, table("stable"), prev=60, op="canary_start",
                       cny=canary(61, {"labels": {"zone": "az1"}}, table("cand"))))
    await first.close()
    on_disk = SnapshotStore(tmp_path / "a").load_strict(NS)
    assert on_disk is not None and on_disk.track == "canary" and on_disk.record is not None
    assert on_disk.record["doc"] == table("stable") and on_disk.doc == table("cand")

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    again, seen = client("web-a", tmp_path / "a", zone="az1")
    other, other_seen = client("web-b", tmp_path / "b", zone="az2")  # the same files, another identity
    await again.start()
    await other.start()
    try:
        assert again.mode == other.mode == "fallback"  # the service is down, the backend too
        assert cluster(again) == "cand" and track(again) == ("canary", 61) and seen == [(61, "cand")]
        assert again.status().namespaces[NS].source == "disk"
        assert cluster(other) == "stable" and track(other) == ("base", None) and other_seen == [(61, "stable")]
        # evicted from memory and read back from its file: decided again, not taken as written
        other._state.cache.remove(NS)
        assert other.get(NS) == table("stable")
    finally:
        await again.close()
        await other.close()


async def test_an_unreadable_record_in_a_snapshot_file_is_refused(tmp_path: Path) -> None:
    c, _ = client("web-a", tmp_path)
    await feed(c, release(70, table("stable"), prev=None, op="canary_start", cny=canary(70, {}, table("cand"))))
    await c.close()
    path = SnapshotStore(tmp_path).path_for(NS)
    obj = orjson.loads(path.read_bytes())
    obj["record"] = {"kind": "routes", "doc": table("stable")}  # no canary: checksum recomputed, still refused
    obj.pop("sha256")
    path.write_bytes(orjson.dumps({**obj, "sha256": _checksum(obj)}))
    assert SnapshotStore(tmp_path).load(NS) is None


# ---------------------------------------------------------------- real server and etcd


class Records:
    """Writes release records straight into etcd (``docs/<ns>`` and its history entry in one
    transaction, as the store does), so the SDK can be tested on any canary record."""

    def __init__(self, server: RunningServer) -> None:
        self.kv = server.runtime.client.kv
        self.layout = KeyLayout(server.prefix)
        self.version = 0

    async def write(self, ns: str, op: str, doc: dict[str, Any], cny: dict[str, Any] | None = None) -> int:
        self.version += 1
        record: dict[str, Any] = {"version": self.version, "op": op, "kind": "routes", "doc": doc,
                                  "author": "test", "message": op, "time": time.time(), "principal": "t",
                                  "trace_id": "", "client": "", "user_agent": ""}
        if cny is not None:
            record["canary"] = cny
        value = orjson.dumps(record)
        resp = await self.kv.txn([], [self.kv.txn_op_put(self.layout.doc_key(ns), value),
                                      self.kv.txn_op_put(self.layout.history_key(ns, self.version), value)])
        return int(resp.header.revision)


async def test_resume_across_canary_operations(server: RunningServer, tmp_path: Path) -> None:
    ns = f"app/resume-{time.monotonic_ns()}"
    records = Records(server)
    member_id = ids_in_buckets(0, 10)[0]
    outsider_id = ids_in_buckets(60, 100)[0]
    base = await records.write(ns, "push", table("stable"))

    def live(instance_id: str, cache: Path) -> tuple[ConfigClient, list[Any]]:
        c = ConfigClient([server.url], [ns], instance_id=instance_id, report=False, cache_dir=cache,
                         backoff_max=0.3, idle_timeout=1.5)
        seen: list[Any] = []
        c.on_change(ns, lambda _, doc, rev: seen.append((int(rev), doc["default"]["cluster"])))
        return c, seen

    member, m_seen = live(member_id, tmp_path / "m")
    outsider, o_seen = live(outsider_id, tmp_path / "o")
    async with member, outsider:
        started = await records.write(ns, "canary_start", table("stable"), canary(0, {"percent": 10}, table("cand")))
        await eventually(lambda: member.get(ns) == table("cand")
                         and outsider.status().namespaces[ns].revision == started)
        assert member.status().namespaces[ns].track == "canary" and member.route("payment", {}).cluster == "cand"
        assert outsider.route("payment", {}).cluster == "stable"
    # both down; the canary grows (the outsider is still out), is aborted, starts again and is promoted
    grown = await records.write(ns, "canary_update", table("stable"), canary(started, {"percent": 50}, table("cand")))
    aborted = await records.write(ns, "canary_abort", table("stable"))
    again = await records.write(ns, "canary_start", table("stable"), canary(0, {"percent": 10}, table("cand2")))
    member, m_seen2 = live(member_id, tmp_path / "m")
    outsider, o_seen2 = live(outsider_id, tmp_path / "o")
    async with member, outsider:
        await eventually(lambda: member.status().namespaces[ns].revision == again
                         and outsider.status().namespaces[ns].revision == again)
        assert member.status().namespaces[ns].candidate_revision == again
        promoted = await records.write(ns, "promote", table("cand2"))
        await eventually(lambda: member.status().namespaces[ns].revision == promoted
                         and outsider.status().namespaces[ns].revision == promoted)
        for c in (member, outsider):
            assert c.route("payment", {}).cluster == "cand2" and c.status().namespaces[ns].track == "base"
    assert m_seen == [(base, "stable"), (started, "cand")]
    # resumed by Last-Event-ID: the snapshot first (decided again from its record), then every missed op
    assert m_seen2 == [(started, "cand"), (grown, "cand"), (aborted, "stable"), (again, "cand2"),
                       (promoted, "cand2")]
    assert o_seen + o_seen2 == [(base, "stable"), (started, "stable"), (started, "stable"), (grown, "stable"),
                                (aborted, "stable"), (again, "stable"), (promoted, "cand2")]
    assert member.status().gaps == 0 and outsider.status().gaps == 0
