"""Tests of the shared route-table evaluator (configcenter_sdk.routing)."""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast

import jsonschema
import pytest
from multidict import CIMultiDict
from ruamel.yaml import YAML

from configcenter_sdk._evaluator import walk
from configcenter_sdk.errors import RouteTableError
from configcenter_sdk.routing import RouteDecision, RouteTable, compile_table, stable_bucket

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "schemas" / "route-table.schema.json").read_text())
CONFIG_SCHEMA = json.loads((ROOT / "schemas" / "config.schema.json").read_text())
SEED = "test-seed"


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _gated(rule_id: str, *conds: dict[str, Any], cluster: str | None = None) -> dict[str, Any]:
    """A rule that only applies when ``x-t: <rule_id>`` is sent, plus the conditions under test."""
    headers = [{"name": "x-t", "exact": rule_id}, *conds]
    return {"id": rule_id, "match": {"headers": headers}, "route": {"cluster": cluster or f"c-{rule_id}"}}


TABLE: dict[str, Any] = {
    "service": "svc",
    "hash_seed": SEED,
    "rules": [
        {
            "id": "first",
            "match": {"headers": [{"name": "X-First", "present": True}]},
            "route": {"cluster": "c-first"},
        },
        _gated("exact", {"name": "X-V", "exact": "v2-beta"}),
        _gated("exact-inv", {"name": "x-v", "exact": "bad", "invert": True}),
        _gated("prefix", {"name": "x-v", "prefix": "prod"}),
        _gated("prefix-inv", {"name": "x-v", "prefix": "prod", "invert": True}),
        _gated("suffix", {"name": "x-v", "suffix": ".internal"}),
        _gated("suffix-inv", {"name": "x-v", "suffix": ".internal", "invert": True}),
        _gated("regex", {"name": "x-v", "regex": "^Mozilla/[0-9]+"}),
        _gated("regex-search", {"name": "x-v", "regex": "beta[0-9]"}),
        _gated("regex-inv", {"name": "x-v", "regex": "bot|crawler", "invert": True}),
        _gated("present", {"name": "x-v", "present": True}),
        _gated("present-inv", {"name": "x-v", "present": True, "invert": True}),
        _gated("present-false", {"name": "x-v", "present": False}),
        _gated("all", {"name": "x-a", "exact": "1"}, {"name": "x-b", "prefix": "2"}),
        {
            "id": "percent",
            "match": {
                "headers": [{"name": "x-t", "exact": "percent"}],
                "percent": {"header": "X-User-Id", "value": 10},
            },
            "route": {"cluster": "c-percent"},
        },
        {
            "id": "weighted-hash",
            "match": {"headers": [{"name": "x-t", "exact": "weighted-hash"}]},
            "route": {
                "weighted": [{"cluster": "wa", "weight": 90}, {"cluster": "wb", "weight": 10}],
                "hash_on": "X-User-Id",
            },
        },
        {
            "id": "weighted-rand",
            "match": {"headers": [{"name": "x-t", "exact": "weighted-rand"}]},
            "route": {
                "weighted": [
                    {"cluster": "r1", "weight": 50},
                    {"cluster": "r0", "weight": 0},
                    {"cluster": "r2", "weight": 50},
                ]
            },
        },
        _gated("empty", cluster="c-empty"),
    ],
    "default": {"cluster": "c-default"},
}


def _user_with_bucket(pred: Callable[[int], bool]) -> str:
    return next(u for u in (f"user-{i}" for i in range(10_000)) if pred(stable_bucket(u, SEED)))


LOW_USER = _user_with_bucket(lambda b: b < 10)  # falls into the 10 %
HIGH_USER = _user_with_bucket(lambda b: b >= 10)

