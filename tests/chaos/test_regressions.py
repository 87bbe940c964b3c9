"""Bugs the fault suite found, each pinned by a small deterministic test.

Marked ``xfail(strict=True)`` until fixed: when a fix lands the test passes,
strict xfail turns that into a failure, and whoever fixed it removes the
marker (and the matching entry of ``chaos.runner.KNOWN_BUGS``, which keeps the
chaos runs green meanwhile).  See ``docs/fault-suite.md``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest
from etcd3aio import SortOrder, SortTarget, prefix_range_end
from etcd3aio._protobuf import Compare

from chaos.sse_records import SSEParser, revision_of_id
from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.etcd import KeyLayout
from configcenter.server.settings import Limits
from configcenter_sdk import ConfigClient
from helpers import RunningServer, envelope, eventually, server_settings, start_server


async def release_in_one_txn(server: RunningServer, docs: dict[str, dict[str, Any]]) -> int:
    """What the API writes for a push (``docs/<ns>`` + ``history/<ns>/<version>``), for several
    namespaces in ONE etcd transaction; returns its revision."""
    kv = server.runtime.client.kv
    assert kv is not None
    layout = KeyLayout(server.prefix)
    compare, ops = [], []
    for ns, doc in docs.items():
        current = await kv.get(layout.doc_key(ns), keys_only=True)
        start = layout.history_prefix(ns)
        last = await kv.get(start, range_end=prefix_range_end(start), limit=1, keys_only=True,
                            sort_order=SortOrder.DESCEND, sort_target=SortTarget.KEY)
        version = (layout.version_of_history_key(last.kvs[0].key) if last.kvs else 0) + 1
        record = orjson.dumps({"version": version, "op": "push", "kind": "config", "doc": doc,
                               "author": "test", "message": "", "time": time.time()})
        mod = current.kvs[0].mod_revision if current.kvs else 0
        compare += [Compare(result=Compare.EQUAL, target=Compare.MOD, key=layout.doc_key(ns), mod_revision=mod),
                    kv.txn_compare_create_revision(layout.history_key(ns, version), 0)]
        ops += [kv.txn_op_put(layout.doc_key(ns), record), kv.txn_op_put(layout.history_key(ns, version), record)]
    resp = await kv.txn(compare, ops)
    assert resp.succeeded
    return int(resp.header.revision)


async def push(http: aiohttp.ClientSession, server: RunningServer, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(doc), headers=server.auth()) as resp:
        assert resp.status in (200, 201), await resp.text()
        revision: int = (await resp.json())["revision"]
        return revision


@pytest.mark.xfail(strict=True, reason=(
    "SDK bug: classify_change() treats a change whose revision equals the stream revision as a duplicate, "
    "but every namespace of one etcd transaction shares that revision: after the first namespace of a "
    "multi-namespace transaction is applied, the others are dropped (no on_change, stale get(), "
    "status().duplicates grows) until that namespace changes again (then a 'gap' re-read repairs it)"))
async def test_sdk_applies_every_namespace_of_a_multi_namespace_transaction(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    await push(http, server, "txn/a", {"v": 0})
    await push(http, server, "txn/b", {"v": 0})
    seen: list[tuple[str, int]] = []
    client = ConfigClient([server.url], ["txn/"], backoff_max=0.3, idle_timeout=3)
    client.on_change(None, lambda ns, doc, rev: seen.append((ns, rev)))
    async with client:
        await eventually(lambda: len(seen) == 2)
        revision = await release_in_one_txn(server, {"txn/a": {"v": 1}, "txn/b": {"v": 1}})
        await eventually(lambda: {("txn/a", revision), ("txn/b", revision)} <= set(seen), timeout=3)
        assert client.get("txn/a") == {"v": 1} and client.get("txn/b") == {"v": 1}


@pytest.mark.xfail(strict=True, reason=(
    "resume ids are not unique within a transaction: every change of one etcd transaction carries the "
    "same id, so a client whose connection broke after some (not all) of them resumes from that id and "
    "the ring replays only revisions above it: the transaction's other namespaces are never delivered"))
async def test_resume_after_part_of_a_transaction_delivers_the_rest(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    await push(http, server, "part/a", {"v": 0})
    async with http.get(f"{server.url}/v1/watch", params=[("ns", "part/")]) as resp:
        parser, frames = SSEParser(), []
        while not any(f[0] == "reset" for f in frames):
            frames += parser.feed(await resp.content.readany())
        revision = await release_in_one_txn(server, {"part/a": {"v": 1}, "part/b": {"v": 1}})
        changes: list[tuple[str, str | None, str]] = []
        while len(changes) < 2:
            changes += [f for f in parser.feed(await resp.content.readany()) if f[0] == "change"]
    assert [revision_of_id(c[1]) for c in changes] == [revision, revision]
    # the connection breaks after the first change of the transaction: resume from its id
    first_ns = orjson.loads(changes[0][2])["ns"]
    resumed: list[str] = []
    async with http.get(f"{server.url}/v1/watch", params=[("ns", "part/")],
                        headers={"Last-Event-ID": changes[0][1] or ""}) as resp:
        parser = SSEParser()
        deadline = asyncio.get_running_loop().time() + 2
        while asyncio.get_running_loop().time() < deadline:
            try:
                chunk = await asyncio.wait_for(resp.content.readany(), 0.5)
            except TimeoutError:
                continue
            for event, _, data in parser.feed(chunk):
                if event == "change":
                    resumed.append(orjson.loads(data)["ns"])
                elif event == "reset":
                    resumed += list(orjson.loads(data)["namespaces"])
    assert {"part/a", "part/b"} - {first_ns} <= set(resumed), resumed


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "server bug: when etcd breaks the mirror's Watch stream (member killed/restarted), the task grpc "
    "runs to consume the request iterator WatchSession._request_stream() is left pending and is "
    "garbage-collected (with it the async generator, suspended in its await): "
    "'Task was destroyed but it is pending!' then 'Task exception was never retrieved: RuntimeError: "
    "aclose(): asynchronous generator is already running' in the server log"))
async def test_watch_stream_error_leaves_no_unretrieved_task_exception(own_etcd: EtcdCluster) -> None:
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, ctx: errors.append(f"{ctx.get('message')} {ctx.get('exception')!r}"))
    # the mirror logs the gRPC error it lost etcd with; a captured log record would keep the
    # broken watch session alive (and hide the bug) until the end of the test
    mirror_log = logging.getLogger("configcenter.mirror")
    propagate, mirror_log.propagate = mirror_log.propagate, False
    server = await start_server(server_settings(own_etcd), own_etcd)
    try:
        member = own_etcd.members[0]
        for _ in range(2):
            await asyncio.to_thread(member.kill)
            await asyncio.sleep(0.3)
            await asyncio.to_thread(member.start)
            await asyncio.to_thread(member.wait_ready)
            await eventually(lambda: server.runtime.mirror.connected, timeout=10)
            gc.collect()  # what the interpreter does by itself sooner or later under load
            await asyncio.sleep(0.2)
            gc.collect()
    finally:
        await server.stop()
        mirror_log.propagate = propagate
        loop.set_exception_handler(previous)
    assert errors == []


@pytest.mark.xfail(strict=True, reason=(
    "server bug: Store.delete() checks that the namespace exists, then commits a transaction guarded "
    "by docs/<ns>'s mod_revision as re-read just before, and a missing key has mod_revision 0: when "
    "two deletes race (e.g. on two replicas) the second, re-reading after the first committed, "
    "'deletes' the absent key (etcd emits no event) and records a delete release in history; both "
    "answer 200 with different revisions, instead of one 200 and one 404"))
async def test_concurrent_deletes_of_one_namespace_succeed_once(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    a = await make_server()
    b = await make_server(prefix=a.prefix)

    async def delete(server: RunningServer) -> int:
        async with http.delete(f"{server.url}/v1/namespaces/del/ns", headers=server.auth()) as resp:
            return resp.status

    outcomes = []
    for i in range(5):
        await push(http, a, "del/ns", {"v": i})
        outcomes.append(sorted(await asyncio.gather(delete(a), delete(b))))
    assert all(o == [200, 404] for o in outcomes), outcomes


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "server bug: the mirror lists docs/ (and rebuilds the ring from history/) with single unpaginated "
    "etcd range reads; gRPC's default 4 MB receive limit makes them fail once the documents exceed "
    "4 MB in total (e.g. six documents of 700 KB, each within max_doc_bytes), so a (re)started "
    "replica never becomes ready, and a running one could not resync after a compaction"))
async def test_replica_starts_when_documents_exceed_4_mb(own_etcd: EtcdCluster, http: aiohttp.ClientSession) -> None:
    limits = Limits(max_body_bytes=2 << 20, max_doc_bytes=2 << 20, subscriber_queue=64, history_ring=1000)
    settings = server_settings(own_etcd, limits=limits)
    first = await start_server(settings, own_etcd)
    try:
        for i in range(6):
            await push(http, first, f"big/n{i}", {"blob": "x" * 700_000})
    finally:
        await first.stop()
    again = await start_server(settings, own_etcd, wait=False)
    try:
        await eventually(lambda: again.runtime.mirror.ready.is_set(), timeout=8)
    finally:
        await again.stop()


@pytest.mark.xfail(strict=True, reason=(
    "server bug: a push stores the record twice in one etcd transaction (docs/ and history/), so a "
    "document over ~750 KB, though within limits.max_doc_bytes (1 MB by default), exceeds etcd's "
    "1.5 MiB request limit and is answered 503 etcd_unavailable (etcd is fine; a retry cannot help) "
    "instead of being stored or refused with 413"))
async def test_document_within_max_doc_bytes_is_not_refused_as_etcd_unavailable(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(limits=Limits())  # the defaults: 1 MB body, 1 MB document
    body = envelope({"blob": "x" * 800_000})
    async with http.put(f"{server.url}/v1/namespaces/big/doc", json=body, headers=server.auth()) as resp:
        text = await resp.text()
    assert resp.status in (200, 201, 413), text

