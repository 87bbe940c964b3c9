"""Request bodies in, documents out: JSON via orjson, YAML via ruamel.yaml.

Parsing is strict (duplicate YAML keys are an error) and every failure is an
``InvalidBodyError`` that says where the text broke, so a bad push is refused
before anything reaches etcd.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from ruamel.yaml import YAML, YAMLError

from .errors import InvalidBodyError

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def parse_body(body: bytes, content_type: str = "") -> Any:
    """Decode ``body`` as JSON when the content type says so, otherwise as YAML (a superset of JSON)."""
    if not body.strip():
        raise InvalidBodyError("request body is empty")
    if content_type.endswith("json"):
        return parse_json(body)
    return parse_yaml(body)


def parse_json(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidBodyError(f"invalid JSON: {exc}", line=exc.lineno, column=exc.colno) from exc


def parse_yaml(body: bytes | str) -> Any:
    text = body.decode("utf-8", errors="strict") if isinstance(body, bytes) else body
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = {"line": mark.line + 1, "column": mark.column + 1} if mark is not None else {}
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidBodyError(f"invalid YAML: {problem}", **where) from exc
    except UnicodeDecodeError as exc:  # pragma: no cover - decode above raises first
        raise InvalidBodyError("body is not UTF-8") from exc


def dump_yaml(data: Any) -> str:
    """Block-style YAML with keys in their document order (used for diffs and the CLI)."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def dump_json(data: Any, *, pretty: bool = False) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0)
