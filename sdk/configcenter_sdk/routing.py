"""Route tables: compile once, evaluate per request.

This is the one evaluator shared by the SDK, the server's route-evaluation endpoint
and the CLI. A route table document (``schemas/route-table.schema.json``) is compiled
by :func:`compile_table` into an immutable :class:`RouteTable`; ``table.route(headers)``
then picks a cluster for one request.

Semantics
---------
* Rules are tried in order; the first rule whose conditions all hold wins, else ``default``.
* Header names are case-insensitive (lower-cased at compile time, and the incoming
  names once per ``route()`` call); header *values* are compared case-sensitively.
  If a mapping carries one name twice in different cases, the last one wins.
* ``regex`` is RE2 syntax, evaluated in time linear in the value's length (never Python's
  backtracking :mod:`re`); search semantics: the pattern may match anywhere in the value,
  anchor it with ``^...$`` for a full match. Patterns RE2 refuses (backreferences,
  lookaround, ...) and, with ``max_regex_program_size``, programs larger than that are
  compile errors. Details in :mod:`configcenter_sdk._matchers`.
* ``invert`` negates a single header matcher's result, including when the header is
  absent (``{exact: x, invert: true}`` holds for a missing header; ``{present: true,
  invert: true}`` means "header absent").
* ``percent: {header, value}`` holds when ``stable_bucket(header value, hash_seed) <
  value``; a missing header never matches.
* ``weighted`` routes walk the cumulative weights with a bucket in 0..99: the stable
  bucket of the ``hash_on`` header when given and present, else ``random.random() * 100``.

The stable hash is keyed BLAKE2b (see :func:`stable_bucket`), identical across
processes, Python versions and restarts. ``route()`` returns pre-built
:class:`RouteDecision` objects, so evaluation allocates only the lower-cased header
dict (and, for hashing or a regex, the encoded value). It never raises on a
``Mapping[str, str]``, whatever the values hold (NUL, lone surrogates, 100 KB of text).
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from configcenter_sdk._evaluator import MAX_GENERATED_STEPS, Evaluator, Step, generated, walk
from configcenter_sdk._evaluator import bucket as _bucket
from configcenter_sdk._evaluator import hasher as _hasher
from configcenter_sdk._matchers import HEADER_RE as _HEADER_RE
from configcenter_sdk._matchers import HeaderMatcher, compile_header
from configcenter_sdk._matchers import fail as _fail
from configcenter_sdk._matchers import mapping as _mapping
from configcenter_sdk._matchers import string as _string
from configcenter_sdk._rule_index import RuleIndex

__all__ = [
    "DEFAULT_HASH_SEED",
    "ClusterRoute",
    "HeaderMatcher",
    "PercentMatcher",
    "Route",
    "RouteDecision",
    "RouteTable",
    "Rule",
    "WeightedRoute",
    "compile_table",
    "stable_bucket",
]

DEFAULT_HASH_SEED = "configcenter"
DEFAULT_RULE_ID = "default"

_SERVICE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_RULE_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_CLUSTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SEED_RE = re.compile(r"[\x20-\x7e]{1,64}")


# --------------------------------------------------------------------------- hashing


def stable_bucket(value: str, seed: str = DEFAULT_HASH_SEED) -> int:
    """Return a bucket in 0..99 for *value*, stable across processes and versions.

    ``int.from_bytes(blake2b(utf8(value), digest_size=8, key=utf8(seed)).digest(), "big") % 100``.
    *seed* is 1..64 printable ASCII characters (the table's ``hash_seed``).
    """
    return _bucket(_hasher(seed), value)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """The result of routing one request."""

    cluster: str
    rule_id: str
    revision: int


@dataclass(frozen=True, slots=True)
class PercentMatcher:
    """``stable_bucket(header value) < value``; a missing header never matches."""

    header: str
    value: int
    hasher: Any


@dataclass(frozen=True, slots=True)
class ClusterRoute:
    """Send everything to one cluster."""

    cluster: str
    decision: RouteDecision

    def pick(self, headers: Mapping[str, str]) -> RouteDecision:
        return self.decision


@dataclass(frozen=True, slots=True)
class WeightedRoute:
    """Split between clusters by weight (percent, summing to 100)."""

    clusters: tuple[str, ...]
    weights: tuple[int, ...]
    hash_on: str | None
    cumulative: tuple[int, ...]
    decisions: tuple[RouteDecision, ...]
    hasher: Any

    def pick(self, headers: Mapping[str, str]) -> RouteDecision:
        value = headers.get(self.hash_on) if self.hash_on is not None else None
        point: float = random.random() * 100 if value is None else _bucket(self.hasher, value)
        return self.decisions[bisect_right(self.cumulative, point)]


Route = ClusterRoute | WeightedRoute


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: all header matchers and the percent condition must hold."""

    id: str
    headers: tuple[HeaderMatcher, ...]
    percent: PercentMatcher | None
    route: Route


# a request's header name -> (lower-cased name or None if unread, its RuleIndex.keyed entry or None)
_Name = tuple[str | None, tuple[int, dict[str, int]] | None]


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable compiled route table (build it with :func:`compile_table`).

    ``revision`` is baked into the pre-built decisions: recompile (don't ``dataclasses.replace``)
    to change it.
    """

    service: str
    revision: int
    rules: tuple[Rule, ...]
    default: Route
    hash_seed: str = DEFAULT_HASH_SEED
    _plan: tuple[Step, ...] = field(init=False, repr=False, compare=False)
    _index: RuleIndex = field(init=False, repr=False, compare=False)
    _evaluators: dict[int, Evaluator] = field(init=False, repr=False, compare=False)
    _names: dict[str, _Name] = field(init=False, repr=False, compare=False)
    _read: frozenset[str] = field(init=False, repr=False, compare=False)  # header names any rule reads

    def __post_init__(self) -> None:
        plan = (*(_step(r.headers, r.percent, r.route) for r in self.rules), _step((), None, self.default))
        object.__setattr__(self, "_plan", plan)  # frozen: set once, here
        object.__setattr__(self, "_index", RuleIndex.build(self.rules))
        object.__setattr__(self, "_evaluators", {})
        object.__setattr__(self, "_names", {})
        object.__setattr__(self, "_read", frozenset(_names_read(self.rules, self.default)))

    def route(self, headers: Mapping[str, str]) -> RouteDecision:
        """Pick the route for a request with these headers (names case-insensitive).

        Only the rules the index cannot rule out are evaluated, in table order, so the answer
        is the first matching rule's, exactly as if every rule were tried (by code generated
        for that set of rules, ``_evaluator``).  A percent header is hashed at most once per
        call (one seed per table).
        """
        index = self._index
        candidates = index.unconditional
        known = self._names.get
        h: dict[str, str] = {}
        for name, value in headers.items():
            low, entry = known(name) or self._learn(name)
            if low is None:  # no rule reads this header
                continue
            h[low] = value
            if entry is not None:  # a repeated name ORs both values' rules: a superset is safe
                candidates |= entry[0] | entry[1].get(value, 0)
        evaluate = self._evaluators.get(candidates)
        if evaluate is None:
            evaluate = self._evaluator_of(candidates)
        decision: RouteDecision = evaluate(h)
        return decision

    def _learn(self, name: str) -> _Name:
        """The lower-cased ``name`` (None when no rule reads it) and its index entry, remembered for
        up to ``_MAX_NAMES`` names of at most ``_MAX_NAME_LEN`` characters (header names are the
        caller's to choose)."""
        low = name.lower()
        found = (low, self._index.keyed.get(low)) if low in self._read else _UNREAD
        if len(self._names) < _MAX_NAMES and len(name) <= _MAX_NAME_LEN:
            self._names[name] = found
        return found

    def _evaluator_of(self, candidates: int) -> Evaluator:
        """The evaluator of the candidate steps in table order, remembered per candidate set
        (``route`` looks there first): requests repeat a few header shapes.  At most
        ``_MAX_SELECTIONS`` are kept (header values are the caller's to choose); past that the
        steps are walked, never compiled, so no request makes ``route()`` compile code without
        bound.  A dict store is atomic under the GIL."""
        everything = candidates == self._index.everything
        steps = self._plan if everything else tuple(_selected(self._plan, candidates))
        if len(self._evaluators) >= _MAX_SELECTIONS:
            return partial(walk, steps)
        evaluate = generated(steps) if len(steps) <= MAX_GENERATED_STEPS else partial(walk, steps)
        self._evaluators[candidates] = evaluate
        return evaluate


_MAX_SELECTIONS = 256
_MAX_NAMES = 1024
_MAX_NAME_LEN = 128
_UNREAD: _Name = (None, None)


def _names_read(rules: tuple[Rule, ...], default: Route) -> Iterator[str]:
    """Every header name a condition, a percent split or a weighted route's ``hash_on`` reads."""
    for route in (*(r.route for r in rules), default):
        if isinstance(route, WeightedRoute) and route.hash_on is not None:
            yield route.hash_on
    for rule in rules:
        yield from (m.name for m in rule.headers)
        if rule.percent is not None:
            yield rule.percent.header


def _selected(plan: tuple[Step, ...], candidates: int) -> Iterator[Step]:
    """The steps whose bits are set, in table order."""
    while candidates:
        lowest = candidates & -candidates
        candidates ^= lowest
        yield plan[lowest.bit_length() - 1]


def _step(matchers: tuple[HeaderMatcher, ...], percent: PercentMatcher | None, route: Route) -> Step:
    plan_percent = None if percent is None else (percent.header, percent.value, percent.hasher)
    target = route.decision if isinstance(route, ClusterRoute) else route.pick
    return matchers, plan_percent, target


# --------------------------------------------------------------------------- compiler


def _int(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**18 else f"a {value.bit_length()}-bit integer"  # str() could raise
        raise _fail(path, f"must be between {low} and {high}, got {shown}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise _fail(path, f"must be a list, got {type(value).__name__}")
    return list(value)


def _compile_match(
    raw: object, path: str, seed: str, regex_limit: int | None
) -> tuple[tuple[HeaderMatcher, ...], PercentMatcher | None]:
    spec = _mapping(raw, path, ("headers", "percent"))
    hpath = f"{path}.headers"
    raw_headers = _list(spec.get("headers", []), hpath)
    headers = tuple(compile_header(h, f"{hpath}[{i}]", regex_limit) for i, h in enumerate(raw_headers))
    percent = None
    if "percent" in spec:
        ppath = f"{path}.percent"
        pspec = _mapping(spec["percent"], ppath, ("header", "value"))
        for key in ("header", "value"):
            if key not in pspec:
                raise _fail(f"{ppath}.{key}", "is required")
        header = _string(pspec["header"], f"{ppath}.header", _HEADER_RE).lower()
        percent = PercentMatcher(header, _int(pspec["value"], f"{ppath}.value", 0, 100), _hasher(seed))
    return headers, percent


def _compile_route(raw: object, path: str, rule_id: str, revision: int, seed: str) -> Route:
    spec = _mapping(raw, path, ("cluster", "weighted", "hash_on"))
    if ("cluster" in spec) == ("weighted" in spec):
        raise _fail(path, "needs exactly one of cluster|weighted")
    if "cluster" in spec:
        if "hash_on" in spec:
            raise _fail(f"{path}.hash_on", "only allowed with weighted")
        cluster = _string(spec["cluster"], f"{path}.cluster", _CLUSTER_RE)
        return ClusterRoute(cluster, RouteDecision(cluster, rule_id, revision))
    wpath = f"{path}.weighted"
    items = _list(spec["weighted"], wpath)
    if not items:
        raise _fail(wpath, "must list at least one cluster")
    clusters: list[str] = []
    weights: list[int] = []
    for i, item in enumerate(items):
        ipath = f"{wpath}[{i}]"
        entry = _mapping(item, ipath, ("cluster", "weight"))
        for key in ("cluster", "weight"):
            if key not in entry:
                raise _fail(f"{ipath}.{key}", "is required")
        clusters.append(_string(entry["cluster"], f"{ipath}.cluster", _CLUSTER_RE))
        weights.append(_int(entry["weight"], f"{ipath}.weight", 0, 100))
    if sum(weights) != 100:
        raise _fail(wpath, f"weights must sum to 100, got {sum(weights)}")
    hash_on = None
    if "hash_on" in spec:
        hash_on = _string(spec["hash_on"], f"{path}.hash_on", _HEADER_RE).lower()
    cumulative = tuple(sum(weights[: i + 1]) for i in range(len(weights)))
    decisions = tuple(RouteDecision(c, rule_id, revision) for c in clusters)
    return WeightedRoute(tuple(clusters), tuple(weights), hash_on, cumulative, decisions, _hasher(seed))


def _compile_rule(raw: object, path: str, revision: int, seed: str, seen: set[str], regex_limit: int | None) -> Rule:
    spec = _mapping(raw, path, ("id", "match", "route"))
    for key in ("id", "route"):
        if key not in spec:
            raise _fail(f"{path}.{key}", "is required")
    rule_id = _string(spec["id"], f"{path}.id", _RULE_ID_RE)
    if rule_id == DEFAULT_RULE_ID:
        raise _fail(f"{path}.id", f"{DEFAULT_RULE_ID!r} is reserved for the default route")
    if rule_id in seen:
        raise _fail(f"{path}.id", f"duplicate rule id {rule_id!r}")
    seen.add(rule_id)
    headers, percent = _compile_match(spec.get("match", {}), f"{path}.match", seed, regex_limit)
    route = _compile_route(spec["route"], f"{path}.route", rule_id, revision, seed)
    return Rule(rule_id, headers, percent, route)


def compile_table(
    doc: Mapping[str, Any], revision: int = 0, *, max_regex_program_size: int | None = None
) -> RouteTable:
    """Validate a route table document and compile it; raise RouteTableError naming the JSON path.

    The error's message is ``"<JSON path>: <what is wrong>"``, e.g.
    ``$.rules[0].match.headers[0].regex: RE2 cannot compile this regular expression: ...``.
    ``max_regex_program_size`` bounds each ``regex`` matcher's RE2 program size (the server
    passes ``limits.max_regex_program_size``); None accepts any pattern RE2 compiles within
    its per-pattern memory budget (what an SDK does with tables the server accepted).
    """
    spec = _mapping(doc, "$", ("service", "hash_seed", "rules", "default"))
    for key in ("service", "default"):
        if key not in spec:
            raise _fail(f"$.{key}", "is required")
    service = _string(spec["service"], "$.service", _SERVICE_RE)
    seed = _string(spec.get("hash_seed", DEFAULT_HASH_SEED), "$.hash_seed", _SEED_RE)
    seen: set[str] = set()
    rules = tuple(
        _compile_rule(r, f"$.rules[{i}]", revision, seed, seen, max_regex_program_size)
        for i, r in enumerate(_list(spec.get("rules", []), "$.rules"))
    )
    default = _compile_route(spec["default"], "$.default", DEFAULT_RULE_ID, revision, seed)
    return RouteTable(service, revision, rules, default, seed)
