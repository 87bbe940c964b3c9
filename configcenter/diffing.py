"""Differences between two documents: a structured change list and a unified text patch.

The structured list is for scripts (one entry per changed leaf or subtree,
``op`` added/removed/changed, JSONPath-style ``path``); the patch is for
people and renders both sides as YAML so it reads like the files they push.

Both are bounded so that a diff costs a small multiple of the two documents plus a fixed
budget, whatever their shape: the walk is iterative and keeps only the keys of the open
containers; a path string is built only for an entry that is reported, at most
``MAX_CHANGES`` entries are reported (``Changes.total`` counts them all), each path is at most
``_paths.MAX_PATH_CHARS`` long, and the patch is left out (``Patch.truncated``) when a side's
YAML rendering would pass ``PATCH_MAX_LINES`` / ``PATCH_MAX_CHARS``.  (Before, two 56 KB
documents with 12,000 changed leaves under a 20,000-character key cost +925 MB.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import Any

import orjson

from ._linediff import unified_diff
from ._paths import json_path
from ._yaml_render import RenderTooLarge, render_lines

MAX_CHANGES = 1000  # structured entries reported per diff
PATCH_MAX_LINES = 100_000  # per side; beyond, the patch is left out
PATCH_MAX_CHARS = 2 * 1024 * 1024  # per side (characters of YAML, indentation included)


@dataclass(slots=True)
class Changes:
    """The first ``limit`` changes in document order, and how many there are in all."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0
    limit: int = MAX_CHANGES

    @property
    def truncated(self) -> bool:
        return self.total > len(self.entries)

    def add(self, keys: list[Any], op: str, **values: Any) -> None:
        self.total += 1
        if len(self.entries) < self.limit:
            self.entries.append({"path": json_path(keys), "op": op, **values})


@dataclass(frozen=True, slots=True)
class Patch:
    text: str
    truncated: bool  # the renderings were over budget: ``text`` is empty, not "no differences"


def structured_diff(old: Any, new: Any, limit: int = MAX_CHANGES) -> list[dict[str, Any]]:
    """The first ``limit`` changes (see ``diff_changes``); empty exactly when the documents are equal."""
    return diff_changes(old, new, limit).entries


def diff_changes(old: Any, new: Any, limit: int = MAX_CHANGES) -> Changes:
    """Walk both trees; mappings are compared key by key, lists index by index, the rest by value.

    Time is linear in the two documents; memory is O(depth) plus the reported entries.
    """
    changes = Changes(limit=limit)
    if not _same_container(old, new):
        if not _equal_leaves(old, new):
            changes.add([], "changed", old=old, new=new)
        return changes
    keys: list[Any] = []
    stack = [_pairs(old, new)]
    while stack:
        for key, before, after in stack[-1]:
            keys.append(key)
            if after is _MISSING:
                changes.add(keys, "removed", old=before)
            elif before is _MISSING:
                changes.add(keys, "added", new=after)
            elif _same_container(before, after):
                stack.append(_pairs(before, after))
                break
            elif not _equal_leaves(before, after):
                changes.add(keys, "changed", old=before, new=after)
            keys.pop()
        else:
            stack.pop()
            if keys:
                keys.pop()
    return changes


_MISSING: Any = object()


def _pairs(old: dict[str, Any] | list[Any], new: dict[str, Any] | list[Any]) -> Iterator[tuple[Any, Any, Any]]:
    """(key, old value, new value) in document order: old's keys, then keys only new has."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in chain(old, (k for k in new if k not in old)):
            yield key, old.get(key, _MISSING), new.get(key, _MISSING)
        return
    assert isinstance(old, list) and isinstance(new, list)
    for i in range(max(len(old), len(new))):
        yield i, old[i] if i < len(old) else _MISSING, new[i] if i < len(new) else _MISSING


def _same_container(old: Any, new: Any) -> bool:
    return (isinstance(old, dict) and isinstance(new, dict)) or (isinstance(old, list) and isinstance(new, list))


def _equal_leaves(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


def unified_patch(old: Any, new: Any, from_label: str, to_label: str) -> str:
    """A ``diff -u`` of the YAML renderings (empty string when equal, or when over budget: see ``patch``)."""
    return patch(old, new, from_label, to_label).text


def patch(old: Any, new: Any, from_label: str, to_label: str, *, max_lines: int = PATCH_MAX_LINES,
          max_chars: int = PATCH_MAX_CHARS) -> Patch:
    """The unified patch of the YAML renderings, or an empty truncated one when a rendering is over
    budget (the structured changes still say what changed).  Near-linear: see ``_linediff``."""
    try:
        before = render_lines(old, max_lines=max_lines, max_chars=max_chars) if old is not None else []
        after = render_lines(new, max_lines=max_lines, max_chars=max_chars) if new is not None else []
    except RenderTooLarge:
        return Patch("", True)
    return Patch(unified_diff(before, after, from_label, to_label), False)


def encoded_diff(old: Any, new: Any, from_label: str, to_label: str, head: dict[str, Any]) -> bytes:
    """``head`` plus ``changes``, ``changes_total``, ``changes_truncated``, ``patch``, ``patch_truncated``
    as JSON bytes (the diff answer of the API).

    The patch is escaped by the stdlib's ASCII encoder and spliced in as a fragment: orjson reserves
    about 12 bytes per character of a string it encodes, which made a 3 MB patch cost 33 MB.
    """
    changes = diff_changes(old, new)
    text = patch(old, new, from_label, to_label)
    return orjson.dumps({**head, "changes": changes.entries, "changes_total": changes.total,
                         "changes_truncated": changes.truncated,
                         "patch": orjson.Fragment(encode_basestring_ascii(text.text)),
                         "patch_truncated": text.truncated})
