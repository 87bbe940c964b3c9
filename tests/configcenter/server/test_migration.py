"""Data written by the old history layout (``history/<ns>/<version>``) on a real etcd: served correctly
before, during (after a crash halfway) and after ``configcenter migrate``, by servers of this version.

The old data is written as the previous server wrote it: one transaction putting ``docs/<ns>`` and
``history/<ns>/<version:012d>`` with the release record.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from etcd3aio import prefix_range_end

from cli_helpers import run_cli
from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.model import Release
from configcenter.server.etcd import HistoryMigration, KeyLayout, connect, migrate_history, read_range
from helpers import RunningServer, eventually
from layout_helpers import NAMES, get_json, push, watch

Expected = dict[str, list[tuple[int, str, dict[str, Any] | None]]]  # ns -> [(revision, op, doc)] oldest first


async def write_old_layout(kv: Any, layout: KeyLayout, rounds: int = 3) -> Expected:
    """Releases of every name in layout 1, parents and children interleaved; ``a/b/c`` deleted last."""
    expected: Expected = {ns: [] for ns in NAMES}
    for _ in range(rounds):
        for ns in (*NAMES, *reversed(NAMES)):
            version = len(expected[ns]) + 1
            release = Release(ns, 0, version, "push", "config", {"owner": ns, "v": version}, "old", "", time.time())
            value = orjson.dumps(release.record())
            resp = await kv.txn([], [kv.txn_op_put(layout.doc_key(ns), value),
                                     kv.txn_op_put(layout.legacy_history_key(ns, version), value)])
            expected[ns].append((int(resp.header.revision), "push", release.doc))
    version = len(expected["a/b/c"]) + 1
    gone = Release("a/b/c", 0, version, "delete", "config", None, "old", "bye", time.time())
    resp = await kv.txn([], [kv.txn_op_delete(layout.doc_key("a/b/c")),
                             kv.txn_op_put(layout.legacy_history_key("a/b/c", version), orjson.dumps(gone.record()))])
    expected["a/b/c"].append((int(resp.header.revision), "delete", None))
    return expected


async def assert_served(http: aiohttp.ClientSession, server: RunningServer, expected: Expected) -> None:
    """History, get at every revision and diff answer exactly each name's own releases."""
    for ns, releases in expected.items():
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}/history?limit=100")
        assert status == 200, body
        assert [(e["revision"], e["op"], e["version"]) for e in body["entries"]] == [
            (rev, op, v) for v, (rev, op, _) in reversed(list(enumerate(releases, 1)))], ns
        for revision, _, doc in releases:
            status, body = await get_json(http, server, f"/v1/namespaces/{ns}?revision={revision}")
            assert status == 200 and body["doc"] == doc and body["revision"] == revision, (ns, revision, body)
        others = [rev for other, rels in expected.items() if other != ns for rev, _, _ in rels]
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}?revision={others[0]}")
        assert status == 404, (ns, body)
        status, body = await get_json(http, server, f"/v1/namespaces/{ns}/diff?from={releases[0][0]}"
                                                    f"&to={releases[1][0]}")
        assert status == 200 and body["changes"], (ns, body)


async def history_keys(server: RunningServer) -> tuple[list[bytes], list[bytes]]:
    """(layout-2 keys, layout-1 keys) under the server's prefix, read from etcd itself."""
    layout = KeyLayout(server.prefix)
    _, items = await read_range(server.runtime.client.kv, layout.history_root, prefix_range_end(layout.history_root),
                                keys_only=True, timeout=5)
    parsed = [(i.key, layout.parse_history_key(i.key)) for i in items]
    return [k for k, p in parsed if p and not p[2]], [k for k, p in parsed if p and p[2]]


@pytest.fixture
def prefix() -> str:
    return f"/cc-migrate-{uuid.uuid4().hex[:8]}/"


