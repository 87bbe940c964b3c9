"""Store on a real etcd: releases, history, rollback (also after compaction), CAS races, paged listings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from etcd3aio import prefix_range_end

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.errors import ConflictError, NotFoundError, PreconditionFailedError
from configcenter.server.etcd import KeyLayout, RevisionCompacted, Store, connect, read_range


@pytest.fixture
async def store(etcd: EtcdCluster) -> AsyncIterator[Store]:
    client = connect(etcd.endpoints)
    await client.connect()
    yield Store(client, KeyLayout(f"/cc-store-{uuid.uuid4().hex[:8]}/"))
    await client.close()


async def test_push_get_list_history(store: Store) -> None:
    first = await store.push("app/cfg", "config", {"a": 1}, author="ann", message="first")
    second = await store.push("app/cfg", "config", {"a": 2}, message="second")
    await store.push("app/other", "config", {"b": 1})

    assert (first.version, second.version) == (1, 2)
    assert second.revision > first.revision
    current = await store.get("app/cfg")
    assert (current.revision, current.doc) == (second.revision, {"a": 2})
    assert (await store.get_at("app/cfg", first.revision)).doc == {"a": 1}
    _, listed = await store.list_releases("app/")
    assert [r.ns for r in listed] == ["app/cfg", "app/other"]
    page = await store.history("app/cfg")
    assert [(e.revision, e.message, e.author) for e in page.entries] == [
        (second.revision, "second", ""), (first.revision, "first", "ann")]


async def test_history_pagination_newest_first(store: Store) -> None:
    revisions = [(await store.push("p/ns", "config", {"i": i})).revision for i in range(5)]
    first = await store.history("p/ns", limit=2)
    assert [e.revision for e in first.entries] == revisions[:-3:-1]
    assert first.next_before == revisions[3]
    second = await store.history("p/ns", limit=2, before=first.next_before)
    assert [e.revision for e in second.entries] == [revisions[2], revisions[1]]
    last = await store.history("p/ns", limit=2, before=second.next_before)
    assert [e.revision for e in last.entries] == [revisions[0]] and last.next_before is None


async def test_delete_keeps_history_and_versions_continue(store: Store) -> None:
    pushed = await store.push("d/ns", "config", {"x": 1})
    deleted = await store.delete("d/ns", message="bye")
    with pytest.raises(NotFoundError):
        await store.get("d/ns")
    again = await store.push("d/ns", "config", {"x": 2})
    assert (pushed.version, deleted.version, again.version) == (1, 2, 3)
    ops = [e.op for e in (await store.history("d/ns")).entries]
    assert ops == ["push", "delete", "push"]
    with pytest.raises(NotFoundError):
        await store.delete("missing/ns")


async def test_rollback_restores_content_as_new_release(store: Store) -> None:
    old = await store.push("r/ns", "config", {"v": "old"})
    await store.push("r/ns", "config", {"v": "new"})
    rolled = await store.rollback("r/ns", old.revision, author="ops")
    assert rolled.doc == {"v": "old"} and rolled.op == "rollback" and rolled.from_revision == old.revision
    assert (await store.get("r/ns")).revision == rolled.revision
    assert rolled.message == f"rollback to revision {old.revision}"


async def test_rollback_after_etcd_compaction(store: Store, etcd: EtcdCluster) -> None:
    old = await store.push("c/ns", "config", {"v": 1})
    latest = await store.push("c/ns", "config", {"v": 2})
    etcd.ctl("compact", str(latest.revision))
    rolled = await store.rollback("c/ns", old.revision)
    assert rolled.doc == {"v": 1}
    assert (await store.get_at("c/ns", old.revision)).doc == {"v": 1}


async def test_unknown_revision_and_deletion_target(store: Store) -> None:
    pushed = await store.push("u/ns", "config", {"v": 1})
    with pytest.raises(NotFoundError):
        await store.get_at("u/ns", pushed.revision + 1000)
    deleted = await store.delete("u/ns")
    with pytest.raises(ConflictError):
        await store.rollback("u/ns", deleted.revision)


async def test_concurrent_if_match_exactly_one_wins(store: Store) -> None:
    base = await store.push("race/ns", "config", {"n": 0})
    results = await asyncio.gather(
        *[store.push("race/ns", "config", {"n": i}, if_match=base.revision) for i in range(1, 9)],
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, PreconditionFailedError)]
    assert len(winners) == 1 and len(losers) == 7
    assert (await store.get("race/ns")).doc == winners[0].doc
    assert len((await store.history("race/ns")).entries) == 2


async def test_concurrent_pushes_without_if_match_all_land(store: Store) -> None:
    await asyncio.gather(*[store.push("lww/ns", "config", {"n": i}) for i in range(6)])
    entries = (await store.history("lww/ns", limit=100)).entries
    assert sorted(e.version for e in entries) == list(range(1, 7))
    assert len({e.revision for e in entries}) == 6


async def test_concurrent_deletes_exactly_one_wins(store: Store) -> None:
    for i in range(3):
        await store.push("del/ns", "config", {"i": i})
        results = await asyncio.gather(store.delete("del/ns"), store.delete("del/ns"), return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) == ["NotFoundError", "Release"], results
    ops = [e.op for e in (await store.history("del/ns", limit=100)).entries]
    assert ops == ["delete", "push"] * 3  # no delete release for a loser


class _PagesSeen:
    """The store's KV, noting the revision each range read asked for; ``between`` runs after the first."""

    def __init__(self, kv: Any, between: Callable[[], Awaitable[None]]) -> None:
        self._kv, self._between, self.revisions = kv, between, list[int]()

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self.revisions.append(kwargs.get("revision", 0))
        resp = await self._kv.get(*args, **kwargs)
        if len(self.revisions) == 1:
            await self._between()
        return resp


async def test_listing_pages_read_one_snapshot(store: Store) -> None:
    for i in range(5):
        await store.push(f"pg/n{i}", "config", {"i": i})
    seen = _PagesSeen(store._kv, lambda: store.push("pg/n4", "config", {"i": "later"}))
    start = store.layout.docs_prefix + b"pg/"
    header, items = await read_range(seen, start, prefix_range_end(start), timeout=5, page=2)
    assert [orjson.loads(i.value)["doc"]["i"] for i in items] == [0, 1, 2, 3, 4]  # not "later": one revision
    assert seen.revisions == [0] + [int(header.revision)] * 2


async def test_listing_starts_over_when_its_revision_is_compacted(store: Store, etcd: EtcdCluster) -> None:
    for i in range(5):
        await store.push(f"pc/n{i}", "config", {"i": i})

    async def compact() -> None:
        latest = await store.push("pc/n4", "config", {"i": "later"})
        await asyncio.to_thread(etcd.ctl, "compact", str(latest.revision))

    seen = _PagesSeen(store._kv, compact)
    start = store.layout.docs_prefix + b"pc/"
    header, items = await read_range(seen, start, prefix_range_end(start), timeout=5, page=2)
    assert [orjson.loads(i.value)["doc"]["i"] for i in items] == [0, 1, 2, 3, "later"]
    first = seen.revisions[1]
    assert seen.revisions == [0, first, 0, int(header.revision), int(header.revision)] and header.revision > first
    with pytest.raises(RevisionCompacted):  # pinned by the caller: no starting over
        await read_range(store._kv, start, prefix_range_end(start), revision=first, timeout=5)