# (headers, expected cluster, expected rule_id)
VECTORS: list[tuple[dict[str, str], str, str]] = [
    ({}, "c-default", "default"),
    ({"x-unrelated": "1"}, "c-default", "default"),
    ({"x-first": "", "x-t": "exact", "x-v": "v2-beta"}, "c-first", "first"),  # first match wins
    ({"x-t": "exact", "x-v": "v2-beta"}, "c-exact", "exact"),
    ({"X-T": "exact", "X-v": "v2-beta"}, "c-exact", "exact"),  # names case-insensitive
    ({"x-t": "exact", "x-v": "V2-BETA"}, "c-default", "default"),  # values case-sensitive
    ({"x-t": "exact", "x-v": "v2-beta-2"}, "c-default", "default"),
    ({"x-t": "exact"}, "c-default", "default"),
    ({"x-t": "exact-inv", "x-v": "good"}, "c-exact-inv", "exact-inv"),
    ({"x-t": "exact-inv", "x-v": "bad"}, "c-default", "default"),
    ({"x-t": "exact-inv"}, "c-exact-inv", "exact-inv"),  # invert holds for an absent header
    ({"x-t": "prefix", "x-v": "prod-eu"}, "c-prefix", "prefix"),
    ({"x-t": "prefix", "x-v": "preprod"}, "c-default", "default"),
    ({"x-t": "prefix"}, "c-default", "default"),
    ({"x-t": "prefix-inv", "x-v": "dev"}, "c-prefix-inv", "prefix-inv"),
    ({"x-t": "prefix-inv", "x-v": "prod-1"}, "c-default", "default"),
    ({"x-t": "suffix", "X-V": "api.internal"}, "c-suffix", "suffix"),
    ({"x-t": "suffix", "x-v": "internal.api"}, "c-default", "default"),
    ({"x-t": "suffix-inv", "x-v": "example.com"}, "c-suffix-inv", "suffix-inv"),
    ({"x-t": "suffix-inv", "x-v": "db.internal"}, "c-default", "default"),
    ({"x-t": "regex", "x-v": "Mozilla/5.0 (X11)"}, "c-regex", "regex"),
    ({"x-t": "regex", "x-v": "curl Mozilla/5.0"}, "c-default", "default"),  # ^ anchors
    ({"x-t": "regex-search", "x-v": "x-beta7-y"}, "c-regex-search", "regex-search"),  # search semantics
    ({"x-t": "regex-search", "x-v": "beta"}, "c-default", "default"),
    ({"x-t": "regex-inv", "x-v": "Mozilla/5.0"}, "c-regex-inv", "regex-inv"),
    ({"x-t": "regex-inv", "x-v": "Googlebot/2.1"}, "c-default", "default"),
    ({"x-t": "regex-search", "x-v": "beta\udcff9 beta1"}, "c-regex-search", "regex-search"),  # lone surrogate
    ({"x-t": "regex-search", "x-v": "\x00beta1"}, "c-regex-search", "regex-search"),  # NUL is a character
    ({"x-t": "present", "x-v": ""}, "c-present", "present"),  # empty value is still present
    ({"x-t": "present"}, "c-default", "default"),
    ({"x-t": "present-inv"}, "c-present-inv", "present-inv"),
    ({"x-t": "present-inv", "x-v": "1"}, "c-default", "default"),
    ({"x-t": "present-false"}, "c-present-false", "present-false"),
    ({"x-t": "present-false", "X-V": "1"}, "c-default", "default"),
    ({"x-t": "all", "x-a": "1", "x-b": "2x"}, "c-all", "all"),
    ({"x-t": "all", "x-a": "1"}, "c-default", "default"),
    ({"x-t": "all", "x-a": "2", "x-b": "2"}, "c-default", "default"),
    ({"x-t": "percent", "x-user-id": LOW_USER}, "c-percent", "percent"),
    ({"x-t": "percent", "X-USER-ID": LOW_USER}, "c-percent", "percent"),
    ({"x-t": "percent", "x-user-id": HIGH_USER}, "c-default", "default"),
    ({"x-t": "percent"}, "c-default", "default"),  # missing header never matches
    ({"x-t": "weighted-hash", "x-user-id": LOW_USER}, "wa", "weighted-hash"),  # bucket < 90
    ({"x-t": "empty"}, "c-empty", "empty"),
]


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return compile_table(TABLE, revision=42)


@pytest.mark.parametrize(("headers", "cluster", "rule_id"), VECTORS)
def test_vectors(table: RouteTable, headers: dict[str, str], cluster: str, rule_id: str) -> None:
    assert table.route(headers) == RouteDecision(cluster, rule_id, 42)


@pytest.mark.parametrize("wrap", [CIMultiDict, MappingProxyType], ids=["cimultidict", "mappingproxy"])
def test_any_mapping(table: RouteTable, wrap: Callable[[dict[str, str]], Any]) -> None:
    for headers, cluster, rule_id in VECTORS:
        assert table.route(wrap(headers)) == RouteDecision(cluster, rule_id, 42)