async def test_old_data_is_served_before_during_and_after_a_migration_interrupted_halfway(
    make_server: Any, etcd: EtcdCluster, http: aiohttp.ClientSession, prefix: str,
) -> None:
    layout = KeyLayout(prefix)
    client = connect(etcd.endpoints)
    await client.connect()
    expected = await write_old_layout(client.kv, layout)
    server = await make_server(prefix=prefix)
    await assert_served(http, server, expected)

    # before the migration this version writes layout 1, so older replicas still read it
    revision = await push(http, server, "a", {"before": "migration"})
    expected["a"].append((revision, "push", {"before": "migration"}))
    assert layout.legacy_history_key("a", len(expected["a"])) in (await history_keys(server))[1]

    # a migration that marks, moves half the keys and dies
    interrupted = HistoryMigration(client.kv, layout)
    assert await interrupted._mark()
    legacy = await interrupted._legacy_keys()
    for item in legacy[: len(legacy) // 2]:
        assert await interrupted._move(item)
    await assert_served(http, server, expected)
    revision = await push(http, server, "a/b", {"during": "migration"})  # now written in layout 2
    expected["a/b"].append((revision, "push", {"during": "migration"}))
    assert layout.history_key("a/b", len(expected["a/b"])) in (await history_keys(server))[0]
    await assert_served(http, server, expected)

    report = await migrate_history(client.kv, layout)
    assert (report.moved, report.conflicts, report.closed, report.remaining) == (
        len(legacy) - len(legacy) // 2, [], True, 0)
    current, old = await history_keys(server)
    assert old == [] and len(current) == sum(len(r) for r in expected.values())
    await assert_served(http, server, expected)

    again = await migrate_history(client.kv, layout)
    assert (again.moved, again.closed, again.remaining) == (0, False, 0)
    revision = await push(http, server, "a", {"after": "migration"})
    expected["a"].append((revision, "push", {"after": "migration"}))
    await assert_served(http, server, expected)
    await client.close()


async def test_a_server_restarted_after_the_migration_rebuilds_its_ring_with_the_releases_revisions(
    make_server: Any, etcd: EtcdCluster, http: aiohttp.ClientSession, prefix: str,
) -> None:
    layout = KeyLayout(prefix)
    client = connect(etcd.endpoints)
    await client.connect()
    expected = await write_old_layout(client.kv, layout)
    await migrate_history(client.kv, layout)
    await client.close()
    server = await make_server(prefix=prefix)
    await assert_served(http, server, expected)
    everything = sorted((rev, ns, op) for ns, rels in expected.items() for rev, op, _ in rels)
    since = everything[len(everything) // 2][0]
    async with watch(http, server, "a", "a/", "ab", resume=str(since)) as stream:
        events = await stream.until(lambda e: e.event == "change" and e.id == everything[-1][0])
    assert not [e for e in events if e.event == "reset"]
    changes = [(e.data["revision"], e.data["ns"], e.data["op"]) for e in events if e.event == "change"]
    assert changes == [item for item in everything if item[0] > since]


async def test_configcenter_migrate_moves_old_keys_and_reports(
    make_server: Any, etcd: EtcdCluster, http: aiohttp.ClientSession, prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout = KeyLayout(prefix)
    client = connect(etcd.endpoints)
    await client.connect()
    expected = await write_old_layout(client.kv, layout, rounds=1)
    await client.close()
    total = sum(len(r) for r in expected.values())
    endpoints = ",".join(f"http://{e}" if "://" not in e else e for e in etcd.endpoints)
    dry = await run_cli(capsys, None, "migrate", "--etcd", endpoints, "--prefix", prefix, "--dry-run", "--json",
                        token=None)
    assert dry.code == 0 and orjson.loads(dry.out)["remaining"] == total
    done = await run_cli(capsys, None, "migrate", "--etcd", endpoints, "--prefix", prefix, "--json", token=None)
    assert done.code == 0, done.err
    assert orjson.loads(done.out) == {"moved": total, "conflicts": [], "marked": True, "closed": True, "remaining": 0}
    server = await make_server(prefix=prefix)
    await eventually(lambda: server.runtime.mirror.ready.is_set())
    await assert_served(http, server, expected)
    assert (await history_keys(server))[1] == []
