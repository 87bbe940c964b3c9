"""Envelopes as files: what ``get -o yaml|json`` writes and ``push`` / ``apply`` read back unchanged.

An envelope is a mapping with a ``doc`` key and no keys but ``namespace``, ``kind``, ``doc``,
``revision``, ``message``, ``author``.  ``namespace`` and ``revision`` say where the document
came from: they are checked (``namespace`` must be the one pushed to) or informational
(``revision``) and never sent to the server, whose push body is ``{kind, doc, message?, author?}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..codec import dump_yaml, parse_json, parse_yaml
from ..errors import InvalidBodyError, PayloadTooLargeError
from . import output as out
from .client import Client, CliError, usage_error

ENVELOPE_KEYS = frozenset({"namespace", "kind", "doc", "revision", "message", "author"})
IDENTITY_KEYS = ("namespace", "revision")


def is_envelope(data: Any) -> bool:
    return isinstance(data, dict) and "doc" in data and set(data) <= ENVELOPE_KEYS


def from_release(release: dict[str, Any]) -> dict[str, Any]:
    """``{namespace, kind, revision, doc}`` of a release (no message: a new push says its own)."""
    return {"namespace": release.get("ns"), "kind": release.get("kind"), "revision": release.get("revision"),
            "doc": release.get("doc")}


def render(release: dict[str, Any], fmt: str) -> str:
    """The envelope of ``release`` as YAML or indented JSON (what ``get -o`` prints)."""
    if release.get("doc") is None:
        raise CliError(f"{release.get('ns')} at revision {release.get('revision')} is a deletion: no document")
    data = from_release(release)
    return out.to_json(data) + "\n" if fmt == "json" else dump_yaml(data)


def strip_identity(data: Any, ns: str, source: str) -> Any:
    """``data`` without ``namespace``/``revision``; exit 2 if its ``namespace`` is not ``ns``."""
    if not is_envelope(data):
        return data
    named = data.get("namespace")
    if named is not None and named != ns:
        raise usage_error(f"{source}: the envelope is for namespace {named!r}, not {ns!r}")
    return {k: v for k, v in data.items() if k not in IDENTITY_KEYS}


async def existing_kind(client: Client, ns: str) -> str | None:
    """The kind of ``ns``'s current release, or None if it does not exist (so ``--kind`` is needed)."""
    try:
        release = await client.call("GET", f"/v1/namespaces/{ns}")
    except CliError as exc:
        if exc.status == 404:
            return None
        raise
    kind = release.get("kind") if isinstance(release, dict) else None
    return kind if isinstance(kind, str) else None


def needs_kind(data: Any) -> bool:
    """Whether a push of ``data`` lacks a kind (a plain document, or an envelope without one)."""
    return not (is_envelope(data) and data.get("kind"))


def parse_file(path: Path, text: bytes | None = None) -> Any:
    """Read (unless ``text`` is given) and parse a file; exit 2 on any problem (``parse_source``)."""
    try:
        raw = path.read_bytes() if text is None else text
    except OSError as exc:
        raise usage_error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_source(str(path), raw)


def parse_source(source: str, raw: bytes) -> Any:
    """Parse YAML (JSON for ``*.json``) locally with the server's limits, so a broken file never
    reaches the server; exit 2 naming ``source`` (and the line and column where known)."""
    try:
        data = parse_json(raw) if source.endswith(".json") else parse_yaml(raw)
    except UnicodeDecodeError as exc:
        raise usage_error(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (InvalidBodyError, PayloadTooLargeError) as exc:
        where = exc.details
        suffix = f" (line {where['line']}, column {where['column']})" if "line" in where else ""
        raise usage_error(f"{source}: {exc.message}{suffix}") from exc
    if data is None:
        raise usage_error(f"{source}: the file is empty")
    return data
