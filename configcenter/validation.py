"""What a push must look like: the envelope, the document's JSON Schema, the route compiler.

Schemas are the files in ``schemas/`` (the same ones the OpenAPI document
references).  A route table is also compiled with the SDK's compiler, so the
server refuses exactly what the SDK could not load (e.g. weights that do not
sum to 100).  Violations are reported with JSONPath-style paths (``$.rules[0]``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from configcenter_sdk.errors import RouteTableError
from configcenter_sdk.routing import compile_table

from ._paths import MAX_PATH_CHARS
from ._paths import json_path as _json_path
from .errors import InvalidBodyError, SchemaViolationError
from .model import KINDS

SCHEMAS_ENV = "CONFIGCENTER_SCHEMAS_DIR"
_SCHEMA_FILES = {"routes": "route-table.schema.json", "config": "config.schema.json"}
_MAX_VIOLATIONS = 20
_ERRORS_LOOKED_AT = 200  # schema errors collected before the first _MAX_VIOLATIONS (by path) are reported
MAX_MESSAGE_CHARS = 300  # a violation message quotes the value: cut long ones


def schemas_dir() -> Path:
    """``$CONFIGCENTER_SCHEMAS_DIR`` or the repository's ``schemas/`` next to the package."""
    configured = os.environ.get(SCHEMAS_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def validator(kind: str) -> Draft202012Validator:
    schema = orjson.loads((schemas_dir() / _SCHEMA_FILES[kind]).read_bytes())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A validated push envelope."""

    kind: str
    doc: dict[str, Any]
    message: str
    author: str
    namespace: object = None  # an envelope written by ``get -o``: must be the namespace pushed to (API: 422)


def parse_envelope(data: Any) -> PushRequest:
    """Check the envelope shape ``{kind, doc, message?, author?, namespace?, revision?}`` (the last two as
    ``configcenter get -o`` writes them: ``revision`` is informational); ``InvalidBodyError`` if off."""
    if not isinstance(data, dict):
        raise InvalidBodyError("body must be a mapping {kind, doc, message?, author?}")
    unknown = sorted(set(data) - {"kind", "doc", "message", "author", "namespace", "revision"})
    if unknown:
        raise InvalidBodyError(f"unknown field(s) in body: {', '.join(map(str, unknown))}", fields=unknown)
    kind = data.get("kind")
    if kind not in KINDS:
        raise InvalidBodyError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(data.get("doc"), dict):
        raise InvalidBodyError("doc must be a mapping (the document to publish)")
    for name in ("message", "author"):
        if not isinstance(data.get(name, ""), str):
            raise InvalidBodyError(f"{name} must be a string")
    if "namespace" in data and data["namespace"] is None:  # another type is a namespace that does not match
        raise InvalidBodyError("namespace must be a string (the namespace pushed to)")
    revision = data.get("revision", 0)  # JSON Schema counts 5.0 an integer: so does this check
    whole = isinstance(revision, int) or (isinstance(revision, float) and revision.is_integer())
    if not whole or isinstance(revision, bool) or not 0 <= revision <= 2**63 - 1:
        raise InvalidBodyError("revision must be a revision number (it is informational)")
    return PushRequest(kind, data["doc"], data.get("message", ""), data.get("author", ""), data.get("namespace"))


def validate_document(kind: str, doc: dict[str, Any], *, max_regex_program_size: int | None = None) -> None:
    """Raise ``SchemaViolationError`` (422) listing every violated path, or return silently.

    A route table is also compiled (RE2 regexes, at most ``max_regex_program_size`` each); its
    error becomes one violation at the JSON path the compiler names (e.g. the ``regex`` matcher).
    """
    violations = [_violation(e) for e in first_errors(validator(kind).iter_errors(doc))]
    if not violations and kind == "routes":
        try:
            compile_table(doc, max_regex_program_size=max_regex_program_size)
        except RouteTableError as exc:
            violations = [_compile_violation(str(exc))]
    if violations:
        first = violations[0]
        raise SchemaViolationError(
            f"{kind} document violates its schema at {first['path']}: {first['message']}", violations=violations
        )


def _violation(error: ValidationError) -> dict[str, str]:
    return violation(error.absolute_path, error.message)


def json_path(parts: Iterable[Any]) -> str:
    """``['rules', 0, 'route']`` -> ``$.rules[0].route`` (bounded in length: see ``_paths``)."""
    return _json_path(parts)


def first_errors(errors: Iterable[ValidationError], limit: int = _MAX_VIOLATIONS) -> list[ValidationError]:
    """At most ``_ERRORS_LOOKED_AT`` errors of a lazy ``iter_errors``, sorted by path, the first ``limit``.

    A document can break its schema in as many places as it has nodes: taking them all (and their
    paths) made a 1 MiB body cost hundreds of MB.  The violations reported are therefore the first
    ``limit`` (by path) of the first ``_ERRORS_LOOKED_AT`` the validator finds.
    """
    return sorted(islice(errors, _ERRORS_LOOKED_AT), key=lambda e: [str(p) for p in e.absolute_path])[:limit]


def violation(path: Iterable[Any], message: str) -> dict[str, str]:
    """One reported violation: a bounded path and a message cut at ``MAX_MESSAGE_CHARS``."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}…({len(message)} chars)"
    return {"path": json_path(path), "message": message}


def _compile_violation(message: str) -> dict[str, str]:
    """``"$.rules[0].id: duplicate rule id 'x'"`` -> that path and the text after it."""
    path, sep, rest = message.partition(": ")
    if sep and path.startswith("$") and len(path) <= MAX_PATH_CHARS:
        return {"path": path, "message": violation((), rest)["message"]}
    return violation((), message)
