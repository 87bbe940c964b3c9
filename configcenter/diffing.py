"""Differences between two documents: a structured change list and a unified text patch.

The structured list is for scripts (one entry per changed leaf or subtree,
``op`` added/removed/changed, JSONPath-style ``path``); the patch is for
people and renders both sides as YAML so it reads like the files they push.
"""

from __future__ import annotations

from typing import Any

from ._linediff import unified_diff
from .codec import dump_yaml
from .validation import json_path


def structured_diff(old: Any, new: Any, path: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Walk both trees; mappings are compared key by key, lists index by index, the rest by value."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[dict[str, Any]] = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in new:
                changes.append({"path": json_path((*path, key)), "op": "removed", "old": old[key]})
            elif key not in old:
                changes.append({"path": json_path((*path, key)), "op": "added", "new": new[key]})
            else:
                changes.extend(structured_diff(old[key], new[key], (*path, key)))
        return changes
    if isinstance(old, list) and isinstance(new, list):
        changes = []
        for i in range(max(len(old), len(new))):
            if i >= len(new):
                changes.append({"path": json_path((*path, i)), "op": "removed", "old": old[i]})
            elif i >= len(old):
                changes.append({"path": json_path((*path, i)), "op": "added", "new": new[i]})
            else:
                changes.extend(structured_diff(old[i], new[i], (*path, i)))
        return changes
    if old == new and type(old) is type(new):
        return []
    return [{"path": json_path(path), "op": "changed", "old": old, "new": new}]


def unified_patch(old: Any, new: Any, from_label: str, to_label: str) -> str:
    """A ``diff -u`` of the YAML renderings (empty string when equal); near-linear, see ``_linediff``."""
    before = dump_yaml(old, fast=True).splitlines(keepends=True) if old is not None else []
    after = dump_yaml(new, fast=True).splitlines(keepends=True) if new is not None else []
    return unified_diff(before, after, from_label, to_label)
