"""Diffs: the unified patch is a correct patch (it applies), and large rewrites stay cheap."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from configcenter._linediff import unified_diff
from configcenter.diffing import structured_diff, unified_patch


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


def test_a_rewrite_of_every_item_in_a_large_document_is_cheap() -> None:
    def big(marker: str) -> dict[str, object]:
        return {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(12_000)]}

    started = time.perf_counter()
    patch = unified_patch(big("x"), big("y"), "a", "b")
    assert time.perf_counter() - started < 20  # difflib alone took 85 s here
    assert patch.count("\n-  - x\n") == 12_000 and patch.count("\n+  - y\n") == 12_000
    assert len(structured_diff(big("x"), big("y"))) == 12_000