def test_table_is_immutable_and_matches_schema(table: RouteTable) -> None:
    assert table.service == "svc" and table.revision == 42 and isinstance(table.rules, tuple)
    assert [r.id for r in table.rules][:2] == ["first", "exact"]
    with pytest.raises(AttributeError):
        cast(Any, table).service = "x"
    assert not hasattr(table, "__dict__") and not hasattr(table.rules[0], "__dict__")
    with pytest.raises((AttributeError, TypeError)):  # TypeError: CPython 3.11 frozen+slots quirk
        cast(Any, table).extra = 1
    _validator(SCHEMA).validate(TABLE)


def test_rules_optional_and_default_only() -> None:
    t = compile_table({"service": "a", "default": {"cluster": "only"}})
    assert t.rules == () and t.route({"x": "y"}) == RouteDecision("only", "default", 0)


@pytest.mark.parametrize(
    "rule",
    [
        {"id": "any", "route": {"cluster": "x"}},
        {"id": "any", "match": {}, "route": {"cluster": "x"}},
        {"id": "any", "match": {"headers": []}, "route": {"cluster": "x"}},
    ],
)
def test_absent_or_empty_match_always_matches(rule: dict[str, Any]) -> None:
    doc = {"service": "a", "rules": [rule], "default": {"cluster": "d"}}
    _validator(SCHEMA).validate(doc)
    assert compile_table(doc).route({}) == RouteDecision("x", "any", 0)


# ----------------------------------------------------------------- stable hashing


def test_stable_bucket_golden_values() -> None:
    # Pinned outputs: any change to the hash function breaks every deployed gray split.
    import hashlib

    for value, seed in [("user-1", "configcenter"), ("alice", "payment-v1"), ("", "x"), ("ünï", "s")]:
        key = seed.encode()
        expected = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8, key=key).digest(), "big") % 100
        assert stable_bucket(value, seed) == expected
    assert [stable_bucket(f"user-{i}", "configcenter") for i in range(8)] == [73, 14, 38, 1, 51, 92, 49, 7]
    assert stable_bucket("alice", "payment-v1") == 81
    assert stable_bucket("alice") == stable_bucket("alice", "configcenter")


def test_percent_stable_across_tables_and_processes() -> None:
    users = [f"u{i}" for i in range(300)]
    t1, t2 = compile_table(copy.deepcopy(TABLE)), compile_table(json.loads(json.dumps(TABLE)))
    d1 = [t1.route({"x-t": "percent", "x-user-id": u}).cluster for u in users]
    d2 = [t2.route({"X-T": "percent", "X-User-Id": u}).cluster for u in users]
    assert d1 == d2
    code = (
        "import json, sys\n"
        "from configcenter_sdk.routing import stable_bucket\n"
        "print(json.dumps([stable_bucket(u, sys.argv[1]) for u in json.loads(sys.stdin.read())]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, SEED],
        input=json.dumps(users),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    here = [stable_bucket(u, SEED) for u in users]
    assert json.loads(out.stdout) == here
    assert d1 == ["c-percent" if b < 10 else "c-default" for b in here]


def test_percent_distribution(table: RouteTable) -> None:
    n = 10_000
    hits = sum(table.route({"x-t": "percent", "x-user-id": f"user-{i}"}).rule_id == "percent" for i in range(n))
    assert 0.08 * n <= hits <= 0.12 * n


def test_percent_edges() -> None:
    doc = {
        "service": "s",
        "rules": [
            {"id": "zero", "match": {"percent": {"header": "u", "value": 0}}, "route": {"cluster": "z"}},
            {"id": "all", "match": {"percent": {"header": "u", "value": 100}}, "route": {"cluster": "a"}},
        ],
        "default": {"cluster": "d"},
    }
    t = compile_table(doc)
    assert {t.route({"u": f"{i}"}).cluster for i in range(500)} == {"a"}
    assert t.route({}).cluster == "d"


def test_weighted_hash_on_stable_and_distributed(table: RouteTable) -> None:
    n = 10_000
    picks = [table.route({"x-t": "weighted-hash", "x-user-id": f"user-{i}"}).cluster for i in range(n)]
    again = [table.route({"X-T": "weighted-hash", "x-user-id": f"user-{i}"}).cluster for i in range(n)]
    assert picks == again
    counts = Counter(picks)
    assert set(counts) == {"wa", "wb"}
    assert abs(counts["wb"] / n - 0.10) <= 0.02
    # the bucket walks cumulative weights: 0..89 -> wa, 90..99 -> wb
    for i in range(200):
        u = f"user-{i}"
        assert picks[i] == ("wa" if stable_bucket(u, SEED) < 90 else "wb")


def test_weighted_random(table: RouteTable) -> None:
    n = 4_000
    counts = Counter(table.route({"x-t": "weighted-rand"}).cluster for _ in range(n))
    assert set(counts) <= {"r1", "r2"}  # weight 0 is never chosen
    assert 0.40 * n <= counts["r1"] <= 0.60 * n
    # hash_on with the header missing falls back to random among the listed clusters
    missing = {table.route({"x-t": "weighted-hash"}).cluster for _ in range(500)}
    assert missing == {"wa", "wb"}


def test_decision_objects_are_prebuilt(table: RouteTable) -> None:
    h = {"x-t": "exact", "x-v": "v2-beta"}
    assert table.route(h) is table.route(dict(h))


# ----------------------------------------------------------------- compile errors


def _doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "service": "svc",
        "rules": [{"id": "r0", "match": {"headers": [{"name": "x-a", "exact": "1"}]}, "route": {"cluster": "a"}}],
        "default": {"cluster": "d"},
    }
    doc.update(over)
    return doc


