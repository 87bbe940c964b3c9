"""Background writer of on-disk snapshots for the asyncio client, and the resume marker.

Snapshot writes ``fsync`` and must not block the event loop, yet must land in
order. :class:`SnapshotWriter` keeps at most one pending operation per
namespace (the newest wins: a save or a removal) and drains them in a worker
thread, one at a time. ``SnapshotStore.save`` refuses to write an older
revision over a newer one, so coalescing never rolls a file back (except a
save with ``replace_newer``, after the cluster went back or changed).

The resume marker (:class:`ResumeMarker`, file ``_resume.json``) lets a
restarted service resume its subscription from disk, cluster id included, so
a server of another cluster, or one restored to an older revision, answers
with a ``reset`` instead of leaving stale snapshots in place. Its contract:

* :meth:`SnapshotWriter.mark` queues the marker *behind* every operation
  queued so far, so when a marker at revision R is on disk, every change up to
  R of the subscribed namespaces is on disk too.
* :meth:`SnapshotWriter.unmark` (before a backwards reset rewrites files)
  removes the marker first: a crash in the middle leaves no resume point.
* After any failed write the marker only keeps the cluster (revision 0, no
  resume): the files can no longer be trusted to be complete.
* It is only used for the same subscription (selectors) and when every
  snapshot file of it loaded cleanly (:func:`load_snapshots`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from ._state import Incoming, LocalState
from .cache import CachedDoc
from .errors import SnapshotError
from .snapshot import SnapshotStore, namespace_for

__all__ = ["ResumeMarker", "SnapshotWriter", "load_snapshots"]

log = logging.getLogger("configcenter_sdk.client")

_MARKER_FORMAT = "configcenter-resume/1"
_MARK = "\0mark"  # pending-operation keys that no namespace can have
_UNMARK = "\0unmark"


@dataclass(frozen=True, slots=True)
class ResumeMarker:
    """Where the subscription stood: ``revision`` (0: no resume point) in ``cluster`` (hex, None: unknown)."""

    revision: int
    cluster: str | None
    selectors: tuple[str, ...]

    def encode(self) -> bytes:
        payload = {"format": _MARKER_FORMAT, "revision": self.revision, "cluster": self.cluster,
                   "selectors": list(self.selectors)}
        digest = hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return orjson.dumps({**payload, "sha256": digest})

    @classmethod
    def decode(cls, raw: bytes) -> ResumeMarker:
        """Parse and verify a marker file; ``ValueError`` if it is not a valid one."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError("not JSON") from exc
        if not isinstance(obj, dict) or obj.get("format") != _MARKER_FORMAT:
            raise ValueError("not a resume marker")
        claimed = obj.pop("sha256", None)
        if claimed != hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest():
            raise ValueError("checksum mismatch")
        revision, cluster, selectors = obj.get("revision"), obj.get("cluster"), obj.get("selectors")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ValueError(f"bad revision {revision!r}")
        if cluster is not None and not isinstance(cluster, str):
            raise ValueError(f"bad cluster {cluster!r}")
        if not isinstance(selectors, list) or not all(isinstance(s, str) for s in selectors):
            raise ValueError("bad selectors")
        return cls(revision, cluster, tuple(selectors))


@dataclass(frozen=True, slots=True)
class _Save:
    entry: CachedDoc
    replace_newer: bool


_Op = _Save | ResumeMarker | None  # None: remove (the namespace's snapshot, or the marker)


class SnapshotWriter:
    """Coalescing, ordered snapshot persistence; create and use it on one event loop."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._pending: dict[str, _Op] = {}
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def save(self, entry: CachedDoc, *, replace_newer: bool = False) -> None:
        """Schedule writing ``entry`` (replaces any pending operation on its namespace)."""
        self._pending[entry.ns] = _Save(entry, replace_newer)
        self._kick()

    def remove(self, ns: str) -> None:
        """Schedule deleting the snapshot of ``ns``."""
        self._pending[ns] = None
        self._kick()

    def mark(self, marker: ResumeMarker) -> None:
        """Schedule writing the resume marker after every operation scheduled so far."""
        self._pending.pop(_MARK, None)
        self._pending[_MARK] = marker
        self._kick()

    def unmark(self) -> None:
        """Schedule removing the resume marker before any operation scheduled from now on."""
        self._pending.pop(_MARK, None)
        self._pending[_UNMARK] = None
        self._kick()

    async def flush(self) -> None:
        """Wait until every scheduled operation has been carried out (or failed and logged)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="configcenter-snapshots")

    async def _drain(self) -> None:
        while self._pending:
            key = next(iter(self._pending))
            op = self._pending.pop(key)
            await asyncio.to_thread(self._apply, key, op)

    def _apply(self, key: str, op: _Op) -> None:
        """Runs in a worker thread; failures are logged and counted, never raised."""
        try:
            if key == _UNMARK:
                self.store.remove_resume()
            elif isinstance(op, ResumeMarker):
                self._write_marker(op)
            elif op is None:
                self.store.remove(key)
            else:
                self.store.save(op.entry, replace_newer=op.replace_newer)
        except SnapshotError as exc:
            self.failures += 1
            log.error("snapshot of %s not persisted: %s", key.strip("\0"), exc)
            with contextlib.suppress(SnapshotError):  # the next mark() keeps only the cluster
                self.store.remove_resume()

    def _write_marker(self, marker: ResumeMarker) -> None:
        if self.failures:  # some file may be missing a change: keep the cluster, drop the resume point
            marker = ResumeMarker(0, marker.cluster, marker.selectors)
        self.store.write_resume(marker.encode())


async def load_snapshots(
    store: SnapshotStore, selectors: Sequence[str], match: Callable[[str], bool], state: LocalState,
) -> ResumeMarker | None:
    """Adopt every usable snapshot of the subscribed namespaces into ``state``; return the usable marker.

    Unusable files are skipped with a WARNING (``SnapshotStore.load``). The
    marker keeps its revision only if it was written for these ``selectors``
    and every snapshot file present loaded; otherwise only its cluster counts.
    """
    names = {s for s in selectors if not s.endswith("/")}
    if not names or len(names) < len(selectors):
        with contextlib.suppress(OSError):
            names |= {ns for p in store.directory.iterdir()
                      if (ns := namespace_for(p.name)) is not None and match(ns)}
    loaded = store.load_all(sorted(names))
    for ns, entry in sorted(loaded.items()):
        record = entry.record  # a canary release: decided again for this instance (``_track``)
        release = (Incoming(ns, entry.revision, entry.kind, entry.doc) if record is None else
                   Incoming(ns, entry.revision, record["kind"], record["doc"], canary=record["canary"]))
        await state.adopt(release, "disk", entry.stored_at)
    if names:
        log.info("loaded %d of %d snapshot(s) from %s", len(state.revisions), len(names), store.directory)
    marker = _read_marker(store)
    if marker is None:
        return None
    complete = all(ns in loaded or not _has_file(store, ns) for ns in names)
    if marker.selectors != tuple(selectors) or not complete:
        return ResumeMarker(0, marker.cluster, tuple(selectors))
    return marker


def _has_file(store: SnapshotStore, ns: str) -> bool:
    try:
        return store.path_for(ns).exists()
    except ValueError:  # not a namespace name: it can have no file
        return False


def _read_marker(store: SnapshotStore) -> ResumeMarker | None:
    raw = store.read_resume()
    if raw is None:
        return None
    try:
        return ResumeMarker.decode(raw)
    except ValueError as exc:
        log.warning("ignoring resume marker in %s: %s", store.directory, exc)
        return None
