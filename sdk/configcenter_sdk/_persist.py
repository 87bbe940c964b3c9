"""Background writer of on-disk snapshots for the asyncio client.

Snapshot writes ``fsync`` and must not block the event loop, yet must land in
order. :class:`SnapshotWriter` keeps at most one pending operation per
namespace (the newest wins: a save or a removal) and drains them in a worker
thread, one at a time. ``SnapshotStore.save`` refuses to write an older
revision over a newer one, so coalescing never rolls a file back.
"""

from __future__ import annotations

import asyncio
import logging

from .cache import CachedDoc
from .errors import SnapshotError
from .snapshot import SnapshotStore

__all__ = ["SnapshotWriter"]

log = logging.getLogger("configcenter_sdk.client")


class SnapshotWriter:
    """Coalescing, ordered snapshot persistence; create and use it on one event loop."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._pending: dict[str, CachedDoc | None] = {}
        self._task: asyncio.Task[None] | None = None
        self.failures = 0

    def save(self, entry: CachedDoc) -> None:
        """Schedule writing ``entry`` (replaces any pending operation on its namespace)."""
        self._pending[entry.ns] = entry
        self._kick()

    def remove(self, ns: str) -> None:
        """Schedule deleting the snapshot of ``ns``."""
        self._pending[ns] = None
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
            ns = next(iter(self._pending))
            op = self._pending.pop(ns)
            await asyncio.to_thread(self._apply, ns, op)

    def _apply(self, ns: str, op: CachedDoc | None) -> None:
        """Runs in a worker thread; failures are logged and counted, never raised."""
        try:
            if op is None:
                self.store.remove(ns)
            else:
                self.store.save(op)
        except SnapshotError as exc:
            self.failures += 1
            log.error("snapshot of %s not persisted: %s", ns, exc)
