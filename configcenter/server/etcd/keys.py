"""Where things live in etcd under the configured prefix (default ``/configcenter/``).

Names contain ``/`` and may be prefixes of each other (``team``, ``team/db``, ``teams``), so a
range of one name's keys must end in a character no name can contain, or it also covers another
name's keys.  ``#`` is that character (names are ``[a-z0-9._-]`` segments joined by ``/``):

* ``docs/<ns>`` — the current record of ``ns``; its ``mod_revision`` is the release's revision.
  Read one key at a time, or as a *prefix subscription* (``docs/team/``) on purpose.
* ``history/<ns>#<version:012d>`` — every release of ``ns``, written in the same transaction as
  ``docs/<ns>``.  ``history_range(ns)`` covers exactly the keys of ``ns``: a key of ``team/db``
  (``history/team/db#…``) or of ``teams`` (``history/teams#…``) cannot fall inside
  ``[history/team#, history/team$)``.
* ``meta/history-layout`` — the migration marker (``configcenter.server.etcd.migration``).
* Release control (``configcenter.server.release``): ``policies/<target>#`` and ``freezes/<target>#``
  hold the current review policy / freeze of a target (a namespace or a ``prefix/``), with
  ``policy-history/<target>#<version:012d>`` and ``freeze-history/<target>#<version:012d>``;
  ``proposals/<ns>#<slot:02d>`` holds an open proposal (a bounded number of slots per namespace)
  and ``proposal-ids/<id>`` where it is.  The current key ends in ``#`` too, so ``freezes/team#``
  and ``freezes/team/#`` (the name and the prefix) never collide and no range of one target
  covers another's keys.

Layout 1 (before 0.2) wrote ``history/<ns>/<version:012d>``, whose range also covered every
child namespace's keys.  Those *legacy* keys are still read during a migration (only keys whose
remainder is exactly a 12-digit version count, so a child's keys are never taken for the
parent's) and rewritten to layout 2 by ``configcenter migrate``.

A history record copied by the migration keeps its release's revision in the record
(``"revision"``): etcd gives the copy a new ``mod_revision``.  ``history_release`` reads either.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from configcenter.model import Release

ControlFamily = Literal["policies", "freezes"]
_HISTORY_OF: dict[str, str] = {"policies": "policy-history", "freezes": "freeze-history"}
NAME_END = b"#"  # ends every per-name range: no namespace or schema target contains it
_VERSION_DIGITS = 12


class KeyLayout:
    """Key names under one prefix; see the module docstring for the layout and its rule."""

    def __init__(self, prefix: str = "/configcenter/") -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.docs_prefix = f"{prefix}docs/".encode()
        self.history_root = f"{prefix}history/".encode()
        self.migration_key = f"{prefix}meta/history-layout".encode()
        self.schemas_prefix = f"{prefix}schemas/".encode()  # schemas/<target>: one key per target
        self.schema_history_root = f"{prefix}schema-history/".encode()
        self.instances_prefix = f"{prefix}instances/".encode()  # instances/<id>: one key per instance
        self.proposals_root = f"{prefix}proposals/".encode()
        self.proposal_ids_root = f"{prefix}proposal-ids/".encode()

    def schema_key(self, target: str) -> bytes:
        return self.schemas_prefix + target.encode()

    def schema_history_prefix(self, target: str) -> bytes:
        """The start of ``target``'s schema history range; only keys of ``target`` start with it."""
        return self.schema_history_root + target.encode() + NAME_END

    def schema_history_key(self, target: str, version: int) -> bytes:
        return self.schema_history_prefix(target) + f"{version:0{_VERSION_DIGITS}d}".encode()

    def instance_key(self, instance_id: str) -> bytes:
        return self.instances_prefix + instance_id.encode()

    # release control: policies and freezes ("family"), proposals (configcenter.server.release)

    def control_root(self, family: ControlFamily, *, history: bool = False) -> bytes:
        """``policies/`` / ``freezes/`` (current records), or their ``…-history/`` roots."""
        return f"{self.prefix}{_HISTORY_OF[family] if history else family}/".encode()

    def control_key(self, family: ControlFamily, target: str) -> bytes:
        """The current record of ``target`` in ``family``: ``policies/<target>#``."""
        return self.control_root(family) + target.encode() + NAME_END

    def control_history_range(self, family: ControlFamily, target: str) -> tuple[bytes, bytes]:
        start = self.control_root(family, history=True) + target.encode() + NAME_END
        return start, start[:-1] + bytes([NAME_END[0] + 1])

    def control_history_key(self, family: ControlFamily, target: str, version: int) -> bytes:
        return self.control_history_range(family, target)[0] + f"{version:0{_VERSION_DIGITS}d}".encode()

    def target_of_control_key(self, family: ControlFamily, key: bytes) -> str:
        return key[len(self.control_root(family)):-len(NAME_END)].decode()

    def proposal_range(self, ns: str) -> tuple[bytes, bytes]:
        start = self.proposals_root + ns.encode() + NAME_END
        return start, start[:-1] + bytes([NAME_END[0] + 1])

    def proposal_key(self, ns: str, slot: int) -> bytes:
        return self.proposal_range(ns)[0] + f"{slot:02d}".encode()

    def proposal_id_key(self, proposal_id: str) -> bytes:
        return self.proposal_ids_root + proposal_id.encode()

    def doc_key(self, ns: str) -> bytes:
        return self.docs_prefix + ns.encode()

    def ns_of_doc_key(self, key: bytes) -> str:
        return key[len(self.docs_prefix):].decode()

    def history_prefix(self, ns: str) -> bytes:
        """The start of ``ns``'s history range; only keys of ``ns`` start with it."""
        return self.history_root + ns.encode() + NAME_END

    def history_range(self, ns: str) -> tuple[bytes, bytes]:
        """``[start, end)`` holding exactly the layout-2 history keys of ``ns``."""
        start = self.history_prefix(ns)
        return start, start[:-1] + bytes([NAME_END[0] + 1])

    def history_key(self, ns: str, version: int) -> bytes:
        return self.history_prefix(ns) + f"{version:0{_VERSION_DIGITS}d}".encode()

    def legacy_history_range(self, ns: str) -> tuple[bytes, bytes]:
        """``[start, end)`` of layout 1's keys of ``ns`` *and* of children whose next segment starts
        with a digit: filter with ``parse_history_key`` (``ns`` must match)."""
        base = self.history_root + ns.encode() + b"/"
        return base + b"0", base + b":"

    def legacy_history_key(self, ns: str, version: int) -> bytes:
        return self.history_root + f"{ns}/{version:0{_VERSION_DIGITS}d}".encode()

    def parse_history_key(self, key: bytes) -> tuple[str, int, bool] | None:
        """``(ns, version, legacy)`` of a history key of either layout, or None if ``key`` is not one."""
        if not key.startswith(self.history_root):
            return None
        rest = key[len(self.history_root):]
        head, sep, version = rest.rpartition(NAME_END)
        legacy = not sep
        if legacy:
            head, sep, version = rest.rpartition(b"/")
        if not sep or not head or len(version) != _VERSION_DIGITS or not version.isdigit():
            return None
        return head.decode(), int(version), legacy

    @staticmethod
    def version_of_history_key(key: bytes) -> int:
        return int(key[-_VERSION_DIGITS:])


def history_revision(kv: Any, record: dict[str, Any]) -> int:
    """The revision of the release a history key-value holds (a migrated copy carries it)."""
    revision = record.get("revision")
    return int(revision) if isinstance(revision, int) and revision > 0 else int(kv.mod_revision)


def history_release(layout: KeyLayout, kv: Any) -> Release:
    """The release a history key-value of either layout holds; ``ValueError`` if it is not one."""
    parsed = layout.parse_history_key(kv.key)
    if parsed is None:
        raise ValueError(f"not a history key: {kv.key!r}")
    record = orjson.loads(kv.value)
    record["version"] = parsed[1]
    return Release.from_record(parsed[0], history_revision(kv, record), record)
