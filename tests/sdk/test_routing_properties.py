"""Property tests of the route compiler and evaluator (configcenter_sdk.routing).

* Any JSON-like document either compiles or raises ``RouteTableError`` whose message starts with
  a JSON path into the document, never another exception.
* Tables drawn from a strategy of *valid* tables (every matcher kind, regexes from a small safe
  alphabet, percent, weighted routes) never raise on arbitrary header mappings (any text, lone
  surrogates, NUL), always answer with a cluster the table names, and agree with a plain
  reference evaluator written here (Python's ``re`` on short values as the regex oracle).

Example counts are bounded and derandomized so the run is short and identical in CI.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from configcenter_sdk._evaluator import generated, walk
from configcenter_sdk.errors import RouteTableError
from configcenter_sdk.routing import RouteDecision, compile_table, stable_bucket

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REGEX_LIMIT = 100

# --------------------------------------------------------------------------- strategies

# any character, with lone surrogates, NUL and the alphabet the regexes use over-represented
CHARS = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.characters(categories=["Cs"]),
    st.sampled_from(list("aab0x!é\x00\n")),
)
TEXT = st.text(CHARS, max_size=12)
SAFE_KEY = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.one_of(SAFE_KEY, TEXT), inner, max_size=4),
    max_leaves=20,
)
# keys the path check can parse back (``.key`` segments)
SAFE_JSON = st.recursive(
    JSON_SCALAR, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SAFE_KEY, inner, max_size=3), max_leaves=8
)

HEADER_NAMES = ["x-a", "x-b", "X-User-Id", "x-c"]
# RE2 atoms whose concatenation is always a valid pattern; ``$`` is translated to ``\Z`` for the
# Python oracle (RE2's ``$`` is end of text, Python's also matches before a final newline)
REGEX_ATOMS = ["a", "b", ".", "[ab]", "[^a]", "a*", "(a|b)", "b+", "^", "$", "[0-9]", "x?", "(a+)+", "é", "\\x00"]
REGEX = st.lists(st.sampled_from(REGEX_ATOMS), max_size=6).map("".join)
# valid for Python's re, refused by RE2 (or too large for the limit, or not Unicode)
RE2_REFUSES = ["(a)\\1", "(?=a)", "(?<=a)b", "(?<!a)b", "a\\Z", "a{1001}", "(abc){200}", "x{99}y{99}", "a\ud800"]
CLUSTER = st.sampled_from(["c1", "c2", "c3", "canary", "stable"])


@st.composite
def header_matcher(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["exact", "prefix", "suffix", "regex", "regex", "regex", "present"]))
    value: Any
    if kind == "present":
        value = draw(st.booleans())
    elif kind == "regex":
        value = draw(REGEX)
    else:
        value = draw(st.text("ab!é\x00", max_size=3))
    matcher: dict[str, Any] = {"name": draw(st.sampled_from(HEADER_NAMES)), kind: value}
    if draw(st.booleans()):
        matcher["invert"] = draw(st.booleans())
    return matcher


@st.composite
def route(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        return {"cluster": draw(CLUSTER)}
    cuts = sorted(draw(st.lists(st.integers(0, 100), max_size=3)))
    weights = [b - a for a, b in zip([0, *cuts], [*cuts, 100], strict=True)]
    out: dict[str, Any] = {"weighted": [{"cluster": draw(CLUSTER), "weight": w} for w in weights]}
    if draw(st.booleans()):
        out["hash_on"] = draw(st.sampled_from(HEADER_NAMES))
    return out


@st.composite
def rule(draw: st.DrawFn, rule_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule_id, "route": draw(route())}
    if draw(st.integers(0, 3)):  # mostly with conditions
        match: dict[str, Any] = {}
        if draw(st.integers(0, 3)):
            match["headers"] = draw(st.lists(header_matcher(), max_size=2))
        if not draw(st.integers(0, 3)):
            match["percent"] = {"header": draw(st.sampled_from(HEADER_NAMES)), "value": draw(st.integers(0, 100))}
        out["match"] = match
    return out


@st.composite
def valid_table(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(0, 6))
    doc: dict[str, Any] = {
        "service": draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}", fullmatch=True)),
        "rules": [draw(rule(f"r{i}")) for i in range(count)],
        "default": draw(route()),
    }
    if draw(st.booleans()):
        doc["hash_seed"] = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=8))
    return doc


# mostly the names the tables use, often with values from the regexes' alphabet (so rules do match)
HEADER_VALUE = st.one_of(st.text(st.sampled_from(list("aab0xé!\x00\n\udcff")), max_size=8), TEXT)
HEADERS = st.dictionaries(st.one_of(st.sampled_from([*HEADER_NAMES, "X-A", "X-B", "x-user-id"]), TEXT),
                          HEADER_VALUE, max_size=6)


@st.composite
def mutated_table(draw: st.DrawFn) -> dict[str, Any]:
    """A valid table with one node replaced, one key added, or one key removed, somewhere inside."""
    doc = draw(valid_table())
    nodes: list[dict[str, Any] | list[Any]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict | list):
            nodes.append(node)
            for child in node.values() if isinstance(node, dict) else node:
                collect(child)

    collect(doc)
    matchers = [n for n in nodes if isinstance(n, dict) and "name" in n]
    node = draw(st.sampled_from(matchers if matchers and draw(st.booleans()) else nodes))
    if isinstance(node, dict) and "name" in node and draw(st.booleans()):  # a header matcher: make it a regex
        for kind in ("exact", "prefix", "suffix", "regex", "present"):
            node.pop(kind, None)
        node["regex"] = draw(st.one_of(REGEX, TEXT, st.sampled_from(RE2_REFUSES)))
    elif isinstance(node, dict):
        action = draw(st.sampled_from(["replace", "add", "remove"] if node else ["add"]))
        key = draw(st.sampled_from(sorted(node))) if action != "add" else draw(SAFE_KEY)
        if action == "remove":
            del node[key]
        else:
            node[key] = draw(st.one_of(SAFE_JSON, TEXT.map(lambda t: t + "(?=x)"), REGEX))
    elif node:
        node[draw(st.integers(0, len(node) - 1))] = draw(SAFE_JSON)
    else:
        node.append(draw(SAFE_JSON))
    return doc


# --------------------------------------------------------------------------- helpers

_SEGMENT = re.compile(r"\.([a-z_]+)|\[(\d+)\]")


def assert_error_names_a_path(exc: RouteTableError, doc: Any, *, resolvable: bool) -> None:
    message = str(exc)
    path, sep, _ = message.partition(": ")
    assert message.startswith("$") and sep, message
    if not resolvable:
        return
    segments = [(key, index) for key, index in _SEGMENT.findall(path[1:])]
    assert "".join(f".{k}" if k else f"[{i}]" for k, i in segments) == path[1:], path
    node = doc
    for key, index in segments[:-1]:  # the last one may be missing ("is required")
        node = node[key] if key else node[int(index)]


def clusters_of(route_spec: Mapping[str, Any]) -> set[str]:
    if "cluster" in route_spec:
        return {route_spec["cluster"]}
    return {w["cluster"] for w in route_spec["weighted"] if w["weight"] > 0}


def oracle_holds(matcher: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    value = headers.get(matcher["name"].lower())
    kind = next(k for k in ("exact", "prefix", "suffix", "regex", "present") if k in matcher)
    if kind == "present":
        raw = (value is not None) == matcher["present"]
    elif value is None:
        raw = False
    elif kind == "regex":
        raw = re.search(matcher["regex"].replace("$", "\\Z"), value) is not None
    else:
        raw = {"exact": value.__eq__, "prefix": value.startswith, "suffix": value.endswith}[kind](matcher[kind])
    return raw is not matcher.get("invert", False)


def oracle(doc: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[str, Mapping[str, Any]]:
    """(rule id, route) the table must pick, evaluated the obvious way."""
    h = {k.lower(): v for k, v in headers.items()}
    seed = doc.get("hash_seed", "configcenter")
    for r in doc["rules"]:
        match = r.get("match", {})
        if not all(oracle_holds(m, h) for m in match.get("headers", [])):
            continue
        percent = match.get("percent")
        if percent is not None:
            value = h.get(percent["header"].lower())
            if value is None or stable_bucket(value, seed) >= percent["value"]:
                continue
        return r["id"], r["route"]
    return "default", doc["default"]


def check_decision(decision: RouteDecision, doc: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    rule_id, route_spec = oracle(doc, headers)
    assert decision.rule_id == rule_id
    assert decision.cluster in clusters_of(route_spec)
    hash_on = route_spec.get("hash_on")
    h = {k.lower(): v for k, v in headers.items()}
    if "weighted" in route_spec and hash_on is not None and hash_on.lower() in h:
        bucket = stable_bucket(h[hash_on.lower()], doc.get("hash_seed", "configcenter"))
        total = 0
        for w in route_spec["weighted"]:
            total += w["weight"]
            if bucket < total:
                assert decision.cluster == w["cluster"]
                break


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(doc=JSON, limit=st.one_of(st.none(), st.integers(-1, 200)))
def test_any_json_compiles_or_names_a_path(doc: Any, limit: int | None) -> None:
    try:
        compile_table(doc, 3, max_regex_program_size=limit)
        event("compiled")
    except RouteTableError as exc:
        assert_error_names_a_path(exc, doc, resolvable=False)
        event("error at $" if str(exc).startswith("$: ") else "error below $")


@SETTINGS
@given(doc=mutated_table(), limit=st.one_of(st.none(), st.integers(0, 200)))
def test_nearly_valid_tables_compile_or_name_a_path_inside_them(doc: dict[str, Any], limit: int | None) -> None:
    try:
        compile_table(copy.deepcopy(doc), 3, max_regex_program_size=limit)
        event("compiled")
    except RouteTableError as exc:
        assert_error_names_a_path(exc, doc, resolvable=True)
        event("error: " + " ".join(str(exc).partition(": ")[2].split()[:3]))


@SETTINGS
@given(doc=valid_table(), requests=st.lists(HEADERS, min_size=1, max_size=8))
def test_valid_tables_route_any_headers_like_the_reference(doc: dict[str, Any],
                                                          requests: list[dict[str, str]]) -> None:
    table = compile_table(doc, 7, max_regex_program_size=REGEX_LIMIT)
    named = {c for r in doc["rules"] for c in clusters_of(r["route"])} | clusters_of(doc["default"])
    for headers in requests:
        decision = table.route(headers)
        assert decision.revision == 7 and decision.cluster in named
        check_decision(decision, doc, headers)
        # the whole table, generated and walked, picks the rule the index-selected candidates picked
        lowered = {k.lower(): v for k, v in headers.items()}
        assert generated(table._plan)(lowered).rule_id == walk(table._plan, lowered).rule_id == decision.rule_id
        regexes = [m for r in doc["rules"] if r["id"] == decision.rule_id for m in r.get("match", {}).get("headers", [])
                   if "regex" in m and m["name"].lower() in {k.lower() for k in headers}]
        event(f"decided by {'default' if decision.rule_id == 'default' else 'a rule'}"
              f"{' with a regex on a sent header' if regexes else ''}")


@SETTINGS
@given(pattern=REGEX, value=HEADER_VALUE, invert=st.booleans())
def test_regex_matcher_agrees_with_python_re_on_short_values(pattern: str, value: str, invert: bool) -> None:
    # short values over a small alphabet: Python's re is a fine oracle there (and RE2's answer must not differ)
    doc = {"service": "s", "rules": [{"id": "r", "match": {"headers": [{"name": "x-a", "regex": pattern,
                                                                     "invert": invert}]},
                                       "route": {"cluster": "hit"}}], "default": {"cluster": "miss"}}
    expected = (re.search(pattern.replace("$", "\\Z"), value) is not None) is not invert
    assert (compile_table(doc, max_regex_program_size=REGEX_LIMIT).route({"X-A": value}).cluster == "hit") is expected
    event("matched" if expected is not invert else "no match")
