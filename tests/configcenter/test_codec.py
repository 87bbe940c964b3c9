"""Bounded parsing: alias bombs, depth, NaN, keys and tags refused with a path; same data as ruamel otherwise."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from configcenter._paths import MAX_PATH_CHARS
from configcenter.codec import ParseLimits, parse_body, parse_json, parse_yaml
from configcenter.errors import InvalidBodyError, PayloadTooLargeError
from configcenter.schema_rules import MAX_VIOLATIONS, check_schema, violations
from configcenter.validation import validate_document
from hostile_shapes import CHECK_BUDGET, NO_SHRINK, PARSE_BUDGET, shape, shapes, traced_peak, within

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def billion_laughs(levels: int = 9, fan_out: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * fan_out) + "]")
    return "\n".join(lines) + "\n"


def nested_yaml(depth: int) -> str:
    return "doc: " + "[" * depth + "]" * depth + "\n"


def test_alias_bomb_is_refused_before_it_expands() -> None:
    bomb = billion_laughs()  # ~400 bytes that would expand to ~10^9 items
    assert len(bomb) < 600
    with pytest.raises(PayloadTooLargeError) as info:
        parse_yaml(bomb.encode(), ParseLimits(max_doc_bytes=1_048_576))
    assert "max_doc_bytes" in info.value.message and info.value.details["path"].startswith("$.l")
    # never expanded: the refusal costs kilobytes (19 KB measured), not the 10^9 items it would build
    peak = traced_peak(parse_yaml, bomb.encode(), ParseLimits(max_doc_bytes=1_048_576))
    assert peak < 1 << 20, peak


def test_aliases_within_the_budget_are_expanded() -> None:
    data = parse_yaml(billion_laughs(levels=2, fan_out=3).encode())
    assert data["l2"] == [[["lol"] * 3] * 3] * 3


@pytest.mark.parametrize("text", [nested_yaml(5000), nested_yaml(65), "a:\n" + "".join(
    "  " * i + "b:\n" for i in range(1, 70))])
def test_deep_yaml_gets_the_same_depth_error_as_json(text: str) -> None:
    with pytest.raises(InvalidBodyError, match="depth limit exceeded"):
        parse_yaml(text.encode())
    json_text = "[" * 5000 + "]" * 5000
    with pytest.raises(InvalidBodyError, match=r"depth limit exceeded|recursion"):
        parse_json(json_text)


def test_depth_limit_is_exact_for_json_and_yaml() -> None:
    limits = ParseLimits(max_depth=10)
    assert parse_json("[" * 10 + "]" * 10, limits) is not None
    assert parse_yaml(("[" * 10 + "]" * 10).encode(), limits) is not None
    with pytest.raises(InvalidBodyError, match=r"depth limit exceeded.*\$\[0\]"):
        parse_json("[" * 11 + "]" * 11, limits)
    with pytest.raises(InvalidBodyError, match="depth limit exceeded"):
        parse_yaml(("[" * 11 + "]" * 11).encode(), limits)


def test_aliases_count_with_their_height() -> None:
    text = "a: &a [[[[1]]]]\nb: [[[[[[[*a]]]]]]]\n"  # b nests a at depth 8 + 4
    with pytest.raises(InvalidBodyError, match="depth limit exceeded"):
        parse_yaml(text.encode(), ParseLimits(max_depth=10))


@pytest.mark.parametrize(("text", "path"), [
    ("doc: {x: .nan, y: .inf}", "$.doc.x"),
    ("doc: {list: [1, -.inf]}", "$.doc.list[1]"),
    ("doc: {x: !!float .NaN}", "$.doc.x"),
])
def test_nan_and_infinity_are_refused_naming_the_path(text: str, path: str) -> None:
    with pytest.raises(InvalidBodyError) as info:
        parse_yaml(text.encode())
    assert info.value.details["path"] == path
    assert "NaN/Infinity" in info.value.message


@pytest.mark.parametrize(("text", "needle"), [
    ("1: a", "mapping keys must be strings"),
    ("doc: {? [a, b] : c}", "mapping keys must be strings"),
    ("a: 1\na: 2", "duplicate key"),
    ("x: !!binary aGVsbG8=", "unsupported tag"),
    ("x: !!python/object:os.system {}", "unsupported tag"),
    ("x: !!int abc", "not a valid !!int"),
    ("a: &a [*a]", "recursive alias"),
    ("a: *nope", "undefined alias|found undefined alias"),
    ("a: 1\n---\nb: 2", "single YAML document"),
    ("x: 123456789012345678901234567890", "64 bits"),
    ("a: [1, 2", "invalid YAML"),
])
def test_unacceptable_yaml_is_a_clear_400(text: str, needle: str) -> None:
    with pytest.raises(InvalidBodyError, match=needle):
        parse_yaml(text.encode())


def test_merge_keys_keep_explicit_values() -> None:
    data = parse_yaml(b"base: &b {p: 1, q: 2}\nm: {<<: *b, q: 3}\nn: {<<: [*b, {r: 4}]}\n")
    assert data["m"] == {"q": 3, "p": 1}
    assert data["n"] == {"p": 1, "q": 2, "r": 4}


def test_core_schema_scalars() -> None:
    data = parse_yaml(b"a: [~, null, '', true, False, 12, -3, 0x1f, 0o17, 1.5, 2e3, 2024-01-01, 'yes', yes, .5]")
    assert data["a"] == [None, None, "", True, False, 12, -3, 31, 15, 1.5, 2000.0, "2024-01-01", "yes", "yes", 0.5]


def test_json_bodies_by_content_type_and_bad_utf8() -> None:
    assert parse_body(b'{"a": [1]}', "application/json") == {"a": [1]}
    with pytest.raises(InvalidBodyError, match="not UTF-8"):
        parse_body(b"a: \xff\xfe", "application/yaml")


def test_examples_load_exactly_as_ruamel_loads_them() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert parse_yaml(path.read_bytes()) == YAML(typ="safe", pure=True).load(path.read_text()), path


# Characters that make strings look like numbers, nulls and booleans (the resolver's edge cases);
# not YAML punctuation: ruamel's emitter writes some of it unquoted in flow context, where
# libyaml then refuses it, which says nothing about this loader.
text = st.text(st.sampled_from("0179abefnortuxANTY~ -_.+é中"), max_size=12)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | text
json_docs = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    text, inner, max_size=4), max_leaves=30)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(json_docs)
def test_any_json_document_round_trips_through_yaml(doc: Any) -> None:
    out = io.StringIO()
    dumper = YAML(typ="safe", pure=True)
    dumper.default_flow_style = False
    dumper.dump({"doc": doc}, out)
    assert parse_yaml(out.getvalue().encode()) == {"doc": doc}
    assert parse_json(orjson.dumps({"doc": doc})) == {"doc": doc}


def test_the_fast_parser_is_used_when_libyaml_is_installed() -> None:
    from configcenter._yaml_load import _parsers

    parsers = _parsers()
    assert len(parsers) == 2 and parsers[0].Parser.__name__ == "CParser"  # ruamel.yaml.clib is a dependency


# --------------------------------------------------------------------------- memory (issue 16)


def test_row_3_depth_check_builds_no_path_per_container() -> None:
    """Issue 16 row 3, scaled down 100x (the full body cost +2.3 GB): a long key over many containers."""
    body = orjson.dumps({"k" * 6_000: [[]] * 4_000})
    peak = traced_peak(parse_body, body, "application/json")
    assert peak <= within(PARSE_BUDGET, len(body)), peak / len(body)


def test_the_depth_error_path_is_bounded() -> None:
    body = b'{"' + b"k" * 60_000 + b'": ' + b"[" * 70 + b"]" * 70 + b"}"
    with pytest.raises(InvalidBodyError) as info:
        parse_json(body)
    path = info.value.details["path"]
    assert len(path) <= MAX_PATH_CHARS and path.startswith("$.kkkk") and "(60000 chars)" in path


@settings(max_examples=20, **NO_SHRINK)  # type: ignore[arg-type]
@given(shapes(max_size=60_000).map(lambda s: (s[0], s[1], min(s[2], 6_000), s[3])), st.booleans())
def test_parse_and_check_allocate_a_small_multiple_of_the_body(params: tuple[str, int, int, int],
                                                               as_yaml: bool) -> None:
    _, new = shape(*params)
    doc = new if isinstance(new, dict) else {"x": new}
    body = orjson.dumps({"kind": "config", "doc": doc})
    content_type = "application/yaml" if as_yaml else "application/json"
    peak = traced_peak(parse_body, body, content_type)
    assert peak <= within(PARSE_BUDGET, len(body)), (params, as_yaml, peak / len(body))
    for kind in ("config", "routes"):
        peak = traced_peak(validate_document, kind, doc)
        assert peak <= within(CHECK_BUDGET, len(body)), (params, kind, peak / len(body))


def test_a_document_breaking_its_schema_everywhere_is_reported_cheaply() -> None:
    """Every item violates the namespace's schema: the report is the first violations, not all of them."""
    doc = {"items": list(range(100_000)), "k" * 50_000: 1}
    validator = check_schema({"properties": {"items": {"items": {"type": "string"}}},
                              "propertyNames": {"maxLength": 10}})
    input_bytes = len(orjson.dumps(doc))
    peak = traced_peak(violations, validator, doc)
    assert peak <= within(CHECK_BUDGET, input_bytes), peak / input_bytes
    found = violations(validator, doc)
    assert len(found) == MAX_VIOLATIONS
    assert all(len(v["path"]) <= MAX_PATH_CHARS and len(v["message"]) < 400 for v in found)


@pytest.mark.parametrize("literal", ["18446744073709551616", "-9223372036854775809", "99999999999999999999999"])
def test_a_json_integer_beyond_64_bits_is_refused_not_widened_to_a_float(literal: str) -> None:
    """orjson reads such a literal as a float (digits lost); YAML bodies refuse it, JSON ones must too."""
    with pytest.raises(InvalidBodyError, match="outside the 64-bit range"):
        parse_json(f'{{"a": [{literal}]}}'.encode())


def test_64_bit_integers_floats_and_digit_strings_are_kept() -> None:
    body = b'{"max": 18446744073709551615, "min": -9223372036854775808, "f": 1e30, "s": "99999999999999999999"}'
    assert parse_json(body) == {"max": 2**64 - 1, "min": -(2**63), "f": 1e30, "s": "99999999999999999999"}
