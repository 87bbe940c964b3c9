"""What every consumer in the fault suite records, and how: one JSON object per line.

Shared by the harness (``chaos.*``) and the SDK driver process (``sdk_driver.py``,
which imports this file from its own directory), so it depends on the standard
library only.

Record kinds (field ``k``):

* ``conn``: a (re)connection attempt: ``url``, ``since`` (the resume id sent, or None);
* ``change`` / ``reset`` / ``progress`` / ``invalid`` / ``malformed``: one SSE frame
  as received: ``url``, ``id`` (verbatim), ``pos`` (the revision in the id),
  and for changes ``ns``, ``rev``, ``prev``, ``op``, ``m`` (the document's marker);
  for resets ``rev`` and ``ns`` = ``{ns: [revision, marker]}``;
* ``cb``: an SDK ``on_change`` call (``ns``, ``rev``, ``m``; ``m`` None = deleted);
* ``fetch``: the SDK re-read a namespace over HTTP (gap handling);
* ``start`` / ``started`` / ``status`` / ``final`` / ``closed``: SDK process life cycle.

Ids are parsed generically: the revision is the part after the last ``:``
(``"42"`` and ``"<cluster>:42"`` both mean revision 42), and a resuming consumer
sends the last id back verbatim, as a browser's ``EventSource`` does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO


def revision_of_id(event_id: str | None) -> int | None:
    """The revision an SSE id names (``"42"`` or ``"cluster:42"``), or None."""
    if not event_id:
        return None
    tail = event_id.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else None


def marker(doc: Any) -> str | None:
    """The write id a document carries: ``doc["w"]`` (config) or the default cluster (route tables)."""
    if not isinstance(doc, dict):
        return None
    if "w" in doc:
        return str(doc["w"])
    default = doc.get("default")
    if isinstance(default, dict) and "cluster" in default:
        return str(default["cluster"])
    return None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def frame_record(event: str, event_id: str | None, data_text: str, url: str) -> dict[str, Any]:
    """The compact record of one SSE frame (documents reduced to their marker)."""
    pos = revision_of_id(event_id)
    rec: dict[str, Any] = {"k": event, "url": url, "id": event_id, "pos": pos}
    try:
        data = json.loads(data_text)
    except ValueError:
        return {**rec, "k": "malformed", "raw": data_text[:200]}
    if not isinstance(data, dict):
        return {**rec, "k": "malformed", "raw": data_text[:200]}
    if event == "change":
        rec.update(ns=data.get("ns"), rev=_int_or_none(data.get("revision")),
                   prev=_int_or_none(data.get("prev_revision")), op=data.get("op"), m=marker(data.get("doc")))
    elif event == "reset":
        namespaces = data.get("namespaces") if isinstance(data.get("namespaces"), dict) else {}
        rec.update(rev=_int_or_none(data.get("revision")), reason=data.get("reason"),
                   ns={ns: [_int_or_none(r.get("revision")), marker(r.get("doc"))]
                       for ns, r in namespaces.items() if isinstance(r, dict)})
    elif event == "progress":
        rec.update(rev=_int_or_none(data.get("revision")), stale=data.get("stale"))
    elif event == "invalid":
        rec.update(ns=data.get("ns"), rev=_int_or_none(data.get("revision")), error=str(data.get("error"))[:200])
    return rec


class SSEParser:
    """Incremental ``text/event-stream`` parser: ``feed(bytes)`` -> completed ``(event, id, data)``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[tuple[str, str | None, str]]:
        *lines, self._buffer = (self._buffer + chunk).split(b"\n")
        out: list[tuple[str, str | None, str]] = []
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line:
                if self._data:
                    out.append((self._event or "message", self._id, "\n".join(self._data)))
                self._event, self._data, self._id = "", [], None
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
        return out


class JsonlWriter:
    """Append-only, line-buffered JSONL (a SIGKILL loses at most the line being written)."""

    def __init__(self, path: str | Path) -> None:
        self._file: TextIO = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write("\n")  # ends a line torn by an earlier SIGKILL, so this run's first record parses

    def write(self, **record: Any) -> None:
        record["t"] = round(time.time(), 4)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every complete record of a JSONL file (a torn last line, from a SIGKILL, is skipped)."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
