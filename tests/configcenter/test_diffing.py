"""Diffs: the unified patch is a correct patch (it applies), and large rewrites stay cheap."""

from __future__ import annotations

import difflib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configcenter._linediff import SMALL_GAP, unified_diff
from configcenter._paths import MAX_PATH_CHARS, json_path
from configcenter._yaml_render import RenderTooLarge, render_lines
from configcenter.codec import parse_yaml
from configcenter.diffing import MAX_CHANGES, diff_changes, encoded_diff, patch, structured_diff, unified_patch
from hostile_shapes import DIFF_BUDGET, NO_SHRINK, shape, shapes, traced_peak, within


def apply_patch(old: list[str], patch: str) -> list[str]:
    """Apply a unified diff to ``old`` (enough of patch(1) to check our own output)."""
    lines, out, at, i = patch.splitlines(keepends=True), [], 0, 2
    while i < len(lines):
        old_range = lines[i].split()[1][1:]
        start, _, length = old_range.partition(",")
        begin = int(start) - 1 if (length or "1") != "0" else int(start)
        out += old[at:begin]
        at, i = begin, i + 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, text = lines[i][0], lines[i][1:]
            if tag in " -":
                assert old[at] == text, (old[at], text)
                at += 1
            if tag in " +":
                out.append(text)
            i += 1
    return out + old[at:]


line_lists = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "d\n", "- x\n", "  y: 1\n"]), max_size=40)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(line_lists, line_lists)
def test_the_patch_turns_old_into_new(old: list[str], new: list[str]) -> None:
    patch = unified_diff(old, new, "old", "new")
    assert (patch == "") == (old == new)
    assert apply_patch(old, patch) == new


def test_context_and_header_match_diff_u() -> None:
    patch = unified_patch({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 2, 3]}, "ns@1", "ns@2")
    assert patch == "--- ns@1\n+++ ns@2\n@@ -1,4 +1,5 @@\n-a: 1\n+a: 2\n b:\n - 1\n - 2\n+- 3\n"


@pytest.fixture
def difflib_pairs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The line pairs each quadratic ``difflib.SequenceMatcher`` is given (len(a) * len(b)): the work
    that grows with the square of a gap, counted instead of timed."""
    pairs: list[int] = []

    class Counting(difflib.SequenceMatcher):
        def __init__(self, isjunk: Any = None, a: Any = "", b: Any = "", autojunk: bool = True) -> None:
            pairs.append(len(a) * len(b))
            super().__init__(isjunk, a, b, autojunk)

    monkeypatch.setattr(difflib, "SequenceMatcher", Counting)
    return pairs


def test_a_rewrite_of_every_item_in_a_large_document_is_cheap(difflib_pairs: list[int]) -> None:
    def big(marker: str) -> dict[str, object]:
        return {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(12_000)]}

    patch = unified_patch(big("x"), big("y"), "a", "b")
    assert patch.count("\n-  - x\n") == 12_000 and patch.count("\n+  - y\n") == 12_000
    # difflib on the whole rendering (84,000 lines a side) compared ~10^9 pairs and took 85 s; here only
    # the one-line gaps between unique lines reach it: as many pairs as changed lines
    assert max(difflib_pairs) <= SMALL_GAP and sum(difflib_pairs) == 12_000, (len(difflib_pairs), sum(difflib_pairs))
    changes = diff_changes(big("x"), big("y"))
    assert changes.total == 12_000 and changes.truncated and len(changes.entries) == MAX_CHANGES
    assert changes.entries[0] == {"path": "$.items[0].tags[2]", "op": "changed", "old": "x", "new": "y"}
    assert structured_diff(big("x"), big("y")) == changes.entries


def reference_diff(old: Any, new: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    """The recursive walk this module used before it was bounded: (path, op) in document order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[tuple[Any, ...], str]] = []
        for key in list(old) + [k for k in new if k not in old]:
            if key not in new or key not in old:
                out.append(((*path, key), "removed" if key not in new else "added"))
            else:
                out += reference_diff(old[key], new[key], (*path, key))
        return out
    if isinstance(old, list) and isinstance(new, list):
        out = []
        for i in range(max(len(old), len(new))):
            if i >= len(old) or i >= len(new):
                out.append(((*path, i), "removed" if i >= len(new) else "added"))
            else:
                out += reference_diff(old[i], new[i], (*path, i))
        return out
    return [] if old == new and type(old) is type(new) else [(path, "changed")]


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=12)
json_docs = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["a", "b", "c", "yes", "1", "", "k: v", "- x", "#", "long" * 40]) | st.text(max_size=6),
    inner, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_docs, json_docs)
