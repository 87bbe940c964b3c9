"""The files ``configcenter apply`` publishes: discovery, parsing, and the namespace of each file.

Rules (also in ``docs/cli.md``):

* A PATH that is a file is read as is; a directory is searched recursively for ``*.yaml``,
  ``*.yml`` and ``*.json`` (files and directories whose name starts with ``.`` are skipped).
* Every file must be an envelope (a mapping with ``doc``; ``kind``, ``namespace``, ``revision``,
  ``message``, ``author`` optional: exactly what ``get -o yaml`` writes).
* Its namespace is the envelope's ``namespace``; without one, a file found in a directory is
  named by its path relative to that directory without the extension
  (``config/orders/config.yaml`` under ``config/`` -> ``orders/config``), and a file given
  directly must say its namespace.  Two files for one namespace are an error.
* ``kind`` may be left out for a namespace that exists (its kind is kept).

Every problem is collected (not just the first), so one run reports every bad file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigCenterError
from ..model import KINDS, validate_namespace
from .client import CliError
from .envelope import ENVELOPE_KEYS, is_envelope, parse_file

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Source:
    """One file to publish: its namespace, kind (None: keep the current one), document and message."""

    path: Path
    ns: str
    kind: str | None
    doc: dict[str, Any]
    message: str | None = None
    author: str | None = None


def discover(paths: list[str]) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """(file, the directory it was found in or None) for every PATH, in a stable order; and errors."""
    found: list[tuple[Path, Path | None]] = []
    errors: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            found += [(f, path) for f in files]
        elif path.is_file():
            found.append((path, None))
        else:
            errors.append(f"{raw}: no such file or directory")
    return found, errors


def namespace_of(data: dict[str, Any], path: Path, base: Path | None) -> str:
    """The envelope's ``namespace``, else the path relative to ``base`` without its extension."""
    named = data.get("namespace")
    if named is None:
        if base is None:
            raise CliError(f"{path}: no 'namespace' in the envelope (needed for a file given directly)")
        named = path.relative_to(base).with_suffix("").as_posix()
    if not isinstance(named, str):
        raise CliError(f"{path}: namespace must be a string, got {named!r}")
    try:
        return validate_namespace(named)
    except ConfigCenterError as exc:
        raise CliError(f"{path}: {exc.message}") from exc


def load_source(path: Path, base: Path | None) -> Source:
    """Parse and check one file; ``CliError`` naming the file on any problem."""
    data = parse_file(path)
    if not is_envelope(data):
        keys = sorted(map(str, data)) if isinstance(data, dict) else []
        extra = sorted(set(keys) - ENVELOPE_KEYS)
        why = f"unknown key(s) {', '.join(extra)}" if extra else "no 'doc' key"
        raise CliError(f"{path}: not an envelope {{namespace?, kind, doc, message?}}: {why}")
    ns = namespace_of(data, path, base)
    kind, doc = data.get("kind"), data["doc"]
    if kind is not None and kind not in KINDS:
        raise CliError(f"{path}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(doc, dict):
        raise CliError(f"{path}: doc must be a mapping")
    for name in ("message", "author"):
        if not isinstance(data.get(name, ""), str):
            raise CliError(f"{path}: {name} must be a string")
    return Source(path, ns, kind, doc, data.get("message"), data.get("author"))


def load_sources(paths: list[str]) -> tuple[list[Source], list[str]]:
    """Every file under ``paths`` parsed, sorted by namespace; and every problem found."""
    files, errors = discover(paths)
    sources: dict[str, Source] = {}
    for path, base in files:
        try:
            source = load_source(path, base)
        except CliError as exc:
            errors.append(exc.message)
            continue
        if source.ns in sources:
            errors.append(f"{path}: namespace {source.ns} is also in {sources[source.ns].path}")
            continue
        sources[source.ns] = source
    if not files and not errors:
        errors.append(f"no *.yaml, *.yml or *.json files in {' '.join(paths)}")
    return [sources[ns] for ns in sorted(sources)], errors
