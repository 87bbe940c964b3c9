"""Resume ids on ``GET /v1/watch``: cluster identity, resume points ahead of etcd, garbage ids.

Event ids are ``<cluster hex>:<revision>``.  A resume id above etcd's current
revision (etcd restored from a backup, or replaced) gets a ``reset`` saying
so, and the stream goes on delivering changes; a resume id from another
cluster gets a ``reset`` too, never a replay; a replica that is merely behind
another one makes the client wait, then sends only what it lacks.  Every
reset names its reason.  Hostile ids are a clear 400.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from cli_helpers import Printed, call_main
from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.settings import Limits
from helpers import RunningServer, SSEStream, envelope, eventually, pushed_status
from layout_helpers import watch


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        answer = await resp.json()
        assert resp.status == pushed_status(answer), answer
        revision: int = answer["revision"]
        return revision


async def cluster_hex(server: RunningServer) -> str:
    """etcd's own cluster id (from a response header), as the ids should carry it."""
    kv = server.runtime.client.kv
    assert kv is not None
    return f"{(await kv.get(b'any', count_only=True)).header.cluster_id:x}"


async def test_resume_ahead_of_the_cluster_gets_a_reset_and_then_changes(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    before = await push(http, server, "payment/a", {"v": 1})
    async with watch(http, server, "payment/", resume="999999999") as stream:
        reset = await stream.next()
        pushed = await push(http, server, "payment/b", {"v": 1})
        change = (await stream.changes(1))[0]
    assert reset.event == "reset" and reset.data["reason"] == "resume_ahead_of_cluster"
    assert reset.id is not None and before <= reset.id < 999999999
    assert reset.data["namespaces"]["payment/a"]["doc"] == {"v": 1}
    assert (change.id, change.data["ns"], change.data["doc"]) == (pushed, "payment/b", {"v": 1})


async def test_event_ids_name_the_cluster_and_a_full_id_resumes_from_the_ring(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    cluster = await cluster_hex(server)
    async with watch(http, server, "ids/") as stream:
        reset = await stream.next()
    missed = [await push(http, server, f"ids/n{i}", {"i": i}) for i in range(3)]
    async with watch(http, server, "ids/", resume=reset.raw_id) as stream:
        replay = await stream.changes(3)
        after = await stream.next(timeout=2)
    assert reset.data["reason"] == "no_resume_point" and reset.data["cluster"] == cluster
    assert reset.raw_id == f"{cluster}:{reset.id}"
    assert [e.raw_id for e in replay] == [f"{cluster}:{rev}" for rev in missed]
    assert after.event == "progress" and after.raw_id == f"{cluster}:{after.id}"


async def test_resume_id_of_another_cluster_gets_a_reset_not_a_replay(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with watch(http, server, "oc/") as stream:
        start = (await stream.next()).id
    await push(http, server, "oc/a", {"v": 1})
    await push(http, server, "oc/a", {"v": 2})
    other = "1" if await cluster_hex(server) != "1" else "2"
    async with watch(http, server, "oc/", resume=f"{other}:{start}") as stream:  # the ring covers `start`
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["reason"] == "cluster_changed"
    assert reset.data["namespaces"]["oc/a"]["doc"] == {"v": 2}


async def test_plain_numeric_resume_ids_keep_working(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with watch(http, server, "pn/") as stream:
        start = (await stream.next()).id
    pushed = await push(http, server, "pn/a", {"v": 1})
    async with watch(http, server, "pn/", resume=str(start)) as stream:
        by_header = (await stream.changes(1))[0]
    async with http.get(f"{server.url}/v1/watch", params={"ns": "pn/", "since": str(start)}) as resp:
        by_query = (await SSEStream(resp).changes(1))[0]
    assert by_header.id == by_query.id == pushed


async def test_ring_expired_reset_says_why(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(limits=Limits(max_body_bytes=65536, subscriber_queue=256, history_ring=4))
    async with watch(http, server, "re/") as stream:
        start = (await stream.next()).raw_id
    for i in range(10):
        await push(http, server, f"re/n{i % 2}", {"i": i})
    async with watch(http, server, "re/", resume=start) as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["reason"] == "ring_expired"


HOSTILE_IDS = {
    "letters": "abc",
    "negative": "-1",
    "cluster-not-hex": "x:1",
    "empty-revision": "abc:",
    "empty-cluster": ":5",
    "two-colons": "a:b:1",
    "uppercase-hex": "ABC:1",
    "cluster-17-hex-digits": "1" * 17 + ":1",
    "revision-20-digits": "9" * 20,
    "revision-above-int64": str(2**63),
    "plus-sign": "+5",
    "hex-revision": "0x10",
    "inner-space": "1 2",
    "unicode-digit": "\u00b2",
    "fullwidth-digits": "\uff11\uff12",
    "4kb-of-digits": "1" * 4096,
}


@pytest.mark.parametrize("raw", list(HOSTILE_IDS.values()), ids=list(HOSTILE_IDS))
async def test_garbage_resume_ids_are_a_clear_400(server: RunningServer, http: aiohttp.ClientSession,
                                                   raw: str) -> None:
    async with http.get(f"{server.url}/v1/watch", headers={"Last-Event-ID": raw}) as resp:
        header = (resp.status, resp.content_type, await resp.json())
    async with http.get(f"{server.url}/v1/watch", params={"since": raw}) as resp:
        query = (resp.status, resp.content_type, await resp.json())
    for (status, content_type, body), name in ((header, "Last-Event-ID"), (query, "since")):
        assert (status, content_type, body["error"]["code"]) == (400, "application/json", "invalid_argument")
        assert body["error"]["details"] == {"parameter": name} and len(body["error"]["message"]) < 300


async def test_a_10kb_resume_id_is_refused_before_any_handler(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    async with http.get(f"{server.url}/v1/watch", headers={"Last-Event-ID": "1" * 10_240}) as resp:
        assert resp.status == 400  # aiohttp's header limit (8190 bytes): plain text, no stream


async def test_replica_behind_waits_then_sends_only_newer_changes(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    ahead = await make_server()
    behind = await make_server(prefix=ahead.prefix)
    await push(http, ahead, "rb/a", {"v": 0})
    await eventually(lambda: "rb/a" in behind.runtime.mirror.state)
    await behind.runtime.mirror.stop()  # the lagging replica stops hearing from etcd
    missed = [await push(http, ahead, "rb/a", {"v": i}) for i in (1, 2)]
    async with watch(http, ahead, "rb/", resume=None) as stream:
        reset = await stream.next()  # the client stands at the replica that is ahead
    assert reset.raw_id is not None and reset.id is not None and reset.id >= missed[-1]
    assert behind.runtime.mirror.applied_revision < missed[0]
    async with watch(http, behind, "rb/", resume=reset.raw_id) as stream:
        first = await stream.next()
        behind.runtime.mirror.start()
        await eventually(lambda: behind.runtime.mirror.applied_revision >= reset.id)
        newer = await push(http, ahead, "rb/a", {"v": 3})
        events = await stream.until(lambda e: e.event == "change")
    assert (first.event, first.id) == ("progress", reset.id), "no reset: the resume point is real"
    assert [e.event for e in events[:-1]] == ["progress"] * (len(events) - 1)
    assert (events[-1].id, events[-1].data["doc"]) == (newer, {"v": 3})


async def test_a_flood_of_ahead_ids_reads_etcd_one_at_a_time(server: RunningServer,
                                                              http: aiohttp.ClientSession) -> None:
    probe = server.runtime.mirror._probe
    real_read, reads, inflight = probe._read, [], [0, 0]  # [now, peak]

    async def counting_read() -> Any:
        reads.append(1)
        inflight[0] += 1
        inflight[1] = max(inflight)
        try:
            return await real_read()
        finally:
            inflight[0] -= 1

    probe._read = counting_read  # still etcd: counts the reads the probe makes

    async def one() -> str:
        async with watch(http, server, "fl/", resume="999999999") as stream:
            return str((await stream.next()).data["reason"])

    reasons = await asyncio.gather(*[one() for _ in range(40)])
    assert reasons == ["resume_ahead_of_cluster"] * 40
    assert inflight[1] == 1, "concurrent subscribers share one read at a time"
    assert 1 <= len(reads) < 40, f"{len(reads)} etcd reads for 40 subscribers"


@pytest.mark.slow
async def test_ahead_id_while_etcd_is_down_waits_then_gets_a_reset(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(cluster=own_etcd)
    await push(http, server, "down/a", {"v": 1})
    member = own_etcd.members[0]
    await asyncio.to_thread(member.stop)
    await eventually(lambda: not server.runtime.mirror.connected, timeout=10)
    async with watch(http, server, "down/", resume="999999999") as stream:
        first = await stream.next()  # cannot be confirmed: no reset that could roll the client back
        await asyncio.to_thread(member.start)
        await asyncio.to_thread(member.wait_ready)
        events = await stream.until(lambda e: e.event == "reset", timeout=15)
        pushed = await push(http, server, "down/b", {"v": 1})
        change = (await stream.changes(1))[0]
    assert first.event == "progress" and first.data["stale"] is True
    assert events[-1].data["reason"] == "resume_ahead_of_cluster" and events[-1].id is not None
    assert events[-1].data["namespaces"]["down/a"]["doc"] == {"v": 1}
    assert change.id == pushed


@pytest.mark.slow
async def test_endpoints_now_on_another_cluster_reset_every_subscriber(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(cluster=own_etcd)
    await push(http, server, "cc/old", {"v": 1})
    old_cluster = await cluster_hex(server)
    async with watch(http, server, "cc/") as stream:
        await stream.next()
        await asyncio.to_thread(own_etcd.members[0].stop)
        replacement = EtcdCluster(1)  # a new cluster on the old client port (its own peer port: another id)
        replacement.members[0].client_port = own_etcd.members[0].client_port
        try:
            await asyncio.to_thread(replacement.start)
            reset = (await stream.until(lambda e: e.event == "reset", timeout=15))[-1]
            pushed = await push(http, server, "cc/new", {"v": 1})
            change = (await stream.changes(1))[0]
            assert (change.id, change.data["ns"]) == (pushed, "cc/new")
            assert change.raw_id == f"{await cluster_hex(server)}:{pushed}"
        finally:
            await asyncio.to_thread(replacement.close)
    assert reset.data["reason"] == "cluster_changed" and reset.data["namespaces"] == {}
    assert reset.data["cluster"] != old_cluster and reset.raw_id == f"{reset.data['cluster']}:{reset.id}"
    assert server.runtime.metrics.values["configcenter_mirror_diverged_total"] == 1
    assert server.runtime.mirror.state == {} or set(server.runtime.mirror.state) == {"cc/new"}


@pytest.mark.slow
async def test_a_resume_id_from_a_history_a_restore_discarded_gets_a_reset_after_etcd_passes_it(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession, tmp_path: Any,
) -> None:
    """etcd restored from a backup reuses the revisions of the history it lost.  Once its new history
    passes a client's old resume id, the number alone looks like a resume point: the replica that saw
    the old history must still answer it with a reset, never a replay of unrelated changes."""
    server = await make_server(cluster=own_etcd)
    await push(http, server, "rb/a", {"v": 1})
    backup = tmp_path / "backup.db"
    await asyncio.to_thread(own_etcd.save_snapshot, backup)
    for v in (2, 3, 4):
        lost = await push(http, server, "rb/a", {"v": v})
    old_id = f"{await cluster_hex(server)}:{lost - 1}"
    await eventually(lambda: server.runtime.mirror.applied_revision >= lost)
    await asyncio.to_thread(own_etcd.restore, backup)
    await eventually(lambda: server.runtime.metrics.values.get("configcenter_mirror_diverged_total") == 1, 15)
    new = [await push(http, server, f"rb/n{i}", {"v": i}) for i in range(5)]  # etcd's new history passes lost
    assert new[-1] > lost and old_id.startswith(f"{await cluster_hex(server)}:")  # same cluster id, same numbers
    await eventually(lambda: server.runtime.mirror.applied_revision >= new[-1])
    async with watch(http, server, "rb/", resume=old_id) as stream:
        reset = await stream.next()
    assert reset.event == "reset" and reset.data["reason"] == "revision_went_back"
    assert {ns: d["doc"] for ns, d in reset.data["namespaces"].items()} == {
        "rb/a": {"v": 1}, **{f"rb/n{i}": {"v": i} for i in range(5)}}
    async with watch(http, server, "rb/", resume=f"{reset.raw_id}") as stream:  # a new-history id resumes
        pushed = await push(http, server, "rb/a", {"v": 5})
        first = await stream.next()  # nothing missed: a progress at the reset's revision, no reset
        change = (await stream.changes(1))[0]
    assert (first.event, first.id) == ("progress", reset.id) and change.id == pushed


@pytest.mark.slow
async def test_cli_watch_resumes_with_the_full_id(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI sends back the full id it received: a replica of another cluster on the same address
    answers ``cluster_changed`` (a plain revision would only look "ahead" of that cluster)."""
    first = await make_server()
    since = await push(http, first, "cli/a", {"v": 1})
    argv = ["--server", first.url, "--json", "watch", "cli/", "--since", str(since), "--count", "2", "--timeout", "30"]
    watcher = asyncio.create_task(asyncio.to_thread(call_main, argv))
    await push(http, first, "cli/b", {"v": 1})
    printed = Printed(capsys)
    await eventually(lambda: printed.has('"ns":"cli/b"'))  # the watcher saw b: now the server goes away
    await first.stop()
    second = await make_server(cluster=own_etcd, port=first.settings.port, prefix=first.prefix)
    await eventually(lambda: any(s.floor for s in second.runtime.hub.subscriptions), timeout=15)
    await push(http, second, "cli/c", {"v": 1})
    assert await watcher == 0
    lines = [orjson.loads(line) for line in printed.read().out.splitlines()]
    assert [(e["event"], e["data"].get("ns"), e["data"].get("reason")) for e in lines] == [
        ("change", "cli/b", None), ("reset", None, "cluster_changed"), ("change", "cli/c", None)]


async def test_an_sdk_cut_for_not_reading_resumes_with_last_event_id_and_gets_everything(
    make_server: Any,
) -> None:
    """The SDK's thread stops reading (a callback blocks it) while more than the kernel's socket buffers
    hold is published: the server aborts the stream after ``drain_timeout`` (memory released); once the
    SDK reads again it reconnects with ``Last-Event-ID`` and ends with every change, none lost."""
    import threading
    from pathlib import Path

    from configcenter_sdk.sync import SyncConfigClient

    server = await make_server(limits=Limits(max_body_bytes=64 * 1024, subscriber_queue=256, history_ring=1000,
                                             drain_timeout=0.5))
    release, seen = threading.Event(), set()

    def on_change(ns: str, doc: Any, revision: int) -> None:
        seen.add((ns, revision))
        if ns == "cut/block":
            release.wait(30)  # the SDK's loop, and its reading, stop here

    client = SyncConfigClient([server.url], ["cut/"], backoff_max=0.3, idle_timeout=5, report=False)
    client.on_change(None, on_change)
    await asyncio.to_thread(client.start)
    try:
        pushed = {("cut/block", (await server.runtime.store.push("cut/block", "config", {"v": 1})).revision)}
        await eventually(lambda: ("cut/block", min(r for _, r in pushed)) in seen)
        size, total = 400_000, int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]) + 1_048_576
        for i in range(total // size + 1):
            release_ = await server.runtime.store.push(f"cut/big{i}", "config", {"blob": chr(97 + i) * size})
            pushed.add((f"cut/big{i}", release_.revision))
        await eventually(lambda: server.runtime.metrics.values["configcenter_streams_stalled_total"] >= 1, timeout=20)
        await eventually(lambda: not server.runtime.hub.subscriptions)  # cut (just after the abort): buffer dropped
        release.set()
        await eventually(lambda: pushed <= seen, timeout=20)
        for i in range(total // size + 1):
            assert (client.get(f"cut/big{i}") or {}).get("blob") == chr(97 + i) * size
        assert server.runtime.metrics.values["configcenter_streams_stalled_total"] == 1
    finally:
        release.set()
        await asyncio.to_thread(client.close)
