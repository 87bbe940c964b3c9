"""One namespace's history in etcd, across both key layouts (``keys.py``), by version and by revision.

Contract
--------
* ``read_history_keys(ns)`` returns the history keys of exactly ``ns`` (layout 2's range, plus
  layout 1's keys whose remainder is a bare version, while a migration may have left any), sorted
  by version, with the migration marker read in the same round trip.
* A release's revision is its key's ``mod_revision``, except for a copy the migration wrote
  (its record carries ``"revision"``).  Copies exist only among layout-2 keys whose
  ``mod_revision`` is in the marker's copy window (``LayoutMarker.may_be_copy``), so only those
  keys are read to learn their revision, and only while a binary search needs them: revisions grow with
  versions, so finding a revision costs O(log n) value reads at most, none for plain keys.
* If both layouts hold the same version (an old replica wrote after the migration began), the
  layout-2 key wins; the layout-1 key stays for the migration to report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from configcenter.model import Release

from .client import etcd_errors, read_range
from .keys import KeyLayout, history_revision


@dataclass(frozen=True, slots=True)
class LayoutMarker:
    """The migration marker (``meta/history-layout``) as read.

    Absent: layout 1 is written.  Present: layout 2 is written; ``legacy_left`` while layout-1
    keys may remain; migrated copies exist only with a ``mod_revision`` in
    [``since`` (the marker's creation), ``copies_until``] — unbounded while the migration runs,
    empty on a prefix that started in layout 2.
    """

    exists: bool = False
    mod_revision: int = 0
    since: int = 0
    legacy_left: bool = True
    copies_until: int = 0

    @classmethod
    def from_kv(cls, kv: Any | None) -> LayoutMarker:
        if kv is None:
            return cls()
        record = orjson.loads(kv.value)
        return cls(True, int(kv.mod_revision), int(kv.create_revision), bool(record.get("legacy", True)),
                   int(record.get("copies_until") or 0))

    def may_be_copy(self, mod_revision: int) -> bool:
        """Whether a layout-2 key with this ``mod_revision`` may be a migrated copy."""
        if not self.exists or mod_revision < self.since:
            return False
        return self.legacy_left or mod_revision <= self.copies_until


@dataclass(slots=True)
class HistoryKey:
    """One history key of a namespace: its version, key, ``mod_revision`` and (once read) key-value."""

    version: int
    key: bytes
    mod_revision: int
    legacy: bool
    kv: Any = None


@dataclass(frozen=True, slots=True)
class NamespaceHistory:
    ns: str
    keys: list[HistoryKey]
    marker: LayoutMarker


class HistoryReader:
    """Reads a namespace's history keys and finds releases by revision (see module contract).

    Once a marker read says no layout-1 key is left (``legacy_gone``), layout 1 is not read again:
    the migration never goes back.
    """

    def __init__(self, kv: Callable[[], Any], layout: KeyLayout, timeout: float) -> None:
        self._get_kv = kv
        self._layout = layout
        self._timeout = timeout
        self.legacy_gone = False

    @property
    def _kv(self) -> Any:
        return self._get_kv()

    async def marker(self) -> LayoutMarker:
        with etcd_errors("read the history layout marker"):
            resp = await self._kv.get(self._layout.migration_key, timeout=self._timeout)
        return LayoutMarker.from_kv(resp.kvs[0] if resp.kvs else None)

    async def keys(self, ns: str) -> NamespaceHistory:
        """Every history key of exactly ``ns``, sorted by version, and the marker (one round trip)."""
        start, end = self._layout.history_range(ns)
        legacy_start, legacy_end = self._layout.legacy_history_range(ns)
        reads = [read_range(self._kv, start, end, keys_only=True, timeout=self._timeout)]
        if not self.legacy_gone:
            reads.append(read_range(self._kv, legacy_start, legacy_end, keys_only=True, timeout=self._timeout))
        with etcd_errors(f"read history of {ns}"):
            marker, *ranges = await asyncio.gather(self.marker(), *reads)
        current, legacy = ranges[0][1], (ranges[1][1] if len(ranges) > 1 else [])
        self.legacy_gone = marker.exists and not marker.legacy_left
        by_version: dict[int, HistoryKey] = {}
        for item, is_legacy in [*((i, True) for i in legacy), *((i, False) for i in current)]:
            parsed = self._layout.parse_history_key(item.key)
            if parsed is None or parsed[0] != ns:
                continue  # a child namespace's key inside layout 1's range
            by_version[parsed[1]] = HistoryKey(parsed[1], item.key, int(item.mod_revision), is_legacy)
        return NamespaceHistory(ns, [by_version[v] for v in sorted(by_version)], marker)

    async def revision_of(self, history: NamespaceHistory, entry: HistoryKey) -> int:
        """The revision of the release ``entry`` holds (reads its value only if it may be a copy)."""
        if entry.legacy or not history.marker.may_be_copy(entry.mod_revision):
            return entry.mod_revision
        kv = await self.value(entry)
        return history_revision(kv, orjson.loads(kv.value)) if kv is not None else entry.mod_revision

    async def value(self, entry: HistoryKey) -> Any:
        """The key-value of ``entry`` (read once), or None if it vanished (a migration moved it)."""
        if entry.kv is None:
            with etcd_errors("read a history entry"):
                resp = await self._kv.get(entry.key, timeout=self._timeout)
            entry.kv = resp.kvs[0] if resp.kvs else None
        return entry.kv

    async def lower_bound(self, history: NamespaceHistory, revision: int) -> int:
        """Index of the first entry whose release revision is >= ``revision`` (len if none)."""
        low, high = 0, len(history.keys)
        while low < high:
            middle = (low + high) // 2
            if await self.revision_of(history, history.keys[middle]) < revision:
                low = middle + 1
            else:
                high = middle
        return low

    async def release(self, history: NamespaceHistory, entry: HistoryKey) -> Release | None:
        kv = await self.value(entry)
        if kv is None:
            return None
        record = orjson.loads(kv.value)
        record["version"] = entry.version
        return Release.from_record(history.ns, history_revision(kv, record), record)

    async def releases(self, history: NamespaceHistory, entries: list[HistoryKey]) -> list[Release]:
        """The releases of ``entries`` (layout-2 keys in one paged range, the rest one by one)."""
        wanted = [e for e in entries if e.kv is None and not e.legacy]
        if wanted:
            low, high = min(e.key for e in wanted), max(e.key for e in wanted)
            with etcd_errors(f"read history of {history.ns}"):
                _, items = await read_range(self._kv, low, high + b"\0", timeout=self._timeout)
            found = {item.key: item for item in items}
            for entry in wanted:
                entry.kv = found.get(entry.key)
        releases = await asyncio.gather(*(self.release(history, e) for e in entries))
        return [r for r in releases if r is not None]
