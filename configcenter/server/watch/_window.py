"""The releases of a window of revisions a replica never watched, rebuilt from ``history/``.

Why: after etcd compacted a replica's resume point, the replica re-lists ``docs/`` at a fresh
revision L.  The list says what holds *now*; it cannot say what happened in the window
(applied, L]: intermediate releases, and namespaces created *and* deleted inside it, are not in
it.  A subscriber that saw part of the window on another replica and resumes here must get the
rest of it, or a ``reset``; a difference against this replica's own state is neither.  History
records every release made through the API, deletions included, and is never compacted away
(its keys stay), so the window can be read from it.

Contract: ``window_releases`` gives every release whose *true* revision lies in (low, high],
read at ``high`` (one snapshot), or None when it cannot be read whole within bounds (etcd
compacted ``high``, more than ``limit`` releases, a record that does not parse).
``replays_to`` says whether those releases, applied to the state the replica had at ``low``,
give exactly the listed documents; if not (a write around the API, a history that disagrees
with ``docs/``) the window cannot be replayed exactly and the caller must make every resume
point below L get a reset.

Cost: one paged range of ``history/`` with ``min_mod_revision`` = low + 1.  etcd applies that
filter after reading the range, so each page costs etcd a scan of the rest of ``history/``;
this runs once per compaction re-list, not on any hot path.  A key's ``mod_revision`` is at
least its release's revision (a record copied by the layout migration carries its original
revision, ``keys.history_release``), so the filter never drops a release of the window; copies
of older releases that it lets through are dropped by their true revision.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from etcd3aio import prefix_range_end

from configcenter.model import Release
from configcenter.server.etcd import KeyLayout, compacted, history_release, read_range_since

SCAN_FACTOR = 4  # history keys read per release the window may hold (copies of older releases pass the filter)


async def window_releases(kv: Any, layout: KeyLayout, low: int, high: int, *, limit: int,
                          timeout: float) -> list[Release] | None:
    """Every release with revision in (``low``, ``high``], ordered by (revision, namespace); None if
    the window cannot be read whole (see module docstring)."""
    root = layout.history_root
    try:
        items, complete = await read_range_since(kv, root, prefix_range_end(root), since=low + 1, revision=high,
                                                 timeout=timeout, max_items=SCAN_FACTOR * limit + 1)
    except Exception as exc:
        if compacted(exc):
            return None
        raise
    if not complete:
        return None
    found: dict[tuple[str, int], Release] = {}
    for item in items:
        if layout.parse_history_key(item.key) is None:
            continue  # not a history key (e.g. a key of another tool under the prefix)
        try:
            release = history_release(layout, item)
        except (ValueError, KeyError, TypeError):
            return None
        if low < release.revision <= high:
            found[(release.ns, release.revision)] = release  # a legacy key and its migrated copy: one release
    if len(found) > limit:
        return None
    return sorted(found.values(), key=lambda r: (r.revision, r.ns))


def replays_to(before: Mapping[str, int], releases: Iterable[Release], listed: Mapping[str, int]) -> bool:
    """Whether ``releases`` applied in order to ``before`` ({ns: revision of its document}) give exactly
    ``listed`` ({ns: mod_revision}); a deletion of an absent namespace is a disagreement too."""
    state = dict(before)
    for release in releases:
        if release.op == "delete":
            if state.pop(release.ns, None) is None:
                return False
        else:
            state[release.ns] = release.revision
    return state == dict(listed)
