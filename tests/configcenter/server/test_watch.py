"""The change pipeline end to end: etcd -> mirror -> hub -> SSE subscriber, on real sockets.

Covers ordering and exactly-once delivery (API pushes, multi-key etcd
transactions, etcdctl writes), resume by Last-Event-ID from the ring or via a
reset, the mirror's own reconnects, compaction resync, etcd outages and slow
subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.etcd import KeyLayout
from configcenter.server.settings import Limits, WatchTuning
from helpers import (
    RunningServer,
    SSEEvent,
    SSEStream,
    envelope,
    eventually,
    pushed_status,
    server_settings,
    start_cluster,
    start_server,
)


@asynccontextmanager
async def subscribe(http: aiohttp.ClientSession, server: RunningServer, *selectors: str,
                    last_event_id: int | None = None) -> AsyncIterator[SSEStream]:
    params = [("ns", s) for s in selectors]
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    async with http.get(f"{server.url}/v1/watch", params=params, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        yield SSEStream(resp)


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> dict[str, Any]:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        answer = await resp.json()
        assert resp.status == pushed_status(answer), answer
        return answer  # type: ignore[no-any-return]


async def push_once_etcd_answers(http: aiohttp.ClientSession, server: RunningServer, ns: str,
                                 doc: dict[str, Any]) -> dict[str, Any]:
    """Push, retrying only a 503 ``etcd_unavailable`` from a read before the write (a leader election after
    a member died), as a client may; a failed commit is not retried, its outcome being unknown."""
    async def attempt() -> dict[str, Any] | None:
        async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
            answer: dict[str, Any] = await resp.json()
            error = answer.get("error", {})
            if resp.status == 503 and error.get("code") == "etcd_unavailable" \
                    and str(error.get("details", {}).get("action", "")).startswith("read"):
                return None  # refused before writing: safe to send again (a failed commit may have landed)
            assert resp.status == pushed_status(answer), answer
            return answer
    result: dict[str, Any] = await eventually(attempt, timeout=30, interval=0.2)
    return result


async def resume_point(http: aiohttp.ClientSession, server: RunningServer, *selectors: str) -> int:
    """Subscribe, read the initial reset and disconnect: the id a client would resume from."""
    async with subscribe(http, server, *selectors) as stream:
        event = await stream.next()
    assert event.id is not None
    return event.id


def assert_exactly_once_in_order(events: list[SSEEvent]) -> None:
    """Revision order, no duplicate, and an ``id`` exactly on the last frame of each revision."""
    revisions = [e.data["revision"] for e in events]
    assert revisions == sorted(revisions), revisions
    keys = [(e.data["ns"], e.data["revision"]) for e in events]
    assert len(keys) == len(set(keys)), "duplicate change delivered"
    last_of_revision = [i + 1 == len(revisions) or revisions[i + 1] != r for i, r in enumerate(revisions)]
    assert [e.id == e.data["revision"] if last else e.id is None
            for e, last in zip(events, last_of_revision, strict=True)] == [True] * len(events)


async def test_first_event_is_a_reset_snapshot(server: RunningServer, http: aiohttp.ClientSession) -> None:
    first = await push(http, server, "app/a", {"v": 1})
    await push(http, server, "other/b", {"v": 1})
    async with subscribe(http, server, "app/") as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.id is not None and reset.id >= first["revision"]
    assert list(reset.data["namespaces"]) == ["app/a"]


async def test_every_change_once_in_order_including_txn_and_etcdctl(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    layout = KeyLayout(server.prefix)
    async with subscribe(http, server, "svc/", "single/one") as stream:
        await stream.next()  # reset
        pushed = [await push(http, server, f"svc/n{i % 3}", {"i": i}) for i in range(6)]
        await push(http, server, "ignored/ns", {"x": 1})
        record = {"version": 1, "op": "push", "kind": "config", "doc": {"txn": True}, "time": 0}
        kv = server.runtime.client.kv
        assert kv is not None
        txn = await kv.txn([], [kv.txn_op_put(layout.doc_key("svc/t1"), orjson.dumps(record)),
                                kv.txn_op_put(layout.doc_key("svc/t2"), orjson.dumps(record))])
        server.etcd.ctl("put", layout.doc_key("single/one").decode(), orjson.dumps(record).decode())
        events = await stream.changes(9)
    assert_exactly_once_in_order(events)
    assert [e.id for e in events[:6]] == [p["revision"] for p in pushed]
    assert {(e.data["ns"], e.data["revision"]) for e in events[6:8]} == {("svc/t1", txn.header.revision),
                                                                          ("svc/t2", txn.header.revision)}
    assert [e.id for e in events[6:8]] == [None, txn.header.revision]  # one id per transaction, on its last frame
    assert events[8].data["ns"] == "single/one"
    assert events[3].data["prev_revision"] == pushed[0]["revision"]  # n0's previous change


async def test_resume_from_ring_gets_exactly_the_missed_changes(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    last_seen = await resume_point(http, server, "r/")
    pushed = [await push(http, server, f"r/n{i % 5}", {"i": i}) for i in range(50)]
    async with subscribe(http, server, "r/", last_event_id=last_seen) as stream:
        events = await stream.changes(50)
        extra = await stream.next(timeout=2)
    assert [e.id for e in events] == [p["revision"] for p in pushed]
    assert extra.event == "progress", "nothing beyond the 50 missed changes"


async def test_resume_below_the_ring_gets_one_reset(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=Limits(max_body_bytes=65536, subscriber_queue=256, history_ring=10))
    last_seen = await resume_point(http, server)
    for i in range(50):
        await push(http, server, f"r/n{i % 5}", {"i": i})
    async with subscribe(http, server, last_event_id=last_seen) as stream:
        first = await stream.next()
        second = await stream.next(timeout=2)
    assert first.event == "reset"
    assert {ns: d["doc"]["i"] for ns, d in first.data["namespaces"].items()} == {f"r/n{k}": 45 + k for k in range(5)}
    assert second.event == "progress" and second.id == first.id


async def test_mirror_reconnect_loses_and_duplicates_nothing(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with subscribe(http, server, "m/") as stream:
        await stream.next()
        pushed = []
        for i in range(30):
            if i % 7 == 0:
                server.runtime.mirror.drop_connection()
            pushed.append(await push(http, server, f"m/n{i % 4}", {"i": i}))
        events = await stream.changes(30)
    assert [e.id for e in events] == [p["revision"] for p in pushed]
    assert server.runtime.metrics.values["configcenter_watch_reconnects_total"] >= 4


async def test_invalid_record_is_reported_and_mirror_keeps_going(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    key = KeyLayout(server.prefix).doc_key("bad/rec").decode()
    async with subscribe(http, server, "bad/") as stream:
        await stream.next()
        server.etcd.ctl("put", key, "not json at all")
        invalid = await stream.until(lambda e: e.event == "invalid")
        good = await push(http, server, "bad/rec", {"fixed": True})
        change = (await stream.changes(1))[0]
    assert invalid[-1].data["ns"] == "bad/rec"
    assert change.id == good["revision"] and change.data["doc"] == {"fixed": True}
    assert server.runtime.metrics.values["configcenter_invalid_records_total"] == 1


async def test_progress_advances_applied_revision_when_quiet(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    await push(http, server, "q/ns", {"v": 1})
    server.etcd.ctl("put", "/unrelated/key", "moves the etcd revision only")
    target = await server.runtime.store.current_revision()
    await eventually(lambda: server.runtime.mirror.applied_revision >= target, timeout=5)
    async with subscribe(http, server, "q/") as stream:
        events = await stream.until(lambda e: e.event == "progress", timeout=5)
    assert events[-1].id is not None and events[-1].id >= target


@pytest.mark.slow
async def test_compaction_resync_converges_to_etcd(
    make_server: Any, own_etcd: Any, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(cluster=own_etcd)
    for ns in ("c/keep", "c/update", "c/delete"):
        await push(http, server, ns, {"v": 1})
    async with subscribe(http, server, "c/") as stream:
        await stream.next()
        mirror = server.runtime.mirror
        await mirror.stop()  # pause the watch while etcd moves on and compacts
        store = server.runtime.store
        missed = [await store.push("c/update", "config", {"v": 2}), await store.push("c/update", "config", {"v": 3}),
                  await store.delete("c/delete"), await store.push("c/new", "config", {"v": 1})]
        own_etcd.ctl("compact", str(missed[-1].revision))
        mirror.start()
        events = await stream.changes(4, timeout=10)
    assert server.runtime.metrics.values["configcenter_mirror_resyncs_total"] >= 1
    # the missed window, replayed from history: every release at its true revision, deletions included
    assert [(e.data["ns"], e.data["op"], e.data["doc"], e.id) for e in events] == [
        (r.ns, r.op, r.doc, r.revision) for r in missed]
    _, releases = await server.runtime.store.list_releases("c/")
    assert {r.ns: r.doc for r in releases} == {ns: r.doc for ns, r in server.runtime.mirror.state.items()}


@pytest.mark.slow
async def test_etcd_outage_streams_stay_open_and_catch_up(
    make_server: Any, own_etcd: Any, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(cluster=own_etcd)
    await push(http, server, "o/ns", {"v": 1})
    async with subscribe(http, server, "o/") as stream:
        await stream.next()
        own_etcd.members[0].stop()
        stale = await stream.until(lambda e: e.event == "progress" and e.data["stale"], timeout=10)
        async with http.get(f"{server.url}/v1/namespaces/o/ns") as resp:
            assert resp.status == 200 and "X-Configcenter-Stale" in resp.headers
        async with http.put(f"{server.url}/v1/namespaces/o/ns", json=envelope({"v": 2}),
                            headers=server.auth()) as resp:
            assert resp.status == 503
        own_etcd.members[0].start()
        own_etcd.members[0].wait_ready()
        await eventually(lambda: server.runtime.mirror.connected, timeout=10)
        pushed = await push(http, server, "o/ns", {"v": 3})
        change = (await stream.changes(1, timeout=10))[0]
    assert stale[-1].data["stale_seconds"] > 0
    assert change.id == pushed["revision"] and change.data["doc"] == {"v": 3}


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket with a tiny, fixed receive window: the kernel cannot absorb the backlog."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


@pytest.mark.slow
async def test_a_subscriber_that_never_reads_stays_bounded(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=Limits(max_body_bytes=65536, subscriber_queue=8, history_ring=1000))
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with aiohttp.ClientSession(connector=connector) as lazy, \
            lazy.get(f"{server.url}/v1/watch", params=[("ns", "big/")]) as resp:
        stream = SSEStream(resp)
        await stream.next()
        blob = "x" * 60_000
        subs = server.runtime.hub.subscriptions
        i = 0
        while server.runtime.metrics.values["configcenter_subscriber_overflows_total"] < 1:
            assert i < 400, "no overflow after 24 MB: the subscriber queue is not bounded by backpressure"
            await push(http, server, f"big/n{i % 3}", {"i": i, "blob": blob})
            assert all(len(s.queue) <= 8 for s in subs)
            i += 1
        last = [await push(http, server, f"big/n{k}", {"i": i + k, "blob": "y"}) for k in range(3)]
        events = await stream.until(lambda e: e.event == "reset", timeout=30)
        tail = await stream.until(lambda e: e.id is not None and e.id >= last[-1]["revision"], timeout=10)
    state = {ns: d["doc"]["i"] for ns, d in events[-1].data["namespaces"].items()}
    for event in tail:
        if event.event == "change":
            state[event.data["ns"]] = event.data["doc"]["i"]
    assert state == {"big/n0": i, "big/n1": i + 1, "big/n2": i + 2}


@pytest.mark.slow
async def test_three_member_cluster_survives_a_member_crash(make_server: Any, http: aiohttp.ClientSession) -> None:
    cluster = start_cluster(3)
    try:
        server = await make_server(cluster=cluster)
        async with subscribe(http, server, "ha/") as stream:
            await stream.next()
            before = await push(http, server, "ha/ns", {"v": 1})
            cluster.members[0].kill()  # maybe the leader: until the others elect one, writes get 503
            after = [await push_once_etcd_answers(http, server, "ha/ns", {"v": i}) for i in range(2, 5)]
            events = await stream.changes(4, timeout=15)
        assert [e.id for e in events] == [before["revision"]] + [p["revision"] for p in after]
    finally:
        cluster.close()


async def test_restarted_server_replays_from_history_instead_of_reset(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    first = await make_server()
    await push(http, first, "h/a", {"v": 1})
    last_seen = await resume_point(http, first, "h/")
    missed = [await push(http, first, ns, {"v": 2}) for ns in ("h/a", "h/b")]
    async with http.delete(f"{first.url}/v1/namespaces/h/b", headers=first.auth()) as resp:
        missed.append(await resp.json())
    await first.stop()
    fresh = await make_server(prefix=first.prefix)
    async with subscribe(http, fresh, "h/", last_event_id=last_seen) as stream:
        events = await stream.changes(3)
        after = await stream.next(timeout=2)
    assert [(e.data["ns"], e.id, e.data["op"]) for e in events] == [
        ("h/a", missed[0]["revision"], "push"), ("h/b", missed[1]["revision"], "push"),
        ("h/b", missed[2]["revision"], "delete")]
    assert events[0].data["prev_revision"] < events[0].id and events[2].data["prev_revision"] == missed[1]["revision"]
    assert after.event == "progress"


async def test_restart_after_a_write_around_the_api_falls_back_to_reset(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    first = await make_server()
    await push(http, first, "h/a", {"v": 1})
    last_seen = await resume_point(http, first, "h/")
    record = {"version": 9, "op": "push", "kind": "config", "doc": {"by": "etcdctl"}}
    first.etcd.ctl("put", KeyLayout(first.prefix).doc_key("h/a").decode(), orjson.dumps(record).decode())
    await first.stop()
    fresh = await make_server(prefix=first.prefix)
    async with subscribe(http, fresh, "h/", last_event_id=last_seen) as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["namespaces"]["h/a"]["doc"] == {"by": "etcdctl"}


async def test_server_shutdown_ends_every_stream_cleanly_and_at_once(
    etcd: EtcdCluster, http: aiohttp.ClientSession
) -> None:
    """Stopping a server ends each event stream with the chunked body's terminator (the client sees
    a clean end, not a broken payload) at once, so SDKs reconnect to another replica at once instead
    of after the shutdown timeout and a cancelled handler.

    The shutdown timeout here is 10 minutes: a server that waited for its streams to end by
    themselves would not stop within the 60 s hang guard, however loaded the machine."""
    settings = server_settings(etcd, watch=WatchTuning(progress_interval=30.0))
    server = await start_server(settings, etcd, shutdown_timeout=600.0)
    try:
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(subscribe(http, server, f"shut/{i}")) for i in range(20)]
            for stream in streams:
                assert (await stream.next()).event == "reset"
            await asyncio.wait_for(server.stop(), 60.0)  # streams ended by the server, not by the timeout
            for stream in streams:
                assert await asyncio.wait_for(stream.response.content.read(), 5.0) == b""  # clean EOF, no error
    finally:
        await server.stop()