def _rule(**over: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"id": "r0", "route": {"cluster": "a"}}
    rule.update(over)
    return rule


def _hdr(**cond: Any) -> dict[str, Any]:
    return _doc(rules=[_rule(match={"headers": [{"name": "x-a", **cond}]})])


_W = [{"cluster": "a", "weight": 60}, {"cluster": "b", "weight": 30}]
_MISSING_DEFAULT = {k: v for k, v in _doc().items() if k != "default"}
_MISSING_SERVICE = {k: v for k, v in _doc().items() if k != "service"}

# (id, doc, expected path, expressible in JSON Schema)
INVALID: list[tuple[str, Any, str, bool]] = [
    ("bad-regex", _hdr(regex="(unclosed"), "$.rules[0].match.headers[0].regex", True),
    # valid for Python's re (so for the schema's "format": "regex"), refused by RE2
    ("re2-backreference", _hdr(regex="(a)\\1"), "$.rules[0].match.headers[0].regex", False),
    ("re2-named-backreference", _hdr(regex="(?P<x>a)(?P=x)"), "$.rules[0].match.headers[0].regex", False),
    ("re2-lookahead", _hdr(regex="(?=a)"), "$.rules[0].match.headers[0].regex", False),
    ("re2-negative-lookahead", _hdr(regex="x(?!a)"), "$.rules[0].match.headers[0].regex", False),
    ("re2-lookbehind", _hdr(regex="(?<=a)b"), "$.rules[0].match.headers[0].regex", False),
    ("re2-negative-lookbehind", _hdr(regex="(?<!a)b"), "$.rules[0].match.headers[0].regex", False),
    ("re2-python-end-anchor", _hdr(regex="abc\\Z"), "$.rules[0].match.headers[0].regex", False),
    ("re2-repeat-over-1000", _hdr(regex="a{1001}"), "$.rules[0].match.headers[0].regex", False),
    ("regex-lone-surrogate", _hdr(regex="a\ud800"), "$.rules[0].match.headers[0].regex", False),
    ("two-matchers", _hdr(exact="1", prefix="2"), "$.rules[0].match.headers[0]", True),
    ("no-matcher", _hdr(invert=True), "$.rules[0].match.headers[0]", True),
    ("weights-not-100", _doc(rules=[_rule(route={"weighted": _W})]), "$.rules[0].route.weighted", False),
    (
        "weights-over-100",
        _doc(default={"weighted": [*_W, {"cluster": "c", "weight": 20}]}),
        "$.default.weighted",
        False,
    ),
    ("dup-ids", _doc(rules=[_rule(), _rule()]), "$.rules[1].id", False),
    (
        "percent-over-100",
        _doc(rules=[_rule(match={"percent": {"header": "u", "value": 101}})]),
        "$.rules[0].match.percent.value",
        True,
    ),
    (
        "percent-negative",
        _doc(rules=[_rule(match={"percent": {"header": "u", "value": -1}})]),
        "$.rules[0].match.percent.value",
        True,
    ),
    (
        "percent-no-header",
        _doc(rules=[_rule(match={"percent": {"value": 5}})]),
        "$.rules[0].match.percent.header",
        True,
    ),
    (
        "percent-string",
        _doc(rules=[_rule(match={"percent": {"header": "u", "value": "5"}})]),
        "$.rules[0].match.percent.value",
        True,
    ),
    ("missing-default", _MISSING_DEFAULT, "$.default", True),
    ("missing-service", _MISSING_SERVICE, "$.service", True),
    ("bad-service", _doc(service="Payment!"), "$.service", True),
    ("unknown-top", _doc(extra=1), "$.extra", True),
    ("unknown-rule-key", _doc(rules=[_rule(when={})]), "$.rules[0].when", True),
    ("unknown-header-key", _hdr(exact="1", nocase=True), "$.rules[0].match.headers[0].nocase", True),
    ("cluster-and-weighted", _doc(default={"cluster": "a", "weighted": _W}), "$.default", True),
    ("empty-route", _doc(default={}), "$.default", True),
    ("hash-on-single", _doc(default={"cluster": "a", "hash_on": "u"}), "$.default.hash_on", True),
    ("bad-cluster", _doc(default={"cluster": "-bad"}), "$.default.cluster", True),
    (
        "negative-weight",
        _doc(default={"weighted": [{"cluster": "a", "weight": -10}, {"cluster": "b", "weight": 110}]}),
        "$.default.weighted[0].weight",
        True,
    ),
    (
        "bool-weight",
        _doc(default={"weighted": [{"cluster": "a", "weight": True}]}),
        "$.default.weighted[0].weight",
        True,
    ),
    ("empty-weighted", _doc(default={"weighted": []}), "$.default.weighted", True),
    ("present-not-bool", _hdr(present="yes"), "$.rules[0].match.headers[0].present", True),
    ("invert-not-bool", _hdr(exact="1", invert="no"), "$.rules[0].match.headers[0].invert", True),
    ("exact-not-string", _hdr(exact=5), "$.rules[0].match.headers[0].exact", True),
    (
        "bad-header-name",
        _doc(rules=[_rule(match={"headers": [{"name": "x a", "exact": "1"}]})]),
        "$.rules[0].match.headers[0].name",
        True,
    ),
    ("rules-not-list", _doc(rules={"id": "r0"}), "$.rules", True),
    ("rule-no-route", _doc(rules=[{"id": "r0"}]), "$.rules[0].route", True),
    ("reserved-id", _doc(rules=[_rule(id="default")]), "$.rules[0].id", True),
    ("bad-seed", _doc(hash_seed=""), "$.hash_seed", True),
    ("not-a-mapping", ["service"], "$", True),
    ("huge-int-weight", _doc(default={"weighted": [{"cluster": "a", "weight": 10**30}]}),
     "$.default.weighted[0].weight", True),
    ("second-rule-regex", _doc(rules=[_rule(), _rule(id="r1", match={"headers": [
        {"name": "x-a", "exact": "1"}, {"name": "x-b", "regex": "(?=x)"}]})]),
     "$.rules[1].match.headers[1].regex", False),
]


