"""A bounded YAML loader: ruamel.yaml's event stream in, JSON-shaped data out.

Why not ``YAML(typ="safe").load``: its constructor is pure Python (1 MB took
~6.5 s here), it expands a few hundred bytes of nested aliases into hundreds
of megabytes ("billion laughs") before anyone can check the size, and deep
nesting ends in ``RecursionError``.  This loader consumes the parser's events
(C speed with ``ruamel.yaml.clib``) and builds the document with an explicit
stack, so it can refuse, *while* reading:

* a document whose JSON encoding would exceed ``max_bytes`` — aliases are
  charged their full expanded size at each use, so a bomb is refused after
  reading its few hundred bytes (``DocumentTooLarge``);
* nesting deeper than ``max_depth`` (aliases count with their own height);
* anything that runs longer than ``max_seconds``;
* values JSON cannot carry: NaN/Infinity, non-string keys, unknown tags,
  recursive aliases.

Scalars resolve by the YAML 1.2 core schema (null, bool, int, float; anything
else, timestamps included, stays a string).  Merge keys (``<<``) are
supported; duplicate keys are an error.  Every error carries the line and
column of the offending node.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from ._paths import json_path

__all__ = ["DocumentTooLarge", "YamlLimitError", "load_bounded"]

_TAG = "tag:yaml.org,2002:"
# YAML 1.2 core schema; none of these can backtrack (no nested quantifiers).
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_NONFINITE = frozenset({".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
                        ".nan", ".NaN", ".NAN"})
_INT64 = (-(2**63), 2**64 - 1)
_TAGGED_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool, "null": type(None)}
_CHECK_EVERY = 512  # events between two looks at the clock


class YamlLimitError(ValueError):
    """The text is valid YAML but not an acceptable document; ``line``/``column`` are 1-based."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.line = mark.line + 1 if mark is not None else None
        self.column = mark.column + 1 if mark is not None else None
        self.path: str | None = None  # JSONPath of the node, filled in by the loader


class DocumentTooLarge(YamlLimitError):
    """The document's expanded size exceeds ``max_bytes``."""


@dataclass(slots=True)
class _Node:
    value: Any
    size: int = 2
    height: int = 1
    anchor: str | None = None
    pending_key: Any = None
    has_key: bool = False
    merges: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Done:
    value: Any
    size: int
    height: int


class _Builder:
    def __init__(self, max_bytes: int, max_depth: int, deadline: float) -> None:
        self.max_bytes, self.max_depth = max_bytes, max_depth
        self.deadline = deadline
        self.stack: list[_Node] = []
        self.anchors: dict[str, _Done | None] = {}  # None: anchored node still open (recursion)
        self.total = 0
        self.result: _Done | None = None

    def feed(self, event: Any) -> None:
        try:
            self._feed(event)
        except YamlLimitError as exc:
            if exc.path is None:
                exc.path = self.path()
            raise

    def path(self) -> str:
        """JSONPath of the node being read: ``$.doc.rules[2].id`` (built for an error only; bounded)."""
        parts: list[Any] = []
        for node in self.stack:
            if isinstance(node.value, list):
                parts.append(len(node.value))
            elif node.has_key:
                parts.append(node.pending_key)
        return json_path(parts)

    def _feed(self, event: Any) -> None:
        if isinstance(event, ScalarEvent):
            self._finish(_scalar(event), event)
        elif isinstance(event, AliasEvent):
            self._alias(event)
        elif isinstance(event, MappingStartEvent | SequenceStartEvent):
            self._open(event)
        elif isinstance(event, MappingEndEvent | SequenceEndEvent):
            self._close(event)

    def _charge(self, size: int, height: int, mark: Any) -> None:
        self.total += size
        if self.total > self.max_bytes:
            raise DocumentTooLarge(f"document expands to more than {self.max_bytes} bytes", mark)
        if len(self.stack) + height > self.max_depth:
            raise YamlLimitError(f"depth limit exceeded: nesting deeper than {self.max_depth}", mark)

    def _open(self, event: Any) -> None:
        is_map = isinstance(event, MappingStartEvent)
        tag = event.tag
        if tag is not None and tag != "!" and tag != _TAG + ("map" if is_map else "seq"):
            raise YamlLimitError(f"unsupported tag {tag!r}", event.start_mark)
        self._charge(2, 1, event.start_mark)
        self.stack.append(_Node({} if is_map else [], anchor=event.anchor))
        if event.anchor is not None:
            self.anchors[event.anchor] = None

    def _close(self, event: Any) -> None:
        node = self.stack.pop()
        if isinstance(node.value, dict):
            for merged in node.merges:
                for key, value in merged.items():
                    node.value.setdefault(key, value)
        done = _Done(node.value, node.size, node.height)
        if node.anchor is not None:
            self.anchors[node.anchor] = done
        self._attach(done, event)

    def _alias(self, event: Any) -> None:
        if event.anchor not in self.anchors:
            raise YamlLimitError(f"undefined alias {event.anchor!r}", event.start_mark)
        target = self.anchors[event.anchor]
        if target is None:
            raise YamlLimitError(f"recursive alias {event.anchor!r}", event.start_mark)
        self._charge(target.size, target.height, event.start_mark)
        self._attach(target, event)

    def _finish(self, value: Any, event: Any) -> None:
        size = len(event.value) + 3
        self._charge(size, 0, event.start_mark)
        done = _Done(value, size, 0)
        if event.anchor is not None:
            self.anchors[event.anchor] = done
        self._attach(done, event)

    def _attach(self, done: _Done, event: Any) -> None:
        if not self.stack:
            self.result = done
            return
        parent = self.stack[-1]
        parent.size += done.size
        parent.height = max(parent.height, done.height + 1)
        if isinstance(parent.value, list):
            parent.value.append(done.value)
        elif not parent.has_key:
            parent.pending_key, parent.has_key = _key(done.value, event), True
        else:
            self._set(parent, done.value, event)

    def _set(self, parent: _Node, value: Any, event: Any) -> None:
        key = parent.pending_key
        parent.pending_key, parent.has_key = None, False
        if key == "<<" and self._merge(parent, value):
            return
        if key in parent.value:
            raise YamlLimitError(f"duplicate key {key!r}", event.start_mark)
        parent.value[key] = value

    @staticmethod
    def _merge(parent: _Node, value: Any) -> bool:
        sources = value if isinstance(value, list) else [value]
        if not sources or not all(isinstance(s, dict) for s in sources):
            return False
        parent.merges.extend(sources)
        return True


