"""Request bodies in, documents out: JSON via orjson, YAML via ruamel.yaml.

Parsing is strict (duplicate YAML keys are an error) and bounded: size after
YAML alias expansion, nesting depth (the same for JSON and YAML), time, and only
values JSON can carry (no NaN/Infinity, string keys).  Every failure is an
``InvalidBodyError`` (or ``PayloadTooLargeError`` for an expanding document)
that says where the text broke, so a bad push is refused before anything
reaches etcd.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import re2
from ruamel.yaml import YAML, YAMLError

from ._paths import json_path
from ._yaml_load import DocumentTooLarge, YamlLimitError, load_bounded
from .errors import InvalidBodyError, PayloadTooLargeError

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Bounds for one parse (the server passes its ``limits``; the CLI uses these defaults).

    ``max_doc_bytes`` is measured on the document as JSON after YAML alias expansion;
    ``max_depth`` is the same for JSON and YAML.
    """

    max_doc_bytes: int = 1_048_576
    max_depth: int = 64
    max_seconds: float = 10.0  # wall clock, a backstop: 1 MB takes ~0.4 s


DEFAULT_LIMITS = ParseLimits()


def parse_body(body: bytes, content_type: str = "", limits: ParseLimits = DEFAULT_LIMITS) -> Any:
    """Decode ``body`` as JSON when the content type says so, otherwise as YAML (a superset of JSON).

    CPU cost is linear in ``len(body)`` and bounded by ``limits``; call it off the event loop
    for large bodies.  Every failure is ``InvalidBodyError`` (400) or ``PayloadTooLargeError`` (413).
    """
    if not body.strip():
        raise InvalidBodyError("request body is empty")
    if content_type.endswith("json"):
        return parse_json(body, limits)
    return parse_yaml(body, limits)


def parse_json(body: bytes | str, limits: ParseLimits = DEFAULT_LIMITS) -> Any:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBodyError(f"invalid JSON: {exc}", line=exc.lineno, column=exc.colno) from exc
    if _check_depth(data, limits.max_depth):
        _refuse_wide_integers(body)
    return data


def parse_yaml(body: bytes | str, limits: ParseLimits = DEFAULT_LIMITS) -> Any:
    try:
        text = body.decode("utf-8", errors="strict") if isinstance(body, bytes) else body
        return load_bounded(text, max_bytes=limits.max_doc_bytes, max_depth=limits.max_depth,
                            max_seconds=limits.max_seconds)
    except UnicodeDecodeError as exc:
        raise InvalidBodyError(f"body is not UTF-8 (byte {exc.start})") from exc
    except DocumentTooLarge as exc:
        raise PayloadTooLargeError(f"{exc} (limits.max_doc_bytes)", **_where(exc)) from exc
    except YamlLimitError as exc:
        raise InvalidBodyError(f"invalid YAML: {exc}", **_where(exc)) from exc
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidBodyError(f"invalid YAML: {problem}", **where) from exc


def _where(exc: YamlLimitError) -> dict[str, Any]:
    where = {"line": exc.line, "column": exc.column, "path": exc.path}
    return {k: v for k, v in where.items() if v is not None}


def _check_depth(data: Any, max_depth: int) -> bool:
    """Refuse JSON nested deeper than ``max_depth``, naming the path (iteratively, no recursion).
    True if the document holds a float that may be an integer literal orjson widened (see
    ``_refuse_wide_integers``).

    Memory is O(depth): the walk keeps one iterator per open container and builds the
    (bounded, ``_paths``) path only for the error it reports.
    """
    if not isinstance(data, dict | list):
        return _maybe_wide(data)
    suspicious = False
    keys: list[Any] = []
    stack = [_children(data)]
    while stack:
        for key, child in stack[-1]:
            suspicious = suspicious or _maybe_wide(child)
            if isinstance(child, dict | list):
                keys.append(key)
                if len(keys) + 1 > max_depth:
                    path = json_path(keys)
                    raise InvalidBodyError(f"depth limit exceeded: nesting deeper than {max_depth} at {path}",
                                           path=path)
                stack.append(_children(child))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()
    return suspicious


def _maybe_wide(value: Any) -> bool:
    return type(value) is float and value.is_integer() and abs(value) >= 2**63  # the scan decides


# a string (skipped) or an integer literal of 19+ digits: RE2, one linear pass over the body
_WIDE_INTEGER = re2.compile(r'"(?:[^"\\]|\\.)*"|(-?[0-9]{19,})([.eE]?)')


def _refuse_wide_integers(body: bytes | str) -> None:
    """orjson reads an integer literal beyond 64 bits as a float, silently losing digits; YAML bodies
    refuse one (``_yaml_load``).  Only called when the parsed document holds such a float, so a
    document without one pays nothing; then one RE2 pass finds the literal and refuses it (400)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    for match in _WIDE_INTEGER.finditer(text):
        digits, fraction = match.group(1), match.group(2)
        if digits and not fraction and not -(2**63) <= int(digits) < 2**64:
            raise InvalidBodyError(f"integer {digits[:40]} is outside the 64-bit range JSON documents may use")


def _children(value: dict[str, Any] | list[Any]) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def dump_yaml(data: Any, *, fast: bool = False) -> str:
    """Block-style YAML with keys in their document order (used for diffs and the CLI).

    ``fast`` uses libyaml's emitter when available (3x faster; it quotes multi-line
    strings differently, so only diffs use it: both of their sides are rendered alike).
    """
    yaml = YAML(typ="safe", pure=not fast)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def dump_json(data: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0)
