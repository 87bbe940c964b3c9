"""Block-style YAML lines of a JSON document, for diffs: streaming, iterative, within a budget.

Why not ``codec.dump_yaml``: ruamel's representer builds a node object per value before it
emits anything (73 MB for a 660 KB document), and YAML's indentation grows with depth, so a
600 KB document nested 60 levels renders to 75 MB of text.  A diff renders both sides, so
this renderer emits one line at a time and gives up (``RenderTooLarge``) as soon as the
rendering passes ``max_lines`` or ``max_chars``; the caller then leaves the patch out.

The output reads like ruamel's block style (``key: value``, list items at their key's
indentation, ``- key: value`` for mappings in lists, ``{}``/``[]`` when empty); strings are
plain when that cannot be misread as another type, otherwise JSON-quoted (valid YAML).
Both sides of a diff go through this one function, so they are rendered alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["RenderTooLarge", "render_lines"]

_PLAIN_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_PLAIN = _PLAIN_FIRST | frozenset("0123456789./- ")
_RESERVED = frozenset({"null", "true", "false", "yes", "no", "on", "off"})  # YAML 1.2 core, and 1.1 words
_MAX_SIMPLE_KEY = 128  # longer keys use YAML's explicit "? key" form, as ruamel does
# characters YAML wants escaped (or reads as line breaks, BOM) that JSON leaves alone: DEL, C1 controls, …
_ESCAPE = {c: f"\\u{c:04x}" for c in [0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, 0xFEFF]}


class RenderTooLarge(ValueError):
    """The rendering would pass the budget it was given."""


@dataclass(slots=True)
class _Frame:
    items: Iterator[tuple[Any, Any]]
    is_list: bool
    indent: int
    lead: str | None  # what starts this frame's first line instead of indentation ("- ", "  - - ")


def scalar(value: Any) -> str:
    """One JSON scalar (or an empty container) as YAML text."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    return "{}" if isinstance(value, dict) else "[]"


def _string(text: str) -> str:
    if (text and text[0] in _PLAIN_FIRST and _PLAIN.issuperset(text) and text.lower() not in _RESERVED
            and not text.endswith(" ") and "  " not in text):
        return text
    quoted = orjson.dumps(text).decode()
    return quoted.translate(_ESCAPE) if not quoted.isascii() else quoted


def render_lines(doc: Any, *, max_lines: int, max_chars: int) -> list[str]:
    """The lines (each ending in a newline) of ``doc``; ``RenderTooLarge`` past either budget.

    Memory: the lines returned plus one frame per open container (no recursion).
    """
    out = _Out(max_lines, max_chars)
    if not _is_container(doc):
        out.add(scalar(doc))
        return out.lines
    stack = [_frame(doc, 0, None)]
    while stack:
        frame = stack[-1]
        entry = next(frame.items, None)
        if entry is None:
            stack.pop()
            continue
        lead = frame.lead if frame.lead is not None else " " * frame.indent
        frame.lead = None
        child = _list_item(out, frame, lead, entry[1]) if frame.is_list else _mapping_entry(out, frame, lead, *entry)
        if child is not None:
            stack.append(child)
    return out.lines


def _list_item(out: _Out, frame: _Frame, lead: str, value: Any) -> _Frame | None:
    if _is_container(value):
        return _frame(value, frame.indent + 2, lead + "- ")
    out.add(f"{lead}- {scalar(value)}")
    return None


def _mapping_entry(out: _Out, frame: _Frame, lead: str, key: str, value: Any) -> _Frame | None:
    text = _string(key)
    if len(text) > _MAX_SIMPLE_KEY:
        out.add(f"{lead}? {text}")
        lead = " " * frame.indent + ": "
        if _is_container(value):
            return _frame(value, frame.indent + 2, lead)
        out.add(f"{lead}{scalar(value)}")
        return None
    if not _is_container(value):
        out.add(f"{lead}{text}: {scalar(value)}")
        return None
    out.add(f"{lead}{text}:")
    return _frame(value, frame.indent if isinstance(value, list) else frame.indent + 2, None)


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _frame(value: dict[str, Any] | list[Any], indent: int, lead: str | None) -> _Frame:
    if isinstance(value, dict):
        return _Frame(iter(value.items()), False, indent, lead)
    return _Frame(enumerate(value), True, indent, lead)


class _Out:
    __slots__ = ("chars", "lines", "max_chars", "max_lines")

    def __init__(self, max_lines: int, max_chars: int) -> None:
        self.lines: list[str] = []
        self.chars = 0
        self.max_lines, self.max_chars = max_lines, max_chars

    def add(self, line: str) -> None:
        self.chars += len(line) + 1
        if len(self.lines) >= self.max_lines or self.chars > self.max_chars:
            raise RenderTooLarge(f"the YAML rendering exceeds {self.max_lines} lines or {self.max_chars} characters")
        self.lines.append(line + "\n")
