"""JSONPath-style locations (``$.rules[0].id``) for error reports and diffs, bounded in length.

Why bounded: a path names keys the client chose.  A 60,000-character key repeated in every
path of a report (or of a diff entry) turned a 180 KB body into gigabytes, so paths are built
only when something is reported, and each one is at most ``MAX_PATH_CHARS`` long: a key longer
than ``MAX_KEY_CHARS`` is shown by its head and its length, and a path with too many segments
keeps its first and last ones.  A shortened path is for people; it always starts with ``$`` and
says how much it left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_KEY_CHARS = 64  # a key (or index) longer than this is shown as its head and its length
MAX_PATH_CHARS = 512  # no path is longer than this
_KEEP_HEAD = 40


def segment(part: Any) -> str:
    """One step of a path: ``[3]`` for a list index, ``.key`` for a mapping key (long keys shortened)."""
    if isinstance(part, int) and not isinstance(part, bool):
        return f"[{part}]"
    text = part if isinstance(part, str) else str(part)
    if len(text) > MAX_KEY_CHARS:
        text = f"{text[:_KEEP_HEAD]}…({len(text)} chars)"
    return f".{text}"


def json_path(parts: Iterable[Any]) -> str:
    """``['rules', 0, 'route']`` -> ``$.rules[0].route``, at most ``MAX_PATH_CHARS`` characters.

    Costs O(number of parts); each part contributes at most ~MAX_KEY_CHARS characters.
    """
    pieces = [segment(p) for p in parts]
    total = 1 + sum(len(p) for p in pieces)
    if total <= MAX_PATH_CHARS:
        return "$" + "".join(pieces)
    budget = MAX_PATH_CHARS - 32  # room for the "…(N segments)…" marker
    head: list[str] = []
    used = 1
    for piece in pieces[: len(pieces) // 2]:
        if used + len(piece) > budget // 2:
            break
        head.append(piece)
        used += len(piece)
    tail: list[str] = []
    for piece in reversed(pieces[len(head):]):
        if used + len(piece) > budget:
            break
        tail.append(piece)
        used += len(piece)
    skipped = len(pieces) - len(head) - len(tail)
    return "$" + "".join(head) + f"…({skipped} segments)…" + "".join(reversed(tail))
