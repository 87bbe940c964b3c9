"""Hostile document shapes for the memory tests: each is small on the wire and was (or could be)
large in memory.  Used by the unit tests (tracemalloc around parse/check/diff) and the server
tests (peak RSS of a real ``configcenter serve``), with hypothesis choosing the sizes.

Every shape is ``(old, new)``: two documents of about ``size`` bytes of JSON; parse and check
tests use ``new``, diff tests both.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import Phase
from hypothesis import strategies as st

from configcenter.errors import ConfigCenterError

SHAPES = ("wide", "deep", "long_keys", "many_keys", "changed_leaves", "deep_leaves")


def shape(kind: str, size: int, key_len: int = 20_000, depth: int = 60) -> tuple[Any, Any]:
    """Two documents of kind ``kind``, each about ``size`` bytes as JSON."""
    if kind == "wide":  # row 3's body: a long key over very many empty containers
        n = max(1, size // 3)
        return {"k": [[]] * n}, {"k": [{}] * n}
    if kind == "long_keys":  # row 3 exactly: every container's path repeats the key
        n = max(1, (size - key_len) // 3)
        return {"k" * key_len: [[]] * n}, {"k" * key_len: [[0]] * n}
    if kind == "many_keys":
        n = max(1, size // 12)
        return {f"k{i:07d}": i for i in range(n)}, {f"k{i:07d}": -i for i in range(n)}
    if kind == "changed_leaves":  # row 4: every leaf changes, under a long key
        n = max(1, (size - key_len) // 2)
        return {"k" * key_len: [0] * n}, {"k" * key_len: [1] * n}
    if kind == "deep":  # as deep as the limit allows, with a key per level
        old: Any = [0] * max(1, size // 2 - depth * 8)
        new: Any = [1] * len(old)
        for i in range(depth - 1):
            old, new = {f"level{i}": old}, {f"level{i}": new}
        return old, new
    if kind == "deep_leaves":  # many leaves at depth: YAML indentation multiplies the rendering
        old, new = [0] * max(1, size // 2), [1] * max(1, size // 2)
        for _ in range(depth - 1):
            old, new = [old], [new]
        return old, new
    raise ValueError(kind)


def shapes(min_size: int = 2_000, max_size: int = 200_000) -> st.SearchStrategy[tuple[str, int, int, int]]:
    """(kind, size, key length, depth) for ``shape``; depth stays within the default ``max_depth`` (64)."""
    return st.tuples(st.sampled_from(SHAPES), st.integers(min_size, max_size), st.integers(1, 60_000),
                     st.integers(2, 62))


# Budgets: peak traced allocation <= factor x input bytes (JSON) + fixed.  The factors are what CPython
# objects cost per byte of JSON for the worst shapes (a 3-byte `[]` is a 56-byte list plus a pointer;
# a 7-byte YAML line is a 56-byte string), measured at about half of these.  A diff's fixed part covers
# what its caps allow whatever the input: two renderings of diffing.PATCH_MAX_CHARS, the patch, and
# MAX_CHANGES paths of MAX_PATH_CHARS.
PARSE_BUDGET = (48, 1 << 20)
CHECK_BUDGET = (16, 1 << 20)
DIFF_BUDGET = (48, 16 << 20)
NO_SHRINK = {"phases": (Phase.explicit, Phase.generate), "deadline": None, "derandomize": True}


def traced_peak(fn: Any, *args: Any) -> int:
    """Peak bytes allocated (tracemalloc) while ``fn(*args)`` runs, whatever it raises."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with contextlib.suppress(ConfigCenterError):
            fn(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def within(budget: tuple[int, int], input_bytes: int) -> int:
    factor, fixed = budget
    return factor * input_bytes + fixed
