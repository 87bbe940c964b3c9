"""Rebuild the catch-up ring after a server (re)start from the ``history/`` keys.

Why: a restarted replica would otherwise start with an empty ring, and every
SDK resuming with ``Last-Event-ID`` would get a full ``reset`` instead of the
few changes it missed — and its change callbacks would skip those releases.
History keys carry every release made through the API, with the release's
revision as their ``mod_revision``, so the newest ``capacity`` of them *are*
the ring.

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

from ..model import Release
from .changes import Change
from .etcd import KeyLayout, compacted, read_range

_LOOKUP_BATCH = 64


async def recent_changes(
    kv: Any, layout: KeyLayout, listed: dict[str, Any], revision: int, capacity: int, timeout: float,
    cluster_id: int = 0,
) -> tuple[list[Change], int]:
    """(changes in revision order, ring floor) consistent with ``listed`` at ``revision``;
    the changes carry ``cluster_id`` (the cluster they were read from)."""
    root = f"{layout.prefix}history/".encode()
    try:
        newest = await _newest_keys(kv, root, revision, capacity, timeout)
        floor = 0
        if len(newest) >= capacity and newest:
            floor = min(int(item.mod_revision) for item in newest)  # keep whole revisions only
            newest = [item for item in newest if item.mod_revision > floor]
        items = await _records(kv, newest, revision, timeout)
        releases = sorted((_release(root, item) for item in items), key=lambda r: r.revision)
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


async def _records(kv: Any, wanted: list[Any], revision: int, timeout: float) -> list[Any]:
    """The key-values of the ``wanted`` history keys at ``revision``.

    A namespace's wanted keys are its newest versions (versions grow with revisions), so one
    paged range per namespace, from its oldest wanted version to its last, holds them.
    """
    oldest: dict[bytes, bytes] = {}
    for item in wanted:
        ns_prefix = item.key[:item.key.rindex(b"/") + 1]
        oldest[ns_prefix] = min(oldest.get(ns_prefix, item.key), item.key)
    keys = {item.key for item in wanted}
    ranges = sorted(oldest.items())
    found: list[Any] = []
    for i in range(0, len(ranges), _LOOKUP_BATCH):
        replies = await asyncio.gather(*[
            read_range(kv, first, prefix_range_end(ns_prefix), revision=revision, timeout=timeout)
            for ns_prefix, first in ranges[i:i + _LOOKUP_BATCH]
        ])
        found += [item for _, items in replies for item in items if item.key in keys]
    return found


def _release(root: bytes, item: Any) -> Release:
    ns, _, version = item.key[len(root):].decode().rpartition("/")
    record = orjson.loads(item.value)
    record["version"] = int(version)
    return Release.from_record(ns, int(item.mod_revision), record)


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
    found: dict[str, int] = {}
    for i in range(0, len(wanted), _LOOKUP_BATCH):
        batch = wanted[i:i + _LOOKUP_BATCH]
        replies = await asyncio.gather(*[
            kv.get(layout.history_key(ns, version), revision=revision, keys_only=True, timeout=timeout)
            for ns, version in batch
        ])
        for (ns, _), reply in zip(batch, replies, strict=True):
            if reply.kvs:
                found[ns] = int(reply.kvs[0].mod_revision)
    return found