@pytest.mark.parametrize(("doc", "path"), [(d, p) for _, d, p, _ in INVALID], ids=[i for i, *_ in INVALID])
def test_compile_errors_name_the_path(doc: Any, path: str) -> None:
    with pytest.raises(RouteTableError) as exc:
        compile_table(doc)
    assert str(exc.value).startswith(f"{path}: "), str(exc.value)


@pytest.mark.parametrize(
    "doc", [d for _, d, _, expressible in INVALID if expressible], ids=[i for i, _, _, e in INVALID if e]
)
def test_schema_agrees_with_compiler(doc: Any) -> None:
    assert not _validator(SCHEMA).is_valid(doc)


def test_schema_accepts_compiler_only_violations() -> None:
    # sanity check that the schema-inexpressible cases really pass the schema (so the compiler is needed)
    for _, doc, _, expressible in INVALID:
        if not expressible:
            assert _validator(SCHEMA).is_valid(doc)


def test_integer_too_long_to_print_is_still_a_route_table_error() -> None:
    # str() of a 5000-digit int raises ValueError since Python 3.11; the message must not need it
    doc = _doc(default={"weighted": [{"cluster": "a", "weight": -(10**5000)}]})
    with pytest.raises(RouteTableError, match=r"^\$\.default\.weighted\[0\]\.weight: .* 16610-bit integer$"):
        compile_table(doc)


# ----------------------------------------------------------------- regex matchers (RE2)

REGEX_PATH = "$.rules[0].match.headers[0].regex"
# classic catastrophic-backtracking shapes (exponential or polynomial under Python's re)
EVIL_PATTERNS = ["^(a+)+$", "^(a|a)*$", "^(a|aa)+$", "(a*)*b", "^(\\w+\\s?)*$", "(.*a){8}$", "^(a+)+(b+)+c$"]


