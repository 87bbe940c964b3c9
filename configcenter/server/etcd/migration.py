"""Migrate history keys from layout 1 (``history/<ns>/<version>``) to layout 2 (``history/<ns>#<version>``).

Why: layout 1's range of one namespace also covered its children's keys (``keys.py``).

Procedure (``configcenter migrate``), idempotent and resumable after a crash at any point:

1. **Mark.** Create ``meta/history-layout`` (``{"layout": 2, "legacy": true}``) if absent.  From that
   revision on every writer of this version writes layout 2: each write compares the marker's
   ``mod_revision``, so a write that read the layout before the mark is retried, never written in
   layout 1 after it.  Layout-1 keys therefore form a set that only shrinks.
2. **Move.** Each layout-1 key is moved in one transaction: if it is unchanged and its layout-2
   key is absent, put the layout-2 key (the record plus ``"revision"``: the release's revision,
   since the copy gets a new ``mod_revision``) and delete the layout-1 key.  A crash leaves every
   key either moved or not; a rerun moves the rest.  If the layout-2 key exists already (an older
   replica wrote in layout 1 after the mark), the key is left and reported as a conflict.
3. **Close.** When a scan finds no layout-1 key left, the marker records ``legacy: false`` and the
   revision window of the copies (``copies_until``), so readers stop reading layout 1 and read a
   record only for keys inside that window.

During a rolling upgrade every replica of this version reads both layouts (``history.py``) and
writes layout 1 until the mark, so old and new replicas serve the same history.  Run the
migration once every replica runs this version: an older replica writes layout 1 even after the
mark (its releases are then reported as conflicts here and not moved).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from etcd3aio import prefix_range_end

from ._etcd3aio import Compare
from .client import etcd_errors, read_range
from .history import LayoutMarker
from .keys import KeyLayout

_MOVE_CONCURRENCY = 16


@dataclass
class MigrationReport:
    """What a run did: keys moved now, keys found already moved, conflicts left in layout 1."""

    moved: int = 0
    conflicts: list[str] = field(default_factory=list)
    marked: bool = False
    closed: bool = False
    remaining: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"moved": self.moved, "conflicts": self.conflicts, "marked": self.marked, "closed": self.closed,
                "remaining": self.remaining}


class HistoryMigration:
    """One run of the migration over one prefix (see the module docstring)."""

    def __init__(self, kv: Any, layout: KeyLayout, *, timeout: float = 5.0,
                 progress: Callable[[str], None] | None = None, dry_run: bool = False) -> None:
        self._kv = kv
        self._layout = layout
        self._timeout = timeout
        self._progress = progress or (lambda _line: None)
        self._dry_run = dry_run

    async def run(self) -> MigrationReport:
        report = MigrationReport()
        legacy = await self._legacy_keys()
        report.remaining = len(legacy)
        if self._dry_run:
            return report
        report.marked = await self._mark()
        for i in range(0, len(legacy), _MOVE_CONCURRENCY):
            batch = legacy[i:i + _MOVE_CONCURRENCY]
            results = await asyncio.gather(*(self._move(kv) for kv in batch))
            for kv, moved in zip(batch, results, strict=True):
                if moved:
                    report.moved += 1
                else:
                    report.conflicts.append(kv.key.decode())
            self._progress(f"moved {report.moved} of {len(legacy)} history keys")
        report.remaining = len(await self._legacy_keys())
        if report.remaining == 0:
            report.closed = await self._close()
        return report

    async def _legacy_keys(self) -> list[Any]:
        """Every layout-1 history key under the prefix (keys only, paged)."""
        root = self._layout.history_root
        with etcd_errors("list history keys"):
            _, items = await read_range(self._kv, root, prefix_range_end(root), keys_only=True,
                                        timeout=self._timeout)
        return [item for item in items if (parsed := self._layout.parse_history_key(item.key)) and parsed[2]]

    async def _marker(self) -> LayoutMarker:
        with etcd_errors("read the history layout marker"):
            resp = await self._kv.get(self._layout.migration_key, timeout=self._timeout)
        return LayoutMarker.from_kv(resp.kvs[0] if resp.kvs else None)

    async def _mark(self) -> bool:
        """Create the marker (writers switch to layout 2); False if it existed already."""
        key = self._layout.migration_key
        value = orjson.dumps({"layout": 2, "legacy": True})
        with etcd_errors("mark the history layout"):
            resp = await self._kv.txn([self._kv.txn_compare_create_revision(key, 0)],
                                      [self._kv.txn_op_put(key, value)], timeout=self._timeout)
        return bool(resp.succeeded)

    async def _move(self, item: Any) -> bool:
        """Move one layout-1 key; True if moved now or by an earlier run (it is gone)."""
        parsed = self._layout.parse_history_key(item.key)
        assert parsed is not None and parsed[2]
        ns, version, _ = parsed
        target = self._layout.history_key(ns, version)
        with etcd_errors(f"move history of {ns}"):
            resp = await self._kv.get(item.key, timeout=self._timeout)
            if not resp.kvs:
                return True
            kv = resp.kvs[0]
            record = orjson.loads(kv.value)
            record.setdefault("revision", int(kv.mod_revision))
            compare = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=kv.key, mod_revision=kv.mod_revision),
                       self._kv.txn_compare_create_revision(target, 0)]
            ops = [self._kv.txn_op_put(target, orjson.dumps(record)), self._kv.txn_op_delete(kv.key)]
            moved = await self._kv.txn(compare, ops, timeout=self._timeout)
        return bool(moved.succeeded)

    async def _close(self) -> bool:
        """Record that no layout-1 key is left and where the copies end; False if already closed."""
        marker = await self._marker()
        if not marker.exists or not marker.legacy_left:
            return False
        key = self._layout.migration_key
        with etcd_errors("close the history migration"):
            now = await self._kv.get(key, timeout=self._timeout)
            value = orjson.dumps({"layout": 2, "legacy": False, "copies_until": int(now.header.revision)})
            compare = [Compare(result=Compare.EQUAL, target=Compare.MOD, key=key, mod_revision=marker.mod_revision)]
            resp = await self._kv.txn(compare, [self._kv.txn_op_put(key, value)], timeout=self._timeout)
        return bool(resp.succeeded)


async def migrate_history(kv: Any, layout: KeyLayout, **options: Any) -> MigrationReport:
    """Run the migration once (see the module docstring); safe to run again at any time."""
    return await HistoryMigration(kv, layout, **options).run()
