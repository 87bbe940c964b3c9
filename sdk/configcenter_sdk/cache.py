"""The SDK's in-memory fallback cache.

One entry per namespace holds the last document the client received (or
loaded from the on-disk snapshot). The cache is bounded by entry count and
evicts the least frequently used namespace first (``cachetools.LFUCache``).

TTL means *freshness*, not lifetime: an entry older than its TTL is never
deleted by age. ``get`` keeps returning it, marked ``fresh=False`` with its
age, so a service whose backend is unreachable keeps serving the last known
document (fallback mode), and ``expired()`` lists it so the client can
revalidate it once a server answers again (``touch`` on "unchanged").

Revision ordering: ``CachedDoc.revision`` is etcd's global (cluster-wide,
monotonic) revision of the namespace document, so a larger number is always
newer. ``put`` refuses to replace an entry with one of a *smaller* revision;
this protects against a late reply from a lagging server (or a reordered
event after fail-over) rolling a namespace back. An equal revision replaces
the entry (same document, e.g. a live copy superseding the disk copy).

Thread-safety: the asyncio client and its thread-backed sync wrapper share
one cache, so every operation (including ``get``, which updates the LFU
counters) runs under one ``threading.Lock``. ``on_evict`` callbacks run
after the lock is released, so a callback may call back into the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from cachetools import Cache, LFUCache

__all__ = ["CachedDoc", "FallbackCache", "Kind", "Lookup", "Source", "Track"]

Kind = Literal["routes", "config"]
Source = Literal["live", "disk"]
Track = Literal["base", "canary"]

_KINDS: frozenset[str] = frozenset({"routes", "config"})
_SOURCES: frozenset[str] = frozenset({"live", "disk"})
_TRACKS: frozenset[str] = frozenset({"base", "canary"})

log = logging.getLogger("configcenter_sdk.cache")


@dataclass(frozen=True, slots=True)
class CachedDoc:
    """One namespace document as the SDK last saw it.

    ``doc`` is shared, not copied: treat it as immutable. ``stored_at`` is a
    reading of the cache's clock (``FallbackCache.clock``), not wall time;
    ``source`` tells whether it came from a server (``live``) or a snapshot
    file (``disk``). Raises ``ValueError`` for an unknown kind/source/track or a
    negative revision.

    Canary releases (``_track``): ``doc``/``kind`` are the *effective* document, the one this
    instance runs; ``track`` says whether that is the record's base or its canary's candidate, and
    ``record`` keeps the record as received (``{kind, doc, canary}``) when it carries a canary (None
    otherwise), so a snapshot can be decided again after a restart.
    """

    ns: str
    revision: int
    kind: Kind
    doc: Mapping[str, Any]
    stored_at: float
    source: Source = "live"
    track: Track = "base"
    record: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {sorted(_SOURCES)}, got {self.source!r}")
        if isinstance(self.revision, bool) or not isinstance(self.revision, int) or self.revision < 0:
            raise ValueError(f"revision must be a non-negative int, got {self.revision!r}")
        if self.track not in _TRACKS:
            raise ValueError(f"track must be one of {sorted(_TRACKS)}, got {self.track!r}")


@dataclass(frozen=True, slots=True)
class Lookup:
    """Result of a cache read: the entry, whether it is still fresh, and its age in seconds."""

    entry: CachedDoc
    fresh: bool
    age: float


@dataclass(slots=True)
class _Slot:
    """Mutable holder stored in the LFU cache, so replacing or revalidating an
    entry does not go through ``__setitem__`` (which would count as a use)."""

    entry: CachedDoc
    ttl: float


class _CountingLFU(LFUCache[str, _Slot]):
    """``LFUCache`` that counts evictions and queues the evicted slots.

    ``popitem`` is only called by ``Cache.__setitem__`` to make room, so every
    call is an eviction. The queue is drained by ``FallbackCache`` after it
    releases its lock.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evictions = 0
        self.evicted: list[_Slot] = []

    def popitem(self) -> tuple[str, _Slot]:
        key, slot = super().popitem()
        self.evictions += 1
        self.evicted.append(slot)
        return key, slot

    def peek(self, key: str) -> _Slot | None:
        """Return the slot without counting a use (bypasses ``LFUCache.__getitem__``)."""
        if key not in self:
            return None
        return Cache.__getitem__(self, key)


def _check_ttl(ttl: float) -> float:
    if not ttl >= 0:  # also rejects NaN
        raise ValueError(f"ttl must be >= 0 seconds, got {ttl!r}")
    return float(ttl)


