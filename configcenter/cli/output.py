"""What the CLI prints: plain tables for people, the server's JSON for scripts, YAML documents.

Every function returns text (no printing here), so the commands stay easy to
test and the output format lives in one place.

Control characters
------------------
Whatever came from a server (release messages, authors, principals, documents, error messages) may
hold terminal control characters: ``ESC [2J`` clears the screen, ``\r`` overwrites a line, others
retitle the window or, on some terminals, write to the clipboard. None reaches the terminal:
:func:`printable` replaces every C0 control but tab and newline, DEL and every C1 control by a visible
escape (``\r``, ``\b``, ``\f`` or ``\u001b``; valid inside JSON and YAML double-quoted strings, so
``--json`` and ``-o`` output stays parseable), table cells and change lines escape before they fold
whitespace, and ``main.run`` sends every remote command's stdout and stderr through
:class:`EscapingStream`, so no printing path can skip it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TextIO

import orjson

from ..codec import dump_yaml

MAX_CELL = 60
_SHORT = {0x08: "\\b", 0x0C: "\\f", 0x0D: "\\r"}
_ESCAPES = {code: _SHORT.get(code, f"\\u{code:04x}")
            for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if code not in (0x09, 0x0A)}


def printable(text: str) -> str:
    """``text`` with every control character but tab and newline replaced by a visible escape."""
    return text.translate(_ESCAPES)


class EscapingStream:
    """A text stream writing :func:`printable` text to another (see the module docstring)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def escaped_output() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` through :class:`EscapingStream` until the block ends."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapingStream(saved[0]), EscapingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def to_json(data: Any, *, pretty: bool = True) -> str:
    """One JSON document (indented by default), as the server sent it; DEL and C1 controls, which orjson
    leaves raw, as ``\\u`` escapes (the same string to a JSON reader)."""
    return printable(orjson.dumps(data, option=orjson.OPT_INDENT_2 if pretty else 0).decode())


def iso_time(epoch: float | int | None) -> str:
    """``2024-05-01T12:00:00Z`` (UTC, seconds), or ``-`` for an unknown time."""
    if not epoch:
        return "-"
    moment = dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: Any) -> str:
    """One table cell: control characters escaped, then single line, shortened with an ellipsis when long,
    ``-`` when empty."""
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(printable(text).split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces; the last column is not padded."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v.ljust(w) for v, w in zip(values[:-1], widths[:-1], strict=True)]
        return "  ".join([*padded, values[-1]]).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])


def namespaces_table(items: Sequence[Mapping[str, Any]]) -> str:
    """``NS KIND REVISION VERSION PRINCIPAL MESSAGE``: PRINCIPAL is the token that wrote the release
    (``-`` for releases older than principals); the body's ``author`` claim is only in ``--json``."""
    rows = [[i["ns"], i.get("kind"), i.get("revision"), i.get("version"), i.get("principal"), i.get("message")]
            for i in items]
    return table(["NS", "KIND", "REVISION", "VERSION", "PRINCIPAL", "MESSAGE"], rows)


def op_label(entry: Mapping[str, Any]) -> str:
    """``push``, ``delete``, ``rollback from R``, ``canary_start 10%`` / ``canary_update zone=az1,50%`` (the
    target) or ``promote canary R`` (the canary's start)."""
    op = str(entry.get("op", ""))
    if op == "rollback" and entry.get("from_revision") is not None:
        return f"rollback from {entry['from_revision']}"
    canary = entry.get("canary")
    if op in ("canary_start", "canary_update") and isinstance(canary, Mapping):
        return f"{op} {target_text(canary.get('target'))}"
    if op == "promote" and entry.get("from_canary") is not None:
        return f"promote canary {entry['from_canary']}"
    return op


def target_text(target: Any) -> str:
    """A canary's target in the CLI's SELECTOR form (``zone=az1,id:web-1,10%``)."""
    if not isinstance(target, Mapping):
        return "?"
    labels = target.get("labels")
    terms = [f"{k}={v}" for k, v in sorted(labels.items())] if isinstance(labels, Mapping) else []
    terms += [f"id:{i}" for i in target.get("instances") or []]
    terms += [f"{target['percent']}%"] if target.get("percent") is not None else []
    return ",".join(terms) or "every instance"


def history_table(entries: Sequence[Mapping[str, Any]]) -> str:
    """``REVISION VERSION OP PRINCIPAL TRACE TIME MESSAGE``; TRACE is the write's trace id, to grep logs for."""
    rows = [[e.get("revision"), e.get("version"), op_label(e), e.get("principal"), e.get("trace_id"),
             iso_time(e.get("time")), e.get("message")] for e in entries]
    return table(["REVISION", "VERSION", "OP", "PRINCIPAL", "TRACE", "TIME", "MESSAGE"], rows)


def release_header(release: Mapping[str, Any]) -> str:
    """``# NS revision R version V kind K`` (plus ``op delete`` for a deletion)."""
    head = (f"# {release.get('ns')} revision {release.get('revision')} version {release.get('version')} "
            f"kind {release.get('kind')}")
    if release.get("op") == "delete":
        head += " op delete (no document)"
    return head


def document(doc: Any, fmt: str) -> str:
    """The document alone, as YAML (block style, document key order) or indented JSON."""
    if doc is None:
        return ""
    if fmt == "json":
        return to_json(doc) + "\n"
    return dump_yaml(doc)


def change_line(data: Mapping[str, Any]) -> str:
    """``REVISION NS OP (version V) message`` for one watch ``change`` event."""
    line = f"{data.get('revision')} {data.get('ns')} {op_label(data)} (version {data.get('version')})"
    message = " ".join(printable(str(data.get("message") or "")).split())
    return f"{line} {message}" if message else line


def reset_line(data: Mapping[str, Any]) -> str:
    namespaces = data.get("namespaces") or {}
    return f"reset at {data.get('revision')}: {len(namespaces)} namespaces"


def progress_line(data: Mapping[str, Any]) -> str:
    line = f"progress at {data.get('revision')}"
    return f"{line} (stale {data.get('stale_seconds')}s)" if data.get("stale") else line


def route_line(decision: Mapping[str, Any]) -> str:
    return f"cluster {decision.get('cluster')} (rule {decision.get('rule_id')}, revision {decision.get('revision')})"