def test_the_bounded_walk_finds_what_the_recursive_one_found(old: Any, new: Any) -> None:
    expected = reference_diff(old, new)
    changes = diff_changes(old, new)
    assert changes.total == len(expected) and not changes.truncated
    assert [(c["path"], c["op"]) for c in changes.entries] == [(json_path(p), op) for p, op in expected]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_docs)
def test_the_yaml_rendering_reads_back_as_the_same_document(doc: Any) -> None:
    text = "".join(render_lines(doc, max_lines=10_000, max_chars=1 << 20))
    assert orjson.dumps(parse_yaml(text.encode())) == orjson.dumps(doc), text


def test_a_rendering_over_budget_leaves_the_patch_out_and_the_changes_in() -> None:
    old, new = shape("deep_leaves", 100_000, depth=60)  # 60 levels of indentation per leaf line
    with pytest.raises(RenderTooLarge):
        render_lines(old, max_lines=100_000, max_chars=1 << 20)
    result = patch(old, new, "a", "b", max_chars=1 << 20)
    assert result.truncated and result.text == ""
    assert diff_changes(old, new).total == 50_000


def test_paths_of_long_keys_are_bounded() -> None:
    old, new = shape("changed_leaves", 40_000, key_len=20_000)  # row 4 of issue 16, scaled down
    changes = diff_changes(old, new)
    assert changes.total == 10_000 and len(changes.entries) == MAX_CHANGES
    path = changes.entries[0]["path"]
    assert len(path) <= MAX_PATH_CHARS and path.startswith("$.kkkk") and "(20000 chars)" in path


def test_row_4_diff_is_cheap(difflib_pairs: list[int]) -> None:
    """Issue 16 row 4 at full size: 12,000 changed leaves under a 20,000-character key (+925 MB before)."""
    old, new = {"k" * 20_000: [0] * 12_000}, {"k" * 20_000: [1] * 12_000}
    peak = traced_peak(lambda: orjson.dumps([structured_diff(old, new), unified_patch(old, new, "a", "b")]))
    assert peak < 16 << 20, peak / 2**20
    assert sum(difflib_pairs) <= SMALL_GAP, sum(difflib_pairs)  # no gap of the square of 12,000 lines


@settings(max_examples=20, **NO_SHRINK)  # type: ignore[arg-type]
@given(shapes(max_size=60_000).map(lambda s: (s[0], s[1], min(s[2], 5_000), s[3])))
def test_a_diff_allocates_a_small_multiple_of_its_documents(params: tuple[str, int, int, int]) -> None:
    kind, size, key_len, depth = params
    old, new = shape(kind, size, key_len, depth)
    input_bytes = len(orjson.dumps(old)) + len(orjson.dumps(new))
    peak = traced_peak(lambda: (structured_diff(old, new), unified_patch(old, new, "a", "b")))
    assert peak <= within(DIFF_BUDGET, input_bytes), (kind, size, key_len, depth, peak / input_bytes)
    peak = traced_peak(encoded_diff, old, new, "a", "b", {})  # the API's answer, encoded
    assert peak <= within(DIFF_BUDGET, input_bytes), (kind, size, key_len, depth, peak / input_bytes)


def test_the_encoded_answer_carries_the_counts_and_the_patch() -> None:
    answer = orjson.loads(encoded_diff({"a": 1, "s": "é\u2028"}, {"a": 2, "s": "é\u2028"}, "x@1", "x@2", {"ns": "x"}))
    assert answer == {"ns": "x", "changes": [{"path": "$.a", "op": "changed", "old": 1, "new": 2}],
                      "changes_total": 1, "changes_truncated": False,
                      "patch": '--- x@1\n+++ x@2\n@@ -1,2 +1,2 @@\n-a: 1\n+a: 2\n s: "é\\u2028"\n',
                      "patch_truncated": False}
