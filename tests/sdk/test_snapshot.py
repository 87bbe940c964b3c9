"""Tests for configcenter_sdk.snapshot.SnapshotStore (atomic writes, verified reads, no rollback)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from configcenter_sdk.cache import CachedDoc, FallbackCache
from configcenter_sdk.errors import SnapshotError
from configcenter_sdk.snapshot import FORMAT, SnapshotStore, filename_for, namespace_for

LOGGER = "configcenter_sdk.snapshot"


class FakeClock:
    """Controllable clock: call it to read, ``advance`` to move time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock(500.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(1_700_000_000.25)


@pytest.fixture
def store(tmp_path: Path, mono: FakeClock, wall: FakeClock) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snap", clock=mono, wall_clock=wall)


def entry(ns: str = "payment/routes", revision: int = 10, doc: Any = None, **kw: Any) -> CachedDoc:
    body = {"routes": [{"path": "/pay", "upstream": "hello"}], "n": 1.5} if doc is None else doc
    return CachedDoc(ns=ns, revision=revision, kind=kw.pop("kind", "routes"), doc=body, stored_at=0.0, **kw)


def rewrite(path: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a snapshot file with a *valid* checksum after ``mutate``-ing its payload."""
    obj = orjson.loads(path.read_bytes())
    del obj["sha256"]
    mutate(obj)
    obj["sha256"] = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()
    path.write_bytes(orjson.dumps(obj))


def files(store: SnapshotStore) -> list[str]:
    return sorted(os.listdir(store.directory))


# --- round trip & format -------------------------------------------------------------


def test_round_trip_reports_age_from_saved_at(store: SnapshotStore, mono: FakeClock, wall: FakeClock) -> None:
    original = entry()
    path = store.save(original)
    assert path == store.directory / "payment~routes.json"

    wall.advance(42.0)
    mono.advance(7.0)  # the monotonic clock is unrelated to the wall clock
    loaded = store.load("payment/routes")
    assert loaded is not None
    assert (loaded.ns, loaded.revision, loaded.kind, loaded.doc) == (
        original.ns,
        original.revision,
        original.kind,
        original.doc,
    )
    assert loaded.source == "disk"
    assert loaded.stored_at == mono() - 42.0

    cache = FallbackCache(ttl=30.0, clock=mono)
    cache.put(loaded)
    lookup = cache.get("payment/routes")
    assert lookup is not None and lookup.age == 42.0 and not lookup.fresh


def test_file_content_is_header_first_with_canonical_checksum(store: SnapshotStore, wall: FakeClock) -> None:
    raw = store.save(entry(doc=MappingProxyType({"b": 1, "a": {"z": 2}}), kind="config")).read_bytes()
    assert raw.startswith(b'{"format":"configcenter-snapshot/1","ns":"payment/routes","revision":10,')
    obj = orjson.loads(raw)
    assert obj["format"] == FORMAT and obj["saved_at"] == wall() and obj["kind"] == "config"
    claimed = obj.pop("sha256")
    assert claimed == hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


def test_future_saved_at_gives_zero_age(store: SnapshotStore, mono: FakeClock, wall: FakeClock) -> None:
    store.save(entry())
    wall.advance(-60.0)  # wall clock stepped back
    loaded = store.load("payment/routes")
    assert loaded is not None and loaded.stored_at == mono()


def test_missing_snapshot_is_none_without_warning(
    store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load("nothing/here") is None
        assert store.load_strict("nothing/here") is None
    assert caplog.records == []


def test_load_all_skips_missing_and_corrupt(store: SnapshotStore, caplog: pytest.LogCaptureFixture) -> None:
    store.save(entry("a"))
    store.save(entry("b/c", 3))
    store.path_for("b/c").write_bytes(b"{")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = store.load_all(["a", "b/c", "missing"])
    assert list(loaded) == ["a"] and loaded["a"].revision == 10
    assert len(caplog.records) == 1


def test_remove(store: SnapshotStore) -> None:
    store.save(entry())
    assert store.remove("payment/routes")
    assert not store.remove("payment/routes")
    assert store.load("payment/routes") is None
    assert files(store) == []


# --- file name mapping -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "name"),
    [
        ("payment/routes", "payment~routes.json"),
        ("a", "a.json"),
        ("team-1.x/svc_a.b/v1.2-rc/z", "team-1.x~svc_a.b~v1.2-rc~z.json"),
    ],
)
def test_filename_mapping_is_reversible(store: SnapshotStore, ns: str, name: str) -> None:
    assert filename_for(ns) == name
    assert namespace_for(name) == ns
    store.save(entry(ns))
    assert files(store) == [name]
    loaded = store.load(ns)
    assert loaded is not None and loaded.ns == ns


def test_overlong_namespace_gets_shortened_unique_name(store: SnapshotStore) -> None:
    ns = "/".join(c * 63 for c in "abcd")  # 255 chars: name + ".json" would exceed NAME_MAX
    other = "/".join(c * 63 for c in "abce")
    name = filename_for(ns)
    assert len(name) <= 255 and "~~" in name and name != filename_for(other)
    assert namespace_for(name) is None
    store.save(entry(ns))
    loaded = store.load(ns)
    assert loaded is not None and loaded.ns == ns


@pytest.mark.parametrize(
    "ns", ["", "Payment", ".hidden", "a//b", "a/", "/a", "a/b/c/d/e", "a~b", "a" * 64, "..", "a/../b", "ü"]
)
def test_invalid_namespaces_are_rejected(
    store: SnapshotStore, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError):
        filename_for(ns)
    with pytest.raises(ValueError):
        store.save(entry(ns))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load(ns) is None
    assert "invalid namespace" in caplog.text


@pytest.mark.parametrize("name", ["payment.txt", ".snapshot-x.tmp", "a~~b.json", "A.json"])
def test_namespace_for_ignores_other_files(name: str) -> None:
    assert namespace_for(name) is None


# --- atomicity -------------------------------------------------------------------------


def test_repeated_saves_leave_no_temp_files(store: SnapshotStore) -> None:
    for rev in range(1, 6):
        store.save(entry(revision=rev))
    assert files(store) == ["payment~routes.json"]
    mode = stat.S_IMODE(store.path_for("payment/routes").stat().st_mode)
    assert mode == 0o600


def test_unencodable_doc_keeps_previous_snapshot(store: SnapshotStore) -> None:
    path = store.save(entry(revision=1))
    before = path.read_bytes()
    with pytest.raises(SnapshotError, match="cannot encode"):
        store.save(entry(revision=2, doc={"bad": {1, 2}}))
    assert path.read_bytes() == before
    assert files(store) == ["payment~routes.json"]


def test_failed_replace_keeps_previous_snapshot_and_cleans_up(
    store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.save(entry(revision=1))
    before = path.read_bytes()

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(SnapshotError, match="No space left"):
        store.save(entry(revision=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert files(store) == ["payment~routes.json"]


# --- corrupt files -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def _flip_doc_byte(path: Path) -> None:
    raw = path.read_bytes()
    assert b'"hello"' in raw
    path.write_bytes(raw.replace(b'"hello"', b'"hellp"'))


def _not_json(path: Path) -> None:
    path.write_bytes(b"\x00\x01 definitely not json")


def _wrong_marker(path: Path) -> None:
    rewrite(path, lambda obj: obj.update(format="configcenter-snapshot/2"))


def _wrong_type(path: Path) -> None:
    rewrite(path, lambda obj: obj.update(revision="10"))


def _no_checksum(path: Path) -> None:
    obj = orjson.loads(path.read_bytes())
    del obj["sha256"]
    path.write_bytes(orjson.dumps(obj))


def _not_object(path: Path) -> None:
    path.write_bytes(b"[1, 2, 3]")


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_truncate, "not valid JSON"),
        (_flip_doc_byte, "checksum mismatch"),
        (_not_json, "not valid JSON"),
        (_wrong_marker, "wrong format marker"),
        (_wrong_type, "invalid field 'revision'"),
        (_no_checksum, "missing sha256"),
        (_not_object, "not a JSON object"),
    ],
)
def test_corrupt_snapshot_is_refused_with_warning(
    store: SnapshotStore,
    caplog: pytest.LogCaptureFixture,
    corrupt: Callable[[Path], None],
    reason: str,
) -> None:
    path = store.save(entry())
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load("payment/routes") is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.name == LOGGER
    assert reason in record.getMessage() and str(path) in record.getMessage()
    with pytest.raises(SnapshotError, match=reason.replace("'", ".")):
        store.load_strict("payment/routes")


def test_foreign_file_is_refused(store: SnapshotStore, caplog: pytest.LogCaptureFixture) -> None:
    source = store.save(entry("payment/routes"))
    target = store.path_for("billing/routes")
    target.write_bytes(source.read_bytes())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load("billing/routes") is None
    assert "foreign file" in caplog.text and str(target) in caplog.text
    with pytest.raises(SnapshotError, match="foreign file: holds namespace 'payment/routes'"):
        store.load_strict("billing/routes")


def test_unreadable_path_is_refused(store: SnapshotStore, caplog: pytest.LogCaptureFixture) -> None:
    store.path_for("a").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load("a") is None
    assert "unreadable" in caplog.text


# --- revision ordering on disk -----------------------------------------------------------


def test_older_revision_never_overwrites_newer(store: SnapshotStore, wall: FakeClock) -> None:
    path = store.save(entry(revision=10))
    newer = path.read_bytes()
    assert store.save(entry(revision=9, doc={"old": True})) == path
    assert path.read_bytes() == newer

    wall.advance(5.0)
    store.save(entry(revision=10))  # same revision is rewritten: saved_at refreshed
    assert orjson.loads(path.read_bytes())["saved_at"] == wall()

    store.save(entry(revision=11, doc={"new": True}))
    loaded = store.load("payment/routes")
    assert loaded is not None and loaded.revision == 11 and loaded.doc == {"new": True}
    assert files(store) == ["payment~routes.json"]


def test_corrupt_newer_file_is_replaced_by_older_valid_revision(
    store: SnapshotStore, caplog: pytest.LogCaptureFixture
) -> None:
    path = store.save(entry(revision=99))
    _flip_doc_byte(path)  # header still says 99, checksum now fails
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        store.save(entry(revision=5))
    assert "replacing unusable snapshot" in caplog.text
    loaded = store.load("payment/routes")
    assert loaded is not None and loaded.revision == 5


# --- directory -----------------------------------------------------------------------------


def test_new_directory_is_private_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SnapshotStore(tmp_path / "nested" / "snap")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700


def test_existing_directory_keeps_its_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "snap"
    directory.mkdir()
    directory.chmod(0o750)
    store = SnapshotStore(directory)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o750
    store.save(entry())
    assert store.load("payment/routes") is not None