def _regex_table(pattern: str, limit: int | None = 100) -> RouteTable:
    return compile_table(_hdr(regex=pattern), max_regex_program_size=limit)


@pytest.mark.parametrize(
    ("pattern", "limit"),
    [("a{1000}", 100), ("(abc){200}", 100), ("[a-z]{60}[0-9]{60}", 100), ("^(a+)+$", 6), ("x", 0)],
)
def test_program_size_limit_names_the_matcher(pattern: str, limit: int) -> None:
    with pytest.raises(RouteTableError) as exc:
        _regex_table(pattern, limit)
    message = str(exc.value)
    assert message.startswith(f"{REGEX_PATH}: ") and "program size" in message, message
    assert f"limit of {limit}" in message
    _regex_table(pattern, None)  # without a limit (the SDK loading a table the server accepted) it compiles


def test_program_size_is_counted_as_envoy_does() -> None:
    import re2

    assert re2.compile("^(a+)+$").programsize == 7  # captures included
    _regex_table("^(a+)+$", 7)
    _regex_table("x{90}", 100)
    with pytest.raises(RouteTableError, match=r"RE2 program size 7 exceeds the limit of 6$"):
        _regex_table("^(a+)+$", 6)


def test_regex_error_message_comes_from_re2() -> None:
    with pytest.raises(RouteTableError) as exc:
        _regex_table("(a)\\1")
    assert str(exc.value) == f"{REGEX_PATH}: RE2 cannot compile this regular expression: invalid escape sequence: \\1"


@pytest.mark.parametrize("pattern", EVIL_PATTERNS)
@pytest.mark.parametrize("tail", ["!", ""])
def test_adversarial_values_are_decided_as_python_re_decides_short_ones(pattern: str, tail: str) -> None:
    """100 KB headers against patterns that backtracking engines take exponential time on: RE2
    (linear in the input) gives the answer Python's ``re`` gives on 12 characters. A backtracking
    engine would never finish these (Python's ``re`` needs ~6 s for 28 characters of ``^(a+)+$``),
    so a regression hangs rather than passes. No clock here: the cost per call, and Python's ``re``
    against the same inputs, are measured by ``bench/bench_route.py``."""
    import re

    expected = "a" if re.search(pattern, "a" * 12 + tail) else "d"
    table = _regex_table(pattern)
    for n in (10_000, 100_000):
        assert table.route({"x-a": "a" * n + tail}).cluster == expected, (pattern, n, tail)


HOSTILE_VALUES = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udcff" * 3,
    "a\udfffb",
    "\U0010ffff",
    "\r\n",
    "é" * 50_000,
    "a" * 100_000 + "!",
    "".join(chr(c) for c in range(0x20, 0x3000)) * 4,
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=range(len(HOSTILE_VALUES)))
def test_route_never_raises_on_hostile_values(table: RouteTable, value: str) -> None:
    hostile = compile_table(_doc(rules=[
        _rule(id=f"r{i}", match={"headers": [{"name": "x-v", **cond}], "percent": {"header": "x-v", "value": 50}})
        for i, cond in enumerate([{"regex": p} for p in EVIL_PATTERNS] + [{"exact": "a"}, {"suffix": "!"}])
    ]), max_regex_program_size=100)
    for t in (table, hostile):
        for name in ("x-v", "x-user-id", "x-t"):
            assert t.route({"x-t": "regex-inv", name: value}).cluster
            assert t.route({name: value, "X-T": value}).cluster


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("^.$", "\ud800", True),  # a lone surrogate is one character
        ("^a.b$", "a\udcffb", True),
        ("^a[^x]b$", "a\udcffb", True),
        ("^...$", "a\ud800", False),
        ("\\x00", "a\x00b", True),
        ("^é+$", "éé", True),
        ("^abc$", "abc\n", False),  # RE2's $ is end of text only (Python's re also matched before a final \n)
        ("^abc\\z", "abc", True),
        ("(?i)^ABC", "abcd", True),
        ("", "anything", True),  # the empty pattern matches everywhere
    ],
)
def test_regex_semantics(pattern: str, value: str, matches: bool) -> None:
    assert (_regex_table(pattern).route({"x-a": value}).cluster == "a") is matches
    assert (compile_table(_hdr(regex=pattern, invert=True)).route({"x-a": value}).cluster == "a") is not matches


# ----------------------------------------------------------------- examples