class FallbackCache:
    """Bounded, LFU-evicting, thread-safe namespace cache with freshness TTLs.

    An entry is fresh while ``age < ttl`` and stale from ``age == ttl`` on;
    stale entries stay until evicted or removed. Only ``get`` counts as a use
    for LFU; ``put`` of a new namespace starts it at one use, while replacing,
    ``peek`` and ``touch`` leave the use count unchanged.
    """

    def __init__(
        self,
        maxsize: int = 1024,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[CachedDoc], None] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize!r}")
        self._ttl = _check_ttl(ttl)
        self._clock = clock
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._data = _CountingLFU(maxsize)

    @property
    def maxsize(self) -> int:
        """Maximum number of namespaces held."""
        return int(self._data.maxsize)

    @property
    def ttl(self) -> float:
        """Default freshness TTL in seconds."""
        return self._ttl

    @property
    def clock(self) -> Callable[[], float]:
        """The clock ``stored_at`` and ages are measured with; build entries with it."""
        return self._clock

    @property
    def evictions(self) -> int:
        """Number of entries evicted to make room (``remove`` is not counted)."""
        return self._data.evictions

    def put(self, entry: CachedDoc, ttl: float | None = None) -> bool:
        """Store ``entry`` for ``entry.ns`` with ``ttl`` (None = the default).

        Returns False, changing nothing, if the cache holds a *newer* revision
        of that namespace (see the module docstring); True otherwise. Inserting
        a new namespace into a full cache evicts the least frequently used one
        (ties: the one inserted/used least recently), reported to ``on_evict``.
        """
        effective = self._ttl if ttl is None else _check_ttl(ttl)
        with self._lock:
            slot = self._data.peek(entry.ns)
            if slot is not None:
                if entry.revision < slot.entry.revision:
                    return False
                slot.entry, slot.ttl = entry, effective
                return True
            self._data[entry.ns] = _Slot(entry, effective)
            evicted, self._data.evicted = self._data.evicted, []
        self._notify_evicted(evicted)
        return True

    def get(self, ns: str) -> Lookup | None:
        """Return the entry for ``ns`` with freshness and age, or None; counts as a use."""
        with self._lock:
            try:
                slot = self._data[ns]
            except KeyError:
                return None
            return self._lookup(slot, self._clock())

    def peek(self, ns: str) -> Lookup | None:
        """Like ``get`` but does not count as a use (for status pages, revalidation)."""
        with self._lock:
            slot = self._data.peek(ns)
            return None if slot is None else self._lookup(slot, self._clock())

    def touch(self, ns: str, now: float | None = None) -> bool:
        """Mark ``ns`` revalidated: ``stored_at`` becomes ``now`` (default: the clock).

        Used when a server confirms the cached revision is still current; the
        document, revision, source and TTL are kept. Returns False if ``ns``
        is not cached. Does not count as a use.
        """
        with self._lock:
            slot = self._data.peek(ns)
            if slot is None:
                return False
            stamp = self._clock() if now is None else now
            slot.entry = replace(slot.entry, stored_at=stamp)
            return True

    def remove(self, ns: str) -> bool:
        """Drop ``ns``; returns whether it was cached. Not an eviction (no callback)."""
        with self._lock:
            return self._data.pop(ns, None) is not None

    def namespaces(self) -> list[str]:
        """The cached namespaces, sorted."""
        with self._lock:
            return sorted(self._data)

    def expired(self) -> list[str]:
        """Namespaces whose entry is stale now, stalest (largest age - ttl) first."""
        with self._lock:
            now = self._clock()
            overdue: list[tuple[float, str]] = []
            for ns in list(self._data):
                slot = self._data.peek(ns)
                if slot is not None and not self._lookup(slot, now).fresh:
                    overdue.append((now - slot.entry.stored_at - slot.ttl, ns))
        return [ns for _, ns in sorted(overdue, key=lambda item: (-item[0], item[1]))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, ns: object) -> bool:
        with self._lock:
            return isinstance(ns, str) and ns in self._data

    @staticmethod
    def _lookup(slot: _Slot, now: float) -> Lookup:
        age = max(0.0, now - slot.entry.stored_at)
        return Lookup(entry=slot.entry, fresh=age < slot.ttl, age=age)

    def _notify_evicted(self, evicted: list[_Slot]) -> None:
        """Run ``on_evict`` outside the lock; a failing callback is logged, never raised."""
        if self._on_evict is None:
            return
        for slot in evicted:
            try:
                self._on_evict(slot.entry)
            except Exception:
                log.exception("on_evict callback failed for namespace %s", slot.entry.ns)
