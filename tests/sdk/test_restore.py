"""The SDK when etcd goes back: a restore from a backup, or fail-over to another etcd cluster.

A ``reset`` below the client's revision, or from another cluster, is
authoritative: state, listeners and disk snapshots follow it, and the client
keeps receiving changes.  The resume point (cluster id included) is persisted
with the snapshots, so a restarted service resumes from disk: exactly the
missed releases from the same cluster, a reset from another one or from a
restored one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter_sdk import ConfigClient, SnapshotStore
from configcenter_sdk._persist import ResumeMarker
from configcenter_sdk._stream import is_backwards, parse_event_id
from configcenter_sdk.cache import CachedDoc
from configcenter_sdk.errors import SnapshotError
from helpers import RunningServer, envelope, eventually

Seen = list[tuple[str, Any, int]]


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


async def delete(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> int:
    async with http.delete(f"{server.url}/v1/namespaces/{ns}", headers=server.auth()) as resp:
        assert resp.status == 200, await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


def client_for(urls: list[str], prefix: str, cache_dir: Path, **kw: Any) -> tuple[ConfigClient, Seen]:
    client = ConfigClient(urls, [prefix], cache_dir=cache_dir, backoff_max=0.3, idle_timeout=1.5, **kw)
    seen: Seen = []
    client.on_change(None, lambda ns, doc, rev: seen.append((ns, None if doc is None else dict(doc), rev)))
    return client, seen


def held(client: ConfigClient, prefix: str) -> dict[str, Any]:
    """What the client serves: {ns: doc} of every namespace it holds under ``prefix``."""
    return {ns: dict(doc) for ns in client.status().namespaces
            if ns.startswith(prefix) and (doc := client.get(ns)) is not None}


def on_disk(cache_dir: Path, prefix: str) -> dict[str, Any]:
    store = SnapshotStore(cache_dir)
    names = [p.name[:-5].replace("~", "/") for p in cache_dir.glob("*.json") if not p.name.startswith("_")]
    return {ns: dict(e.doc) for ns, e in store.load_all(names).items() if ns.startswith(prefix)}


async def in_etcd(server: RunningServer, prefix: str) -> dict[str, Any]:
    _, releases = await server.runtime.store.list_releases(prefix)
    return {r.ns: r.doc for r in releases}


def test_event_ids_and_backwards_decisions() -> None:
    assert parse_event_id("a7add6a5f1a85547:42") == ("a7add6a5f1a85547", 42)
    assert parse_event_id("42") == (None, 42)
    assert [parse_event_id(raw) for raw in (None, "", "x:1", "1:", "-1", "1" * 20)] == [None] * 6
    assert is_backwards(5, "revision_went_back", "a", (3, "a"))  # the server says so, whatever the numbers
    assert is_backwards(9, "no_resume_point", "b", (3, "a"))  # another cluster
    assert is_backwards(2, "ring_expired", "a", (3, "a"))  # below the client
    assert not is_backwards(4, "ring_expired", "a", (3, "a"))
    assert not is_backwards(0, "cluster_changed", "a", (3, "b"))  # a server that has not read etcd yet


def test_resume_marker_round_trip_and_tampering(tmp_path: Path) -> None:
    marker = ResumeMarker(42, "a7add6a5f1a85547", ("payment/", "orders/config"))
    assert ResumeMarker.decode(marker.encode()) == marker
    tampered = marker.encode().replace(b'"revision":42', b'"revision":43')
    for raw in (tampered, b"{", b"[]", marker.encode()[:-3]):
        with pytest.raises(ValueError):
            ResumeMarker.decode(raw)


async def test_restart_resumes_from_disk_with_every_missed_release(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    client, _ = client_for([server.url], "rr/", tmp_path)
    async with client:
        first = await push(http, server, "rr/a", {"v": 1})
        await eventually(lambda: held(client, "rr/") == {"rr/a": {"v": 1}})
    missed = [await push(http, server, "rr/a", {"v": v}) for v in (2, 3)]
    missed.append(await delete(http, server, "rr/a"))
    restarted, seen = client_for([server.url], "rr/", tmp_path)
    async with restarted:
        await eventually(lambda: len(seen) == 4)
        status = restarted.status()
    # the snapshot at start, then each missed release in order: a resume, not a reset (which would skip v2)
    assert seen == [("rr/a", {"v": 1}, first), ("rr/a", {"v": 2}, missed[0]), ("rr/a", {"v": 3}, missed[1]),
                    ("rr/a", None, missed[2])]
    assert status.resets_backwards == 0 and status.gaps == 0 and status.cluster is not None


@pytest.mark.slow
async def test_etcd_restored_from_a_backup_server_and_sdk_follow(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    server = await make_server(cluster=own_etcd)
    live_dir, sleeper_dir = tmp_path / "live", tmp_path / "sleeper"
    # no instance reports: they are etcd writes too, and the revisions asserted below assume none
    client, seen = client_for([server.url], "rs/", live_dir, report=False)
    sleeper, _ = client_for([server.url], "rs/", sleeper_dir, report=False)
    async with client:
        a1 = await push(http, server, "rs/a", {"v": 1})
        b1 = await push(http, server, "rs/b", {"v": 1})
        backup = tmp_path / "backup.db"
        own_etcd.save_snapshot(backup)
        await push(http, server, "rs/a", {"v": 2})
        await push(http, server, "rs/c", {"v": 1})
        before = await delete(http, server, "rs/b")
        await eventually(lambda: held(client, "rs/") == {"rs/a": {"v": 2}, "rs/c": {"v": 1}})
        async with sleeper:  # a service that is down during the restore and restarts afterwards
            await eventually(lambda: sleeper.status().revision >= before)
        seen.clear()

        await asyncio.to_thread(own_etcd.restore, backup)
        restored = {"rs/a": {"v": 1}, "rs/b": {"v": 1}}
        await eventually(lambda: held(client, "rs/") == restored, timeout=15)
        status = client.status()
        assert status.resets_backwards == 1 and status.revision < before
        assert sorted(seen) == [("rs/a", {"v": 1}, a1), ("rs/b", {"v": 1}, b1), ("rs/c", None, b1)]
        assert await in_etcd(server, "rs/") == {ns: r.doc for ns, r in server.runtime.mirror.state.items()}
        assert server.runtime.metrics.values["configcenter_mirror_diverged_total"] == 1
        await eventually(lambda: on_disk(live_dir, "rs/") == restored)

        new = await push(http, server, "rs/d", {"v": 1})  # and changes keep flowing
        await eventually(lambda: client.get("rs/d") == {"v": 1})
        assert client.status().revision == new

    restored["rs/d"] = {"v": 1}
    sleeper, _ = client_for([server.url], "rs/", sleeper_dir)
    async with sleeper:  # resumes from disk at a revision etcd no longer has: a reset, not silence
        await eventually(lambda: held(sleeper, "rs/") == restored)
        assert sleeper.status().resets_backwards == 1
    assert on_disk(sleeper_dir, "rs/") == restored


@pytest.mark.slow
async def test_failover_to_another_cluster_gets_a_reset_never_a_replay(
    make_server: Any, own_etcd: EtcdCluster, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    other = await asyncio.to_thread(EtcdCluster(1).start)
    try:
        a = await make_server(cluster=own_etcd)
        b = await make_server(cluster=other, prefix=a.prefix)
        # b's copy of tc/shared is at a lower revision than a's; b has more (and later) releases than a
        content_b = {"tc/shared": {"from": "b"}, "tc/only-b": {"v": 1}}
        for ns, doc in content_b.items():
            await push(http, b, ns, doc)
        for i in range(6):
            await push(http, b, "tc/filler", {"i": i})
        content_b["tc/filler"] = {"i": 5}
        content_a = {"tc/only-a": {"v": 1}, "tc/shared": {"from": "a"}}
        for ns, doc in content_a.items():
            await push(http, a, ns, doc)

        client, seen = client_for([a.url, b.url], "tc/", tmp_path / "live")
        restarted, _ = client_for([a.url], "tc/", tmp_path / "restarted")
        async with restarted:  # a service of region a, stopped before the fail-over
            await eventually(lambda: held(restarted, "tc/") == content_a)
        async with client:
            await eventually(lambda: held(client, "tc/") == content_a)
            cluster_a = client.status().cluster
            await a.stop()
            await eventually(lambda: held(client, "tc/") == content_b, timeout=15)
            status = client.status()
            assert status.server == b.url and status.resets_backwards == 1 and status.gaps == 0
            assert status.cluster not in (None, cluster_a)
            assert ("tc/only-a", None, status.revision) in seen and ("tc/only-b", {"v": 1}, 3) in seen
            await eventually(lambda: on_disk(tmp_path / "live", "tc/") == content_b)
            newer = await push(http, b, "tc/only-b", {"v": 2})
            await eventually(lambda: client.get("tc/only-b") == {"v": 2})
            assert client.status().revision == newer
        content_b["tc/only-b"] = {"v": 2}

        restarted, _ = client_for([b.url], "tc/", tmp_path / "restarted")
        async with restarted:  # its disk is region a's: the reset from region b replaces it
            await eventually(lambda: held(restarted, "tc/") == content_b)
            assert restarted.status().resets_backwards == 1
        assert on_disk(tmp_path / "restarted", "tc/") == content_b
    finally:
        await asyncio.to_thread(other.close)


async def test_a_snapshot_write_failure_keeps_only_the_cluster(
    server: RunningServer, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    client, _ = client_for([server.url], "wf/", tmp_path)
    async with client:
        await push(http, server, "wf/a", {"v": 1})
        await eventually(lambda: held(client, "wf/") == {"wf/a": {"v": 1}})
        writer = client._writer
        assert writer is not None
        store = writer.store

        def failing_save(entry: CachedDoc, *, replace_newer: bool = False) -> Path:
            if entry.ns == "wf/b":
                raise SnapshotError("disk full (test)")
            return SnapshotStore.save(store, entry, replace_newer=replace_newer)

        store.save = failing_save  # type: ignore[method-assign]  # a full disk, for one file
        await push(http, server, "wf/b", {"v": 1})
        await eventually(lambda: client.get("wf/b") == {"v": 1})
    marker = ResumeMarker.decode((tmp_path / "_resume.json").read_bytes())
    assert marker.revision == 0 and marker.cluster == client.status().cluster
