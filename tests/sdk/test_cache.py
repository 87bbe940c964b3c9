"""Tests for configcenter_sdk.cache.FallbackCache (freshness TTL, LFU eviction, revisions, threads)."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from typing import Any

import pytest

from configcenter_sdk.cache import CachedDoc, FallbackCache, Lookup


class FakeClock:
    """Controllable clock: call it to read, assign/advance ``now`` to move time."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def doc(ns: str, revision: int = 1, *, clock: FakeClock, **extra: Any) -> CachedDoc:
    fields: dict[str, Any] = {"kind": "config", "doc": {"v": revision}, "source": "live"} | extra
    return CachedDoc(ns=ns, revision=revision, stored_at=clock(), **fields)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> FallbackCache:
    return FallbackCache(maxsize=16, ttl=10.0, clock=clock)


def looked_up(cache: FallbackCache, ns: str) -> Lookup:
    result = cache.get(ns)
    assert result is not None
    return result


# --- freshness TTL -----------------------------------------------------------------


def test_entry_is_fresh_until_exactly_ttl_then_stale_but_still_served(
    cache: FallbackCache, clock: FakeClock
) -> None:
    entry = doc("svc/a", clock=clock)
    assert cache.put(entry)
    assert looked_up(cache, "svc/a") == Lookup(entry=entry, fresh=True, age=0.0)

    clock.advance(9.5)
    assert looked_up(cache, "svc/a").fresh
    assert cache.expired() == []

    clock.advance(0.5)  # age == ttl exactly: stale
    stale = looked_up(cache, "svc/a")
    assert stale == Lookup(entry=entry, fresh=False, age=10.0)
    assert cache.expired() == ["svc/a"]

    clock.advance(1000.0)  # never deleted by age
    assert looked_up(cache, "svc/a").age == 1010.0
    assert "svc/a" in cache and len(cache) == 1


def test_per_entry_ttl_overrides_default(cache: FallbackCache, clock: FakeClock) -> None:
    cache.put(doc("short", clock=clock), ttl=2.0)
    cache.put(doc("default", clock=clock))
    cache.put(doc("zero", clock=clock), ttl=0.0)
    assert [n for n in ("short", "default", "zero") if looked_up(cache, n).fresh] == ["short", "default"]

    clock.advance(2.0)
    assert not looked_up(cache, "short").fresh
    assert looked_up(cache, "default").fresh
    assert cache.expired() == ["zero", "short"]  # stalest first: zero is 2s overdue, short 0s


def test_replacing_entry_applies_new_ttl(cache: FallbackCache, clock: FakeClock) -> None:
    cache.put(doc("a", 1, clock=clock), ttl=1.0)
    cache.put(doc("a", 2, clock=clock))  # ttl=None -> default 10s
    clock.advance(5.0)
    assert looked_up(cache, "a").fresh


def test_touch_revalidates_stale_entry(cache: FallbackCache, clock: FakeClock) -> None:
    entry = doc("a", 7, clock=clock, source="disk")
    cache.put(entry, ttl=3.0)
    clock.advance(4.0)
    assert cache.expired() == ["a"]

    assert cache.touch("a")
    after = looked_up(cache, "a")
    assert after.fresh and after.age == 0.0
    assert after.entry == dataclasses.replace(entry, stored_at=clock())
    assert cache.expired() == []

    clock.advance(2.9)
    assert looked_up(cache, "a").fresh  # kept the per-entry ttl of 3s
    clock.advance(0.1)
    assert not looked_up(cache, "a").fresh

    assert cache.touch("a", now=clock() - 1.0)
    assert looked_up(cache, "a").age == 1.0
    assert not cache.touch("missing")


def test_age_never_negative(cache: FallbackCache, clock: FakeClock) -> None:
    cache.put(CachedDoc("a", 1, "config", {}, stored_at=clock() + 5.0))
    assert looked_up(cache, "a").age == 0.0


# --- LFU eviction --------------------------------------------------------------------


def test_lfu_evicts_least_used_not_oldest(clock: FakeClock) -> None:
    evicted: list[CachedDoc] = []
    cache = FallbackCache(maxsize=3, ttl=10.0, clock=clock, on_evict=evicted.append)
    for ns in ("a", "b", "c"):
        cache.put(doc(ns, clock=clock))
    for ns in ("a", "a", "c"):  # "a" is the oldest but the most used; "b" never read
        cache.get(ns)

    cache.put(doc("d", clock=clock))
    assert cache.namespaces() == ["a", "c", "d"]
    assert cache.evictions == 1
    assert [e.ns for e in evicted] == ["b"]

    cache.put(doc("e", clock=clock))  # "d" (1 use) goes before "c" (2 uses)
    assert cache.namespaces() == ["a", "c", "e"]
    assert cache.evictions == 2
    assert [e.ns for e in evicted] == ["b", "d"]


def test_peek_touch_and_replace_do_not_count_as_use(clock: FakeClock) -> None:
    cache = FallbackCache(maxsize=3, ttl=10.0, clock=clock)
    for ns in ("a", "b", "c"):
        cache.put(doc(ns, clock=clock))
    for _ in range(5):
        assert cache.peek("a") is not None
        cache.touch("a")
        cache.put(doc("a", 1, clock=clock))
    cache.get("b")
    cache.get("c")

    cache.put(doc("d", clock=clock))
    assert "a" not in cache
    assert cache.namespaces() == ["b", "c", "d"]