def _examples() -> list[Path]:
    return sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_examples(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# namespace: ")
    ns = first.removeprefix("# namespace: ")
    assert 1 <= len(ns.split("/")) <= 4
    envelope = YAML(typ="safe").load(path.read_text())
    assert set(envelope) <= {"namespace", "kind", "doc", "message", "author"}
    assert envelope["namespace"] == ns  # what `configcenter apply examples/` publishes it as
    assert envelope["kind"] in ("routes", "config")
    if envelope["kind"] == "routes":
        _validator(SCHEMA).validate(envelope["doc"])
        table = compile_table(envelope["doc"], revision=1)
        assert table.route({}).rule_id == "default"
    else:
        _validator(CONFIG_SCHEMA).validate(envelope["doc"])


def test_payment_example_behaviour() -> None:
    envelope = YAML(typ="safe").load((ROOT / "examples" / "payment-routes.yaml").read_text())
    t = compile_table(envelope["doc"], revision=9)
    assert t.route({"X-Release": "v2-beta"}) == RouteDecision("payment-canary", "beta-header", 9)
    assert t.route({}) == RouteDecision("payment-stable", "default", 9)
    share = sum(t.route({"x-user-id": f"id{i}"}).rule_id == "beta-users" for i in range(10_000)) / 10_000
    assert 0.08 <= share <= 0.12


def _routing_modules() -> dict[str, Any]:
    import ast

    import configcenter_sdk._matchers as matchers
    import configcenter_sdk.routing as routing

    return {m.__name__: ast.parse(Path(cast(str, m.__file__)).read_text()) for m in (routing, matchers)}


def _imports(tree: Any) -> set[str]:
    import ast

    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return imported | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_sdk_module_has_no_jsonschema_dependency() -> None:
    trees = _routing_modules()
    for name, tree in trees.items():
        assert not any(m.split(".")[0] == "jsonschema" for m in _imports(tree)), name
    assert "re2" in _imports(trees["configcenter_sdk._matchers"])


def test_python_re_never_sees_a_pattern_from_a_document() -> None:
    """The backtracking ``re`` may only compile literal patterns (names, ids); document regexes go to RE2."""
    import ast

    for name, tree in _routing_modules().items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == "re":
                assert node.func.attr == "compile", f"{name}: re.{node.func.attr}() at line {node.lineno}"
                assert node.args and isinstance(node.args[0], ast.Constant), f"{name}: re.compile(<non-literal>)"


def test_openapi_parses_and_refs_resolve() -> None:
    spec = YAML(typ="safe").load((ROOT / "schemas" / "openapi.yaml").read_text())
    assert spec["openapi"].startswith("3.1")

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
        return [r for v in node for r in refs(v)] if isinstance(node, list) else []

    for ref in refs(spec):
        if ref.startswith("#/"):
            target = spec
            for part in ref[2:].split("/"):
                target = target[part]
        else:
            assert (ROOT / "schemas" / ref).is_file(), ref
    for schema in spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    ns = jsonschema.Draft202012Validator(spec["components"]["schemas"]["Namespace"])
    assert ns.is_valid("payment/routes") and ns.is_valid("a/b/c/d") and ns.is_valid("a/history/x")
    assert not any(map(ns.is_valid, ["a/history", "route", "a/b/c/d/e", "Pay/x", "a//b"]))


def test_rule_index_keeps_first_match_order_across_indexed_and_unindexed_rules() -> None:
    """Rules filed under exact values, under presence and unconditionally still win in table order."""
    doc = {"service": "s", "default": {"cluster": "default"}, "rules": [
        {"id": "exact-a1", "match": {"headers": [{"name": "x-a", "exact": "1"}]}, "route": {"cluster": "c0"}},
        {"id": "not-a2", "match": {"headers": [{"name": "x-a", "exact": "2", "invert": True}]},
         "route": {"cluster": "c1"}},
        {"id": "b-prefix", "match": {"headers": [{"name": "x-b", "prefix": "v"}]}, "route": {"cluster": "c2"}},
        {"id": "exact-a2", "match": {"headers": [{"name": "X-A", "exact": "2"}]}, "route": {"cluster": "c3"}},
        {"id": "pct", "match": {"percent": {"header": "x-u", "value": 100}}, "route": {"cluster": "c4"}},
    ]}
    table = compile_table(doc, 1)
    cases = [({"X-A": "1"}, "exact-a1"), ({"x-a": "3"}, "not-a2"), ({}, "not-a2"),
             ({"x-a": "2", "X-B": "v1"}, "b-prefix"), ({"x-a": "2", "x-b": "w"}, "exact-a2"),
             ({"x-a": "2", "x-u": "anyone"}, "exact-a2"), ({"x-a": "2", "x-U": "u"}, "exact-a2")]
    assert [table.route(h).rule_id for h, _ in cases] == [want for _, want in cases]
    only_percent = compile_table({**doc, "rules": doc["rules"][4:]}, 1)
    assert only_percent.route({"X-U": "u"}).rule_id == "pct" and only_percent.route({}).rule_id == "default"


def test_remembered_candidate_sets_are_bounded_and_answers_stay_first_match() -> None:
    """Header names are the caller's: 1,024 different sets of present headers give 1,024 candidate
    sets; the table remembers at most 256 of them and answers every one by first match."""
    names = [f"x-h{i}" for i in range(10)]
    doc = {"service": "s", "default": {"cluster": "fallback"},
           "rules": [{"id": f"r{i}", "match": {"headers": [{"name": n, "present": True}]},
                      "route": {"cluster": f"c{i}"}} for i, n in enumerate(names)]}
    table = compile_table(doc, revision=3)
    for subset in range(1 << len(names)):
        headers = {names[i].upper(): "1" for i in range(len(names)) if subset >> i & 1}
        first = (subset & -subset).bit_length() - 1
        want = f"c{first}" if subset else "fallback"
        assert table.route(headers).cluster == want, headers
    assert 0 < len(table._evaluators) <= 256


def test_remembered_header_names_are_bounded_and_case_variants_still_match() -> None:
    """Header names are the caller's: 5,000 distinct names (and a 10 KB one) leave the table's
    name memo at its bound; spellings seen before and after it filled route by the same rules,
    names no rule reads are skipped, and percent/hash_on headers still count as read."""
    doc = {"service": "s", "default": {"cluster": "fallback"}, "rules": [
        {"id": "beta", "match": {"headers": [{"name": "x-release", "exact": "beta"}]}, "route": {"cluster": "canary"}},
        {"id": "half", "match": {"percent": {"header": "x-user", "value": 100}},
         "route": {"weighted": [{"cluster": "a", "weight": 50}, {"cluster": "b", "weight": 50}], "hash_on": "x-user"}},
    ]}
    table = compile_table(doc, revision=1)
    assert table.route({"X-Release": "beta"}).cluster == "canary"
    for i in range(5000):
        assert table.route({f"x-junk-{i}": "1", "X-RELEASE": "beta"}).cluster == "canary"
    assert table.route({"x" * 10_000: "1", "x-ReLeAsE": "beta"}).cluster == "canary"
    assert len(table._names) <= 1024 and "x" * 10_000 not in table._names
    assert table.route({"X-User": "u-7"}).cluster == table.route({"x-user": "u-7"}).cluster
    assert table.route({"X-User": "u-7"}).rule_id == "half"
    assert table.route({"x-release": "alpha", "x-other": "beta"}).cluster == "fallback"


def test_table_content_is_never_source_text_of_the_generated_evaluator() -> None:
    """Values that would break out of a string literal route as plain data."""
    nasty = ["'); import os; os._exit(3) #", '"""', "\\", "\n    return None", "{k0}", "k1", "\x00"]
    doc = {"service": "s", "default": {"cluster": "fallback"},
           "rules": [{"id": f"r{i}", "match": {"headers": [{"name": "x-v", "exact": v}, {"name": "x-p", "prefix": v}]},
                      "route": {"cluster": f"c{i}"}} for i, v in enumerate(nasty)]}
    table = compile_table(doc, revision=1)
    for i, v in enumerate(nasty):
        assert table.route({"X-V": v, "X-P": v + "tail"}).cluster == f"c{i}"
        assert table.route({"X-V": v, "X-P": "other"}).cluster == "fallback"


def test_long_plans_are_walked_not_compiled_and_agree() -> None:
    rules = [{"id": f"r{i}", "match": {"headers": [{"name": "x-a", "suffix": f"-{i}"}]}, "route": {"cluster": f"c{i}"}}
             for i in range(300)]
    table = compile_table({"service": "s", "default": {"cluster": "fallback"}, "rules": rules}, revision=1)
    assert table.route({"x-a": "v-299"}).cluster == "c299" and table.route({"x-a": "v-x"}).cluster == "fallback"
    (evaluate,) = table._evaluators.values()
    assert isinstance(evaluate, functools.partial) and evaluate.func is walk
