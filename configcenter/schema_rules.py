"""Per-namespace JSON Schemas for ``config`` documents: which schema governs a namespace, checking a
schema before it is stored, and validating a document against it.

Used by the server (``server/schemas/store.py``, on every ``config`` push) and by the CLI
(``apply`` validates locally against the schemas the server has, before the first write).

* A schema is registered for a **target**: a namespace (``orders/config``) or a prefix
  (``orders/``).  The schema that governs a namespace is the one of the namespace itself, else
  the one of its longest registered prefix; only that one applies (a more specific schema
  overrides a broader one).  Only ``config`` documents are checked: route tables have their own
  fixed schema.
* A schema must be a valid Draft 2020-12 JSON Schema, may only ``$ref`` inside itself (``#...``:
  nothing is fetched), and its ``pattern`` / ``patternProperties`` regexes are RE2 (linear time),
  so a hostile schema cannot stall the validating thread.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from .errors import InvalidNamespaceError, SchemaViolationError
from .model import validate_namespace, validate_prefix
from .validation import first_errors, violation

MAX_VIOLATIONS = 20
_REF_KEYS = ("$ref", "$dynamicRef")
_UNUSABLE = "the schema cannot be evaluated"
_SCHEMA_URI = "urn:configcenter:schema"  # the base a schema's local refs ("#/$defs/x") resolve against
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print every refused pattern to stderr
_RE2_OPTIONS.max_mem = 8 << 20


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> Any:
    """The compiled RE2 pattern (``re2.error`` if RE2 refuses it), compiled once per pattern."""
    return re2.compile(pattern, _RE2_OPTIONS)


def validate_target(target: str) -> str:
    """A schema target: a namespace name or a non-empty ``prefix/``; ``InvalidNamespaceError`` else."""
    if not target or target == "/":
        raise InvalidNamespaceError("a schema target must be a namespace or a prefix ending in '/'", target=target)
    return validate_prefix(target) if target.endswith("/") else validate_namespace(target)


def governing(ns: str, targets: Iterable[str]) -> str | None:
    """The target whose schema governs ``ns``: ``ns`` itself, else its longest registered prefix."""
    best: str | None = None
    for target in targets:
        if target == ns:
            return ns
        if target.endswith("/") and ns.startswith(target) and (best is None or len(target) > len(best)):
            best = target
    return best


def _re2_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                            schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _regex(pattern).search(key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


SchemaValidator = validators.extend(
    Draft202012Validator, {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties})


def _walk(schema: Any) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Every mapping inside ``schema`` with the live list of keys leading to it (copy it to keep it).

    Iterative, one iterator per open container: memory O(depth), not O(nodes x depth).
    """
    keys: list[Any] = []
    if isinstance(schema, dict):
        yield keys, schema
    elif not isinstance(schema, list):
        return
    stack = [_children(schema)]
    while stack:
        for key, child in stack[-1]:
            if isinstance(child, dict | list):
                keys.append(key)
                if isinstance(child, dict):
                    yield keys, child
                stack.append(_children(child))
                break
        else:
            stack.pop()
            if keys:
                keys.pop()


def _children(value: dict[str, Any] | list[Any]) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _schema_problems(schema: Any) -> list[dict[str, str]]:
    """What makes ``schema`` unusable: meta-schema violations, external refs, regexes RE2 refuses."""
    if not isinstance(schema, dict):
        return [{"path": "$", "message": "a schema must be a mapping (a JSON Schema object)"}]
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        return [violation(exc.absolute_path, exc.message)]
    problems = []
    for where, node in _walk(schema):
        for key in _REF_KEYS:
            ref = node.get(key)
            if isinstance(ref, str) and not ref.startswith("#"):
                problems.append(violation((*where, key), f"only local refs ('#...'), got {ref!r}"))
        problems += _regex_problems(where, node)
        if len(problems) >= MAX_VIOLATIONS:
            break
    return problems[:MAX_VIOLATIONS]


def _regex_problems(where: list[Any], node: dict[str, Any]) -> list[dict[str, str]]:
    regexes: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(node.get("pattern"), str):
        regexes.append((("pattern",), node["pattern"]))
    if isinstance(node.get("patternProperties"), dict):
        regexes += [(("patternProperties", p), p) for p in node["patternProperties"]]
    problems = []
    for tail, pattern in regexes:
        try:
            _regex(pattern)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
            problems.append(violation((*where, *tail), f"RE2 cannot compile {pattern!r}: {reason}"))
    return problems


def _local_resolver(schema: dict[str, Any]) -> Any:
    """A resolver of ``schema``'s own references, through ``referencing``'s public API: a registry
    holding only this schema (Draft 2020-12) and no retrieval, so nothing outside it resolves."""
    resource = DRAFT202012.create_resource(schema)
    return Registry().with_resource(_SCHEMA_URI, resource).resolver(base_uri=_SCHEMA_URI)


def check_schema(schema: Any, target: str = "") -> Any:
    """A validator for ``schema``; ``SchemaViolationError`` (422) naming the schema's bad paths."""
    problems = _schema_problems(schema)
    if not problems and isinstance(schema, dict):
        validator = SchemaValidator(schema)
        resolver = _local_resolver(schema)
        try:  # resolve every local ref once now, so a dangling one is refused here and not at push time
            for _, node in _walk(schema):
                for key in _REF_KEYS:
                    if isinstance(node.get(key), str):
                        resolver.lookup(node[key])
        except Exception as exc:  # referencing.exceptions.Unresolvable and friends
            problems = [{"path": "$", "message": f"unresolvable reference: {exc}"}]
        else:
            problems = [v for v in violations(validator, {}) if v["message"].startswith(_UNUSABLE)]
            if not problems:
                return validator
    first = problems[0]
    raise SchemaViolationError(f"schema for {target or 'the target'} is not a valid JSON Schema at {first['path']}: "
                               f"{first['message']}", violations=problems)


def violations(validator: Any, doc: Any) -> list[dict[str, str]]:
    """The first ``MAX_VIOLATIONS`` paths (by path) of ``doc`` that ``validator`` refuses, among the first
    errors it finds (``validation.first_errors``: never every error of a large document)."""
    try:
        errors = first_errors(validator.iter_errors(doc), MAX_VIOLATIONS)
    except (RecursionError, re2.error, ValueError, LookupError) as exc:
        return [{"path": "$", "message": f"{_UNUSABLE}: {exc.__class__.__name__}: {str(exc)[:200]}"}]
    return [violation(e.absolute_path, e.message) for e in errors]


def validate_config(ns: str, target: str, validator: Any, doc: Any) -> None:
    """``SchemaViolationError`` (422, ``details.violations[].path``) if ``doc`` breaks the schema of ``target``."""
    found = violations(validator, doc)
    if found:
        first = found[0]
        raise SchemaViolationError(
            f"config document of {ns!r} violates the schema registered for {target!r} at {first['path']}: "
            f"{first['message']}", violations=found, schema=target)
