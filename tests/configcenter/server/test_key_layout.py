"""Names that nest or prefix each other (``a``, ``a/b``, ``a/b/c``, ``ab``) never see each other's history.

Every path that reads history is exercised through the HTTP API of a real server on a real etcd:
the write guard (push, rollback, delete of a parent after its child), get at a revision, history,
diff, rollback, the catch-up ring rebuilt from history at start, history after a compaction, and
schema history.  ``test_migration.py`` covers data written by the old layout.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from etcd3aio import prefix_range_end

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.etcd import KeyLayout, read_range
from helpers import RunningServer, eventually
from layout_helpers import NAMES, get_json, push, push_all, watch


async def test_a_parent_is_written_after_its_children_and_each_name_keeps_its_own_versions(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    revisions = await push_all(http, server)
    for ns, revs in revisions.items():
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}/history?limit=100")
        assert status == 200
        assert [e["revision"] for e in body["entries"]] == revs[::-1], ns
        assert [e["version"] for e in body["entries"]] == list(range(len(revs), 0, -1)), ns
        assert {e["ns"] for e in body["entries"]} == {ns}
    async with http.delete(f"{server.url}/v1/namespaces/a", headers=server.auth()) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(f"{server.url}/v1/namespaces/a/rollback", json={"to_revision": revisions["a"][0]},
                         headers=server.auth()) as resp:
        assert resp.status == 200, await resp.text()


async def test_a_revision_of_another_name_is_not_found_on_get_diff_and_rollback(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    revisions = await push_all(http, server)
    for ns, others in (("a", ("a/b", "ab", "a/000000000001")), ("a/b", ("a/b/c", "a")), ("ab", ("a",))):
        for other in others:
            foreign = revisions[other][0]
            status, body = await get_json(http, server, f"/v1/namespaces/{ns}?revision={foreign}")
            assert status == 404, (ns, other, body)
            status, body = await get_json(http, server, f"/v1/namespaces/{ns}/diff?from={foreign}")
            assert status == 404, (ns, other, body)
            async with http.post(f"{server.url}/v1/namespaces/{ns}/rollback", json={"to_revision": foreign},
                                 headers=server.auth()) as resp:
                assert resp.status == 404, (ns, other, await resp.text())
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}?revision={revisions[ns][0]}")
        assert status == 200 and body["doc"] == {"owner": ns, "i": 0}
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}/diff?from={revisions[ns][0]}")
        assert status == 200 and body["from"] == revisions[ns][0]


async def test_a_range_of_one_name_holds_only_that_names_keys(server: RunningServer,
                                                             http: aiohttp.ClientSession) -> None:
    await push_all(http, server, rounds=1)
    layout = KeyLayout(server.prefix)
    kv = server.runtime.client.kv
    for ns in NAMES:
        start, end = layout.history_range(ns)
        _, items = await read_range(kv, start, end, keys_only=True, timeout=5)
        assert [layout.parse_history_key(i.key)[0] for i in items] == [ns] * 2, ns  # type: ignore[index]


async def test_the_ring_rebuilt_from_history_at_start_replays_each_names_own_chain(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    first = await make_server()
    revisions = await push_all(http, first)
    await first.stop()
    restarted = await make_server(prefix=first.prefix)
    since = revisions["a"][0]
    async with watch(http, restarted, "a", "a/", "ab", resume=str(since)) as stream:
        events = await stream.until(lambda e: e.event == "change" and e.id == max(max(r) for r in revisions.values()))
    changes = [e.data for e in events if e.event == "change"]
    assert not [e for e in events if e.event == "reset"]
    expected = sorted((rev, ns) for ns, revs in revisions.items() for rev in revs if rev > since)
    assert [(c["revision"], c["ns"]) for c in changes] == expected
    last: dict[str, int] = {ns: max((r for r in revs if r <= since), default=0) for ns, revs in revisions.items()}
    for change in changes:  # each name's prev_revision chain is its own, never a sibling's
        assert change["prev_revision"] == last[change["ns"]], change
        last[change["ns"]] = change["revision"]


async def test_history_of_nested_names_survives_compaction(make_server: Any, own_etcd: EtcdCluster,
                                                          http: aiohttp.ClientSession) -> None:
    server = await make_server(cluster=own_etcd)
    revisions = await push_all(http, server)
    kv = server.runtime.client.kv
    await kv.compact(revisions["a"][-1], physical=True)
    later = await push(http, server, "a/b", {"after": "compaction"})
    await eventually(lambda: server.runtime.mirror.applied_revision >= later)
    for ns, revs in revisions.items():
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}?revision={revs[0]}")
        assert status == 200 and body["doc"]["owner"] == ns
    status, body = await get_json(http, server, f"/v1/namespaces/a?revision={later}")
    assert status == 404


async def test_schema_history_of_a_name_excludes_its_children(server: RunningServer,
                                                             http: aiohttp.ClientSession) -> None:
    schema = {"type": "object"}
    for target in ("a", "a/b", "ab", "a/b"):
        async with http.put(f"{server.url}/v1/schemas/{target}", json={"schema": schema},
                            headers=server.auth()) as resp:
            assert resp.status in (200, 201), await resp.text()
    counts = {}
    for target in ("a", "a/b", "ab"):
        status, body = await get_json(http, server, f"/v1/schema-history/{target}")
        assert status == 200, body
        counts[target] = len(body["entries"])
    assert counts == {"a": 1, "a/b": 2, "ab": 1}
    root = f"{server.prefix}schema-history/".encode()
    _, items = await read_range(server.runtime.client.kv, root, prefix_range_end(root), keys_only=True, timeout=5)
    assert len(items) == 4


async def test_a_new_prefix_starts_in_the_new_layout_with_its_first_release(server: RunningServer,
                                                                           http: aiohttp.ClientSession) -> None:
    """The layout marker is written in the first release's own transaction: no extra revision."""
    first = await push(http, server, "a/b", {"first": True})
    layout = KeyLayout(server.prefix)
    kv = server.runtime.client.kv
    marker = (await kv.get(layout.migration_key)).kvs[0]
    assert marker.create_revision == first
    history = (await kv.get(layout.history_key("a/b", 1))).kvs[0]
    assert history.mod_revision == first