def test_remove_is_not_an_eviction(clock: FakeClock) -> None:
    evicted: list[CachedDoc] = []
    cache = FallbackCache(maxsize=3, clock=clock, on_evict=evicted.append)
    cache.put(doc("a", clock=clock))
    assert cache.remove("a")
    assert not cache.remove("a")
    assert len(cache) == 0 and cache.get("a") is None and cache.peek("a") is None
    assert cache.evictions == 0 and evicted == []


def test_failing_on_evict_is_logged_and_callback_may_reenter(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[list[str]] = []

    def on_evict(entry: CachedDoc) -> None:
        seen.append(evicting.namespaces())  # re-entering must not deadlock
        raise RuntimeError("boom")

    evicting = FallbackCache(maxsize=1, clock=clock, on_evict=on_evict)
    evicting.put(doc("a", clock=clock))
    with caplog.at_level(logging.ERROR, logger="configcenter_sdk.cache"):
        assert evicting.put(doc("b", clock=clock))
    assert seen == [["b"]]
    assert "on_evict callback failed for namespace a" in caplog.text
    assert evicting.namespaces() == ["b"]


# --- revision ordering ---------------------------------------------------------------


def test_older_revision_is_refused(cache: FallbackCache, clock: FakeClock) -> None:
    assert cache.put(doc("a", 5, clock=clock, source="disk"))
    assert not cache.put(doc("a", 4, clock=clock))
    assert looked_up(cache, "a").entry.revision == 5

    assert cache.put(doc("a", 5, clock=clock))  # same revision: live copy replaces disk copy
    assert looked_up(cache, "a").entry.source == "live"
    assert cache.put(doc("a", 6, clock=clock))
    assert looked_up(cache, "a").entry.revision == 6


def test_refused_put_keeps_freshness(cache: FallbackCache, clock: FakeClock) -> None:
    cache.put(doc("a", 5, clock=clock))
    clock.advance(10.0)
    assert not cache.put(doc("a", 4, clock=clock))
    assert cache.expired() == ["a"]


# --- validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "routez"},
        {"source": "network"},
        {"revision": -1},
        {"revision": True},
    ],
)
def test_cached_doc_rejects_bad_fields(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"ns": "a", "revision": 1, "kind": "routes", "doc": {}, "stored_at": 0.0}
    with pytest.raises(ValueError):
        CachedDoc(**(base | fields))


def test_cached_doc_is_frozen(clock: FakeClock) -> None:
    entry = doc("a", clock=clock)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.revision = 2  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"maxsize": 0}, {"ttl": -1.0}, {"ttl": float("nan")}])
def test_cache_rejects_bad_parameters(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FallbackCache(**kwargs)


def test_put_rejects_negative_ttl(cache: FallbackCache, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        cache.put(doc("a", clock=clock), ttl=-1.0)
    assert "a" not in cache


def test_contains_len_namespaces(cache: FallbackCache, clock: FakeClock) -> None:
    for ns in ("b/x", "a"):
        cache.put(doc(ns, clock=clock))
    assert cache.namespaces() == ["a", "b/x"]
    assert "a" in cache and "c" not in cache and 3 not in cache
    assert len(cache) == 2
    assert cache.maxsize == 16 and cache.ttl == 10.0 and cache.clock is clock


# --- threads -------------------------------------------------------------------------


def _hammer(workers: int, body: Any) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(workers)

    def run(i: int) -> None:
        try:
            start.wait()
            body(i)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_threads_contending_on_one_namespace_keep_the_newest_revision(clock: FakeClock) -> None:
    cache = FallbackCache(maxsize=4, clock=clock)

    def body(i: int) -> None:
        revisions = list(range(i, 2000, 8))
        random.Random(i).shuffle(revisions)
        for rev in revisions:
            cache.put(doc("hot", rev, clock=clock))
            got = cache.get("hot")
            assert got is not None and got.entry.revision >= rev

    _hammer(8, body)
    assert looked_up(cache, "hot").entry.revision == 1999
    assert cache.namespaces() == ["hot"]


def test_threads_with_eviction_keep_consistent_state(clock: FakeClock) -> None:
    evicted: list[str] = []
    cache = FallbackCache(maxsize=8, clock=clock, on_evict=lambda e: evicted.append(e.ns))

    def body(i: int) -> None:
        for rev in range(1, 300):
            for ns in (f"t{i}/a", f"t{i}/b", f"t{i}/c"):
                cache.put(doc(ns, rev, clock=clock))
                cache.get(ns)
                cache.peek(f"t{(i + 1) % 6}/a")
            cache.expired()

    _hammer(6, body)
    assert len(cache) == 8
    assert cache.evictions == len(evicted) > 0
    for ns in cache.namespaces():
        lookup = cache.peek(ns)
        # Each namespace is written by one thread in revision order, so whatever
        # survived is the last put of that namespace.
        assert lookup is not None and lookup.entry.ns == ns and lookup.entry.revision == 299
