"""Watch correctness at the compaction edges (issue 19), black-box on real etcd and real sockets.

Two replicas share one etcd and one prefix; replica A reaches etcd through a TCP relay
(``chaos.relay``) the test cuts, so only A loses its watch while writes go through B.

* A delete at exactly the compaction revision, A cut off just before it: etcd's watch opened at
  the compaction revision drops that delete (etcd-io/etcd#18089, #19179, present in the etcd
  3.5.1 and 3.4.23 these tests run on), so A must not open its watch there.
* After a compaction re-list, a client that saw part of A's missed window on B resumes on A:
  it must get exactly the rest of the window (rebuilt from ``history/``) or a reset.
* A mirror whose state differs from etcd's (a change etcd never delivered) must notice from its
  failing progress verifications and re-list.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from chaos.relay import Relay
from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.model import Release
from configcenter.server.etcd import KeyLayout
from configcenter.server.settings import WatchTuning
from helpers import RunningServer, SSEEvent, SSEStream, envelope, eventually

# gRPC's channel waits ~1 s (its first reconnect backoff, jittered) before it tries the relay again
PROGRESS = 2.0
TUNING = WatchTuning(progress_interval=PROGRESS, backoff_initial=0.05, backoff_max=0.3, etcd_timeout=2.0)


@asynccontextmanager
async def replicas(make_server: Any, etcd: EtcdCluster) -> AsyncIterator[tuple[RunningServer, RunningServer, Relay]]:
    """(A through a relay, B direct, the relay): two replicas of one prefix on ``etcd``."""
    relay = await Relay(etcd.endpoints).start()
    try:
        b = await make_server(cluster=etcd, watch=TUNING)
        a = await make_server(cluster=etcd, watch=TUNING, prefix=b.prefix, etcd_endpoints=tuple(relay.endpoints))
        yield a, b, relay
    finally:
        await relay.close()


@asynccontextmanager
async def watch(http: aiohttp.ClientSession, server: RunningServer, selector: str,
                resume: int | None = None) -> AsyncIterator[SSEStream]:
    headers = {"Last-Event-ID": str(resume)} if resume is not None else {}
    async with http.get(f"{server.url}/v1/watch", params={"ns": selector}, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        yield SSEStream(resp)


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        return int((await resp.json())["revision"])


async def delete(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> int:
    async with http.delete(f"{server.url}/v1/namespaces/{ns}", headers=server.auth()) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["revision"])


async def status(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> int:
    async with http.get(f"{server.url}/v1/namespaces/{ns}") as resp:
        return resp.status


async def gone(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> bool:
    return await status(http, server, ns) == 404


async def seen_on(http: aiohttp.ClientSession, server: RunningServer, selector: str) -> int:
    """The resume id a client of ``server`` holds once it caught up (its first event's id)."""
    async with watch(http, server, selector) as stream:
        event = await stream.next()
    assert event.id is not None
    return event.id


def converges_without(events: list[SSEEvent], ns: str) -> bool:
    """Whether the stream told its client ``ns`` is gone: a delete of it, or a reset without it."""
    for event in events:
        if event.event == "change" and event.data["ns"] == ns and event.data["op"] == "delete":
            return True
        if event.event == "reset" and ns not in event.data["namespaces"]:
            return True
    return False


@pytest.mark.slow
async def test_a_delete_at_the_compaction_revision_reaches_a_replica_cut_off_just_before_it(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession,
) -> None:
    async with replicas(make_server, own_etcd) as (a, b, relay):
        created = await push(http, b, "gone2/d", {"v": 1})
        await eventually(lambda: a.runtime.mirror.applied_revision >= created)
        async with watch(http, a, "gone2/") as live:
            assert "gone2/d" in (await live.next()).data["namespaces"]
            relay.cut()
            deleted = await delete(http, b, "gone2/d")
            assert deleted == a.runtime.mirror.applied_revision + 1, "the delete must be at A's applied + 1"
            own_etcd.ctl("compact", str(deleted))
            later = await push(http, b, "gone2/later", {"v": 1})
            relay.restore()
            await eventually(lambda: gone(http, a, "gone2/d"), timeout=PROGRESS)
            events = await live.until(lambda e: e.id is not None and e.id >= later, timeout=5)
        assert converges_without(events, "gone2/d"), [(e.event, e.id, e.data) for e in events]
        async with watch(http, a, "gone2/", resume=deleted - 1) as resumed:
            replay = await resumed.until(lambda e: e.id is not None and e.id >= later, timeout=5)
    assert converges_without(replay, "gone2/d"), [(e.event, e.id, e.data) for e in replay]
    assert a.runtime.metrics.values["configcenter_mirror_resyncs_total"] == 1


async def _window_missed_by_a(http: aiohttp.ClientSession, a: RunningServer, b: RunningServer, relay: Relay,
                              etcd: EtcdCluster, *, around_api: bool = False) -> dict[str, int]:
    """While A is cut off: gone3/d created, keep updated, a client catches up on B, gone3/d deleted at D,
    keep updated again, etcd compacts D; then A comes back and re-lists.  The revisions, by name.
    ``around_api``: also an ``etcdctl put`` of gone3/raw (no history entry) right after the cut."""
    base = await push(http, b, "gone3/keep", {"v": 1})
    await eventually(lambda: a.runtime.mirror.applied_revision >= base)
    relay.cut()
    if around_api:
        record = {"version": 1, "op": "push", "kind": "config", "doc": {"by": "etcdctl"}, "time": 0}
        etcd.ctl("put", KeyLayout(b.prefix).doc_key("gone3/raw").decode(), orjson.dumps(record).decode())
    rev = {"base": base, "created": await push(http, b, "gone3/d", {"v": 1}),
           "keep2": await push(http, b, "gone3/keep", {"v": 2})}
    rev["seen"] = await seen_on(http, b, "gone3/")  # D - 1, seen on B
    rev["deleted"] = await delete(http, b, "gone3/d")
    rev["keep3"] = await push(http, b, "gone3/keep", {"v": 3})
    etcd.ctl("compact", str(rev["deleted"]))
    relay.restore()
    await eventually(lambda: a.runtime.mirror.applied_revision >= rev["keep3"], timeout=10)
    return rev


@pytest.mark.slow
async def test_a_resume_into_the_window_a_replica_relisted_over_gets_exactly_the_rest_of_it(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.mirror")
    async with replicas(make_server, own_etcd) as (a, b, relay):
        rev = await _window_missed_by_a(http, a, b, relay, own_etcd)
        assert await status(http, a, "gone3/d") == 404
        async with watch(http, a, "gone3/", resume=rev["seen"]) as stream:
            rest = await stream.changes(2)
        async with watch(http, a, "gone3/", resume=rev["base"]) as stream:
            window = await stream.changes(4)
    assert [(e.data["ns"], e.data["op"], e.id) for e in rest] == [
        ("gone3/d", "delete", rev["deleted"]), ("gone3/keep", "push", rev["keep3"])]
    assert [(e.data["ns"], e.data["revision"], e.data["prev_revision"]) for e in window] == [
        ("gone3/d", rev["created"], 0), ("gone3/keep", rev["keep2"], rev["base"]),
        ("gone3/d", rev["deleted"], rev["created"]), ("gone3/keep", rev["keep3"], rev["keep2"])]
    logged = [r.getMessage() for r in caplog.records if "resyncing" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("resyncing (compacted)"), logged


@pytest.mark.slow
async def test_a_window_history_cannot_replay_gets_a_reset_never_a_partial_replay(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession,
) -> None:
    async with replicas(make_server, own_etcd) as (a, b, relay):
        rev = await _window_missed_by_a(http, a, b, relay, own_etcd, around_api=True)
        async with watch(http, a, "gone3/", resume=rev["seen"]) as stream:
            first = await stream.next()
    assert first.event == "reset" and first.data["reason"] == "compacted"
    assert set(first.data["namespaces"]) == {"gone3/keep", "gone3/raw"}
    assert a.runtime.metrics.values["configcenter_mirror_ring_truncated_total"] == 1


async def _mirror_with_a_ghost(make_server: Any, http: aiohttp.ClientSession) -> tuple[RunningServer, int]:
    """A server whose mirror holds a document etcd does not: what a deletion etcd never delivered
    leaves behind.  (server, revision of the last real change)."""
    server = await make_server(watch=WatchTuning(progress_interval=0.2, backoff_initial=0.05, backoff_max=0.3))
    kept = await push(http, server, "drift/kept", {"v": 1})
    mirror = server.runtime.mirror
    await eventually(lambda: mirror.applied_revision >= kept)
    mirror.state["drift/ghost"] = Release("drift/ghost", kept, 1, "push", "config", {"ghost": True})
    mirror.last_change["drift/ghost"] = kept
    return server, kept


@pytest.mark.parametrize("etcd_moves", [True, False], ids=["failing-verifications", "quiet"])
async def test_a_mirror_that_missed_a_change_notices_from_its_progress_and_relists(
    make_server: Any, http: aiohttp.ClientSession, etcd_moves: bool,
) -> None:
    server, kept = await _mirror_with_a_ghost(make_server, http)
    async with watch(http, server, "drift/") as stream:
        assert "drift/ghost" in (await stream.next()).data["namespaces"]
        if etcd_moves:  # progress above the applied revision: verified, and it fails (the ghost)
            server.etcd.ctl("put", "/unrelated/key", "moves etcd's revision only")
        events = await stream.until(lambda e: e.event in ("change", "reset"), timeout=5)
        async with watch(http, server, "drift/", resume=kept) as resumed:
            first = await resumed.next()
    assert converges_without(events, "drift/ghost"), [(e.event, e.id, e.data) for e in events]
    assert await status(http, server, "drift/ghost") == 404
    assert first.event == "reset" and first.data["reason"] == "resynced" and list(first.data["namespaces"]) == [
        "drift/kept"]
    assert server.runtime.metrics.values["configcenter_mirror_drift_total"] == 1
