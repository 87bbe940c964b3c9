"""A unified line diff whose cost stays near-linear on large documents.

``difflib.unified_diff`` took 85 s on two 1 MB YAML renderings that differ in
every item (its ``SequenceMatcher`` is quadratic when many lines repeat and
many differ), which made ``GET .../diff`` a way to burn a server's CPU.  This
module keeps difflib's output format but finds the matching lines the way
"patience diff" does: common prefix and suffix are matched directly, lines
that occur exactly once on both sides become anchors (their longest increasing
subsequence, O(k log k)), and the gaps between anchors are handled the same
way, with an explicit work stack.  Only gaps small enough for a quadratic
matcher (``SMALL_GAP`` line pairs) go to difflib; larger gaps without anchors
are shown as a replacement, which is correct, just less minimal.
"""

from __future__ import annotations

import difflib
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence

SMALL_GAP = 250_000  # line pairs (e.g. 500 x 500) difflib may compare in one gap

Block = tuple[int, int, int]  # (start in a, start in b, length)


def unified_diff(a: Sequence[str], b: Sequence[str], from_label: str, to_label: str, context: int = 3) -> str:
    """``diff -u`` of two line lists (lines keep their newlines); empty when equal."""
    matcher = _Matcher(a, b)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- {from_label}\n", f"+++ {to_label}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                _tagged(out, " ", a, i1, i2)
                continue
            if tag in ("replace", "delete"):
                _tagged(out, "-", a, i1, i2)
            if tag in ("replace", "insert"):
                _tagged(out, "+", b, j1, j2)
    return "".join(out)


def _tagged(out: list[str], tag: str, lines: Sequence[str], start: int, stop: int) -> None:
    """Append each line after its tag as two references (no new string per line: the output list
    of a 100,000-line rewrite costs pointers, not another copy of every line)."""
    for i in range(start, stop):
        out.append(tag)
        out.append(lines[i])


def _range(start: int, stop: int) -> str:
    length = stop - start
    if length == 1:
        return f"{start + 1}"
    return f"{start if not length else start + 1},{length}"


class _Matcher(difflib.SequenceMatcher[str]):
    """difflib's opcode grouping over matching blocks found by :func:`matching_blocks`."""

    def __init__(self, a: Sequence[str], b: Sequence[str]) -> None:
        self._lines = (a, b)
        self._blocks: list[difflib.Match] | None = None
        super().__init__(None, a, b, autojunk=False)

    def set_seq2(self, b: Sequence[str]) -> None:
        """Skip difflib's O(n) index of ``b``: :func:`matching_blocks` does not use it."""
        self.b = b
        self._blocks = None
        self.opcodes = None

    def get_matching_blocks(self) -> list[difflib.Match]:
        if self._blocks is None:
            a, b = self._lines
            blocks = _merge(sorted(matching_blocks(a, b)))
            self._blocks = [difflib.Match(*blk) for blk in (*blocks, (len(a), len(b), 0))]
        return self._blocks


def matching_blocks(a: Sequence[str], b: Sequence[str]) -> Iterator[Block]:
    """Every matched line as a block (unsorted); see the module docstring for the method."""
    work = [(0, len(a), 0, len(b))]
    while work:
        alo, ahi, blo, bhi = work.pop()
        while alo < ahi and blo < bhi and a[alo] == b[blo]:
            yield alo, blo, 1
            alo, blo = alo + 1, blo + 1
        while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
            ahi, bhi = ahi - 1, bhi - 1
            yield ahi, bhi, 1
        if alo == ahi or blo == bhi:
            continue
        anchors = _unique_common(a, alo, ahi, b, blo, bhi)
        if anchors:
            previous_a, previous_b = alo, blo
            for i, j in anchors:
                yield i, j, 1
                work.append((previous_a, i, previous_b, j))
                previous_a, previous_b = i + 1, j + 1
            work.append((previous_a, ahi, previous_b, bhi))
        elif (ahi - alo) * (bhi - blo) <= SMALL_GAP:
            small = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi], autojunk=False)
            for m in small.get_matching_blocks()[:-1]:
                yield alo + m.a, blo + m.b, m.size


def _unique_common(a: Sequence[str], alo: int, ahi: int, b: Sequence[str], blo: int,
                   bhi: int) -> list[tuple[int, int]]:
    """Lines unique in both ranges, as the longest run that is in order on both sides."""
    count_a = Counter(a[alo:ahi])
    count_b = Counter(b[blo:bhi])
    where_b = {b[j]: j for j in range(blo, bhi) if count_b[b[j]] == 1}
    pairs = [(i, where_b[a[i]]) for i in range(alo, ahi) if count_a[a[i]] == 1 and a[i] in where_b]
    return _longest_increasing(pairs)


def _longest_increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Longest subsequence of ``pairs`` (sorted by a) whose b positions increase (patience sorting)."""
    tails: list[int] = []  # b value ending the best run of each length
    tail_index: list[int] = []
    back: list[int] = []
    for index, (_, j) in enumerate(pairs):
        k = bisect_left(tails, j)
        back.append(tail_index[k - 1] if k else -1)
        if k == len(tails):
            tails.append(j)
            tail_index.append(index)
        else:
            tails[k], tail_index[k] = j, index
    out: list[tuple[int, int]] = []
    index = tail_index[-1] if tail_index else -1
    while index >= 0:
        out.append(pairs[index])
        index = back[index]
    return out[::-1]


def _merge(blocks: list[Block]) -> list[Block]:
    merged: list[Block] = []
    for i, j, n in blocks:
        if merged and merged[-1][0] + merged[-1][2] == i and merged[-1][1] + merged[-1][2] == j:
            pi, pj, pn = merged[-1]
            merged[-1] = (pi, pj, pn + n)
        else:
            merged.append((i, j, n))
    return merged
