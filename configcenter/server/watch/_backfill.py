"""Rebuild the catch-up ring after a server (re)start from the ``history/`` keys (``keys.py``).

Why: a restarted replica would otherwise start with an empty ring, and every
SDK resuming with ``Last-Event-ID`` would get a full ``reset`` instead of the
few changes it missed — and its change callbacks would skip those releases.
History keys carry every release made through the API, with the release's
revision as their ``mod_revision``, so the newest ``capacity`` of them *are*
the ring (a key the history migration copied is newer than its release: its record
carries the release's revision, and it is dropped when that is below the floor).

Safety: the ring invariant (every change above the floor is in the ring)
only holds if history agrees with ``docs/``.  A record written around the API
(e.g. ``etcdctl put`` into ``docs/``) has no history entry; when any current
document's revision is missing from history, or history's latest entry of a
namespace disagrees with ``docs/``, the backfill gives up and the ring starts
empty at the list revision, exactly as without a backfill.  So does it when
etcd compacted the list revision meanwhile (the reads are pinned to it).

Size: the newest ``capacity`` history keys are found keys-only (one sorted
read), then their records are read per namespace in pages (``read_range``):
no single response holds more than a page of records.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from etcd3aio import SortOrder, SortTarget, prefix_range_end

from configcenter.model import Release
from configcenter.server.etcd import KeyLayout, LayoutMarker, compacted, history_release, history_revision, read_range

from .changes import Change

_LOOKUP_BATCH = 64


async def recent_changes(
    kv: Any, layout: KeyLayout, listed: dict[str, Any], revision: int, capacity: int, timeout: float,
    cluster_id: int = 0,
) -> tuple[list[Change], int]:
    """(changes in revision order, ring floor) consistent with ``listed`` at ``revision``;
    the changes carry ``cluster_id`` (the cluster they were read from)."""
    try:
        newest = await _newest_keys(kv, layout.history_root, revision, capacity, timeout)
        floor = 0
        if len(newest) >= capacity and newest:
            floor = min(int(item.mod_revision) for item in newest)  # keep whole revisions only
            newest = [item for item in newest if item.mod_revision > floor]
        items = await _records(kv, layout, newest, revision, timeout)
        # a migrated copy's key is newer than its release (keys.py): it is below the floor if it
        # did not make the newest `capacity` by its own revision
        releases = sorted((r for r in (_release(layout, item) for item in items) if r is not None
                           and r.revision > floor), key=lambda r: r.revision)
        if not _consistent(releases, listed, floor):
            return [], revision
        prevs = await _previous_revisions(kv, layout, releases, revision, timeout)
    except Exception as exc:
        if compacted(exc):
            return [], revision
        raise
    changes = []
    for release in releases:
        changes.append(Change(release, prevs.get(release.ns, 0), cluster_id))
        prevs[release.ns] = release.revision
    return changes, floor


async def _newest_keys(kv: Any, root: bytes, revision: int, capacity: int, timeout: float) -> list[Any]:
    """The ``capacity`` history keys (keys only) with the highest ``mod_revision`` at ``revision``."""
    resp = await kv.get(root, range_end=prefix_range_end(root), revision=revision, limit=capacity, keys_only=True,
                        sort_order=SortOrder.DESCEND, sort_target=SortTarget.MOD, timeout=timeout)
    return list(resp.kvs)


async def _records(kv: Any, layout: KeyLayout, wanted: list[Any], revision: int, timeout: float) -> list[Any]:
    """The key-values of the ``wanted`` history keys at ``revision``.

    A namespace's wanted keys are its newest versions (versions grow with revisions), so one
    paged range per namespace and layout, from its oldest wanted version to the end of that
    namespace's range, holds them.
    """
    ranges: dict[tuple[bytes, bytes], bytes] = {}
    for item in wanted:
        parsed = layout.parse_history_key(item.key)
        if parsed is None:
            continue
        ns, _, legacy = parsed
        bounds = layout.legacy_history_range(ns) if legacy else layout.history_range(ns)
        ranges[bounds] = min(ranges.get(bounds, item.key), item.key)
    keys = {item.key for item in wanted}
    todo = sorted(ranges.items())
    found: list[Any] = []
    for i in range(0, len(todo), _LOOKUP_BATCH):
        replies = await asyncio.gather(*[
            read_range(kv, first, end, revision=revision, timeout=timeout)
            for (_, end), first in todo[i:i + _LOOKUP_BATCH]
        ])
        found += [item for _, items in replies for item in items if item.key in keys]
    return found


def _release(layout: KeyLayout, item: Any) -> Release | None:
    try:
        return history_release(layout, item)
    except ValueError:
        return None


def _consistent(releases: list[Release], listed: dict[str, Any], floor: int) -> bool:
    latest = {r.ns: r for r in releases}
    for ns, release in latest.items():
        current = listed.get(ns)
        if release.op == "delete" and current is not None and current.mod_revision <= release.revision:
            return False
        if release.op != "delete" and (current is None or current.mod_revision != release.revision):
            return False
    in_history = {(r.ns, r.revision) for r in releases}
    return all(item.mod_revision <= floor or (ns, item.mod_revision) in in_history for ns, item in listed.items())


async def _previous_revisions(
    kv: Any, layout: KeyLayout, releases: list[Release], revision: int, timeout: float,
) -> dict[str, int]:
    """Revision of the release before each namespace's oldest one in the window (0 if none)."""
    oldest: dict[str, Release] = {}
    for release in releases:
        oldest.setdefault(release.ns, release)
    wanted = [(ns, r.version - 1) for ns, r in oldest.items() if r.version > 1]
    reply = await kv.get(layout.migration_key, revision=revision, timeout=timeout)
    marker = LayoutMarker.from_kv(reply.kvs[0] if reply.kvs else None)
    found: dict[str, int] = {}
    for i in range(0, len(wanted), _LOOKUP_BATCH):
        batch = wanted[i:i + _LOOKUP_BATCH]
        replies = await asyncio.gather(*[_previous(kv, layout, ns, version, revision, timeout, marker)
                                         for ns, version in batch])
        found.update((ns, prev) for (ns, _), prev in zip(batch, replies, strict=True) if prev)
    return found


async def _previous(kv: Any, layout: KeyLayout, ns: str, version: int, revision: int, timeout: float,
                    marker: LayoutMarker) -> int:
    """The revision of release ``version`` of ``ns`` (either layout), or 0.  Keys only, unless the
    key may be a migrated copy (layout 2, written since the migration began): then its record."""
    for key in (layout.history_key(ns, version), layout.legacy_history_key(ns, version)):
        reply = await kv.get(key, revision=revision, keys_only=True, timeout=timeout)
        if not reply.kvs:
            continue
        item = reply.kvs[0]
        if key == layout.history_key(ns, version) and marker.may_be_copy(int(item.mod_revision)):
            full = await kv.get(key, revision=revision, timeout=timeout)
            if full.kvs:
                return history_revision(full.kvs[0], orjson.loads(full.kvs[0].value))
        return int(item.mod_revision)
    return 0