def _key(value: Any, event: Any) -> str:
    if not isinstance(value, str):
        raise YamlLimitError(f"mapping keys must be strings, got {type(value).__name__} {value!r} (quote it)",
                             event.start_mark)
    return value


def _scalar(event: Any) -> Any:
    text, tag = event.value, event.tag
    plain = event.implicit[0] and tag is None
    if tag in (None, "!") and not plain:
        return text
    kind = tag[len(_TAG):] if tag is not None and tag.startswith(_TAG) else None
    if tag is not None and kind not in ("str", "int", "float", "bool", "null"):
        raise YamlLimitError(f"unsupported tag {tag!r}", event.start_mark)
    if kind == "str":
        return text
    value = _resolve(text)
    if kind is not None:
        if kind == "float" and type(value) is int:
            value = float(value)
        if type(value) is not _TAGGED_TYPES[kind]:
            raise YamlLimitError(f"{text!r} is not a valid !!{kind}", event.start_mark)
    if isinstance(value, float) and not math.isfinite(value):
        raise YamlLimitError(f"{text!r} is not representable in JSON (NaN/Infinity)", event.start_mark)
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64[0] <= value <= _INT64[1]:
        raise YamlLimitError(f"integer {text} does not fit in 64 bits", event.start_mark)
    return value


def _resolve(text: str) -> Any:
    if text in _NULL:
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.fullmatch(text) and len(text) <= 40:
        return int(text)
    if text.startswith(("0o", "0x")) and len(text) <= 40:
        try:
            return int(text[2:], 8 if text[1] == "o" else 16)
        except ValueError:
            return text
    if text in _NONFINITE:
        return float(text.replace(".", "").lstrip("+"))
    if _FLOAT.fullmatch(text) and len(text) <= 400:
        return float(text)
    return text


def _parsers() -> list[YAML]:
    """libyaml's parser (fast), then ruamel's own (slow, but it accepts YAML 1.2 that libyaml,
    a YAML 1.1 parser, refuses, e.g. ``[host:port]`` in flow context)."""
    fast, exact = YAML(typ="safe", pure=False), YAML(typ="safe", pure=True)
    return [exact] if fast.Parser is exact.Parser else [fast, exact]  # same class: no ruamel.yaml.clib


def load_bounded(text: str, *, max_bytes: int, max_depth: int, max_seconds: float = 10.0) -> Any:
    """Parse one YAML document within the bounds (see module docstring).

    Raises ``YAMLError`` for syntax errors (as ruamel's own parser reports them),
    ``YamlLimitError`` / ``DocumentTooLarge`` for valid YAML that is not an acceptable
    document.  An empty text is ``None``.  ``max_seconds`` covers both parser passes.
    """
    deadline = time.monotonic() + max_seconds
    *fast, exact = _parsers()
    for parser in fast:
        try:
            return _load(parser, text, _Builder(max_bytes, max_depth, deadline))
        except YAMLError:
            pass  # libyaml refuses some valid YAML 1.2: let ruamel's parser decide
    return _load(exact, text, _Builder(max_bytes, max_depth, deadline))


def _load(parser: YAML, text: str, builder: _Builder) -> Any:
    documents = 0
    for count, event in enumerate(parser.parse(text)):
        if isinstance(event, DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise YamlLimitError("expected a single YAML document, found several", event.start_mark)
        elif isinstance(event, StreamEndEvent):
            break
        else:
            builder.feed(event)
        if count % _CHECK_EVERY == 0 and time.monotonic() > builder.deadline:
            raise YamlLimitError("parsing took longer than the time limit", event.start_mark)
    return builder.result.value if builder.result is not None else None
