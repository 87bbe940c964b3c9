"""On-disk last-known-good snapshot, one file per namespace.

A service that starts while every configcenter server is unreachable loads
its namespaces from here and runs in fallback mode. Hence the rules:

* **Atomic writes.** A snapshot is encoded completely in memory first, then
  written to a temp file in the same directory, flushed, ``fsync``-ed,
  ``os.replace``-d onto its final name, and the directory is ``fsync``-ed.
  A reader sees the old file or the new one, never a mix; a failed write
  leaves the previous snapshot intact and no temp file behind.
* **Verified reads.** The file carries a SHA-256 over the canonical payload
  (see :func:`encode_snapshot`). A file that is not JSON, has another format
  marker, fails the checksum, has fields of the wrong type, or holds another
  namespace ("foreign file") is refused. :meth:`SnapshotStore.load` logs a
  WARNING naming the file and the reason and returns None: a bad snapshot
  must never stop a service from starting. :meth:`SnapshotStore.load_strict`
  raises :class:`~configcenter_sdk.errors.SnapshotError` instead.
* **No rollback.** Revisions are etcd's global revision, so larger is newer.
  ``save`` never writes an older revision over a newer, valid snapshot; it
  reads the file's header (first bytes) to decide, and only on that rare
  refusal path verifies the whole file (an unusable newer file is replaced).
  An equal revision is rewritten (refreshes ``saved_at``). The check and the
  write are serialised per store by a lock; separate processes must not
  share one snapshot directory. The one exception is ``replace_newer=True``,
  used after the cluster went back (restore) or changed: then the older
  revision is the truth.
* **Resume marker.** ``_resume.json`` (a name no namespace file can have:
  namespaces start with ``[a-z0-9]``) holds where the subscription stood,
  written atomically like a snapshot; its content is ``_persist.ResumeMarker``'s business.

File name mapping (reversible, see :func:`filename_for`): namespaces are 1-4
segments of ``[a-z0-9][a-z0-9._-]{0,62}`` joined by ``/``; ``~`` cannot occur
in a segment, so ``/`` becomes ``~`` and ``.json`` is appended:
``payment/routes`` -> ``payment~routes.json``. Only a name longer than 255
bytes (possible with four long segments) is shortened to its first 200
characters + ``~~`` + 40 hex digits of SHA-256(ns) + ``.json``; ``~~`` never
occurs in an unshortened name, and the file's ``ns`` field names it. Temp
files start with ``.`` which no namespace file does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .cache import _KINDS, CachedDoc
from .errors import SnapshotError

__all__ = [
    "FORMAT",
    "SnapshotStore",
    "encode_snapshot",
    "filename_for",
    "namespace_for",
    "validate_namespace",
]

FORMAT = "configcenter-snapshot/1"

log = logging.getLogger("configcenter_sdk.snapshot")

_SEGMENT = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAMESPACE_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,3}}")
_SUFFIX = ".json"
_MAX_NAME = 255
_SHORT_PREFIX = 200
_HASH_MARK = "~~"
_HEADER_BYTES = 1024
RESUME_FILE = "_resume.json"
_HEADER_RE = re.compile(rb'\A\{"format":"configcenter-snapshot/1","ns":"[a-z0-9._/-]+","revision":(\d+),')


def validate_namespace(ns: str) -> str:
    """Return ``ns`` if it is a valid namespace name, else raise ``ValueError``."""
    if not isinstance(ns, str) or _NAMESPACE_RE.fullmatch(ns) is None:
        raise ValueError(f"invalid namespace {ns!r}: expected 1-4 '/'-joined segments of {_SEGMENT}")
    return ns


def filename_for(ns: str) -> str:
    """File name of the snapshot of ``ns`` (see the module docstring for the mapping)."""
    name = validate_namespace(ns).replace("/", "~") + _SUFFIX
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(ns.encode()).hexdigest()[:40]
    return name[:_SHORT_PREFIX] + _HASH_MARK + digest + _SUFFIX


def namespace_for(filename: str) -> str | None:
    """Inverse of :func:`filename_for`; None for a shortened name or a non-snapshot file."""
    if not filename.endswith(_SUFFIX) or _HASH_MARK in filename:
        return None
    ns = filename[: -len(_SUFFIX)].replace("~", "/")
    return ns if _NAMESPACE_RE.fullmatch(ns) else None


def _encode_default(obj: Any) -> Any:
    """orjson fallback: encode any ``Mapping`` (e.g. ``MappingProxyType``) as an object."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"type {type(obj).__name__} is not JSON serializable")


def _checksum(payload: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical (orjson, sorted keys) encoding of ``payload``."""
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=_encode_default)
    return hashlib.sha256(canonical).hexdigest()


def encode_snapshot(entry: CachedDoc, saved_at: float) -> bytes:
    """Encode ``entry`` as snapshot file content.

    The checksum covers the canonical encoding of every field except
    ``sha256`` itself. The file is written header-first (``format``, ``ns``,
    ``revision`` ... then ``doc``) so ``save`` can read the revision cheaply.
    A canary release also keeps ``track`` and ``record`` (the record as received, canary included),
    so a restarted client decides its track again (``_track``); ``doc`` is what the instance ran.
    Raises ``SnapshotError`` if the document is not JSON-encodable.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "ns": entry.ns,
        "revision": entry.revision,
        "kind": entry.kind,
        "saved_at": saved_at,
    }
    if entry.record is not None:
        payload.update(track=entry.track, record=entry.record)
    payload["doc"] = entry.doc
    try:
        digest = _checksum(payload)
        header = {key: value for key, value in payload.items() if key != "doc"}
        return orjson.dumps({**header, "sha256": digest, "doc": entry.doc}, default=_encode_default)
    except orjson.JSONEncodeError as exc:
        raise SnapshotError(f"cannot encode snapshot of namespace {entry.ns!r}: {exc}") from exc


def _fail(path: Path, reason: str) -> NoReturn:
    raise SnapshotError(f"snapshot file {path}: {reason}")


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    """Decode and authenticate the file: JSON object, format marker, checksum."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        _fail(path, "not valid JSON (truncated or garbled)")
    if not isinstance(obj, dict):
        _fail(path, "not a JSON object")
    if obj.get("format") != FORMAT:
        _fail(path, f"wrong format marker {obj.get('format')!r}, expected {FORMAT!r}")
    claimed = obj.pop("sha256", None)
    if not isinstance(claimed, str):
        _fail(path, "missing sha256 checksum")
    try:
        actual = _checksum(obj)
    except orjson.JSONEncodeError:
        actual = ""
    if actual != claimed:
        _fail(path, "checksum mismatch (file altered or corrupted)")
    return obj


def _check_fields(path: Path, obj: Mapping[str, Any], ns: str) -> None:
    """Type-check an authenticated payload and make sure it belongs to ``ns``."""
    revision, saved_at = obj.get("revision"), obj.get("saved_at")
    if not isinstance(obj.get("ns"), str):
        _fail(path, "invalid field 'ns': not a string")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        _fail(path, f"invalid field 'revision': {revision!r}")
    if obj.get("kind") not in _KINDS:
        _fail(path, f"invalid field 'kind': {obj.get('kind')!r}")
    if not isinstance(obj.get("doc"), dict):
        _fail(path, "invalid field 'doc': not a JSON object")
    if isinstance(saved_at, bool) or not isinstance(saved_at, int | float) or not math.isfinite(saved_at):
        _fail(path, f"invalid field 'saved_at': {saved_at!r}")
    if obj["ns"] != ns:
        _fail(path, f"foreign file: holds namespace {obj['ns']!r}, expected {ns!r}")
    _check_record(path, obj)


def _check_record(path: Path, obj: Mapping[str, Any]) -> None:
    """A canary release's ``track`` and ``record`` (both or neither); the canary itself is read later."""
    record = obj.get("record")
    if record is None and "track" not in obj:
        return
    if obj.get("track") not in ("base", "canary"):
        _fail(path, f"invalid field 'track': {obj.get('track')!r}")
    if (not isinstance(record, dict) or record.get("kind") not in _KINDS or not isinstance(record.get("doc"), dict)
            or not isinstance(record.get("canary"), dict)):
        _fail(path, "invalid field 'record': not a release record with kind, doc and canary")


class SnapshotStore:
    """Directory of per-namespace snapshot files (see the module docstring).

    ``clock`` must be the clock of the ``FallbackCache`` the entries go into
    (monotonic by default); ``wall_clock`` stamps ``saved_at``. A loaded
    entry's age is ``wall_clock() - saved_at`` (never negative) and its
    ``stored_at`` is ``clock() - age``, so the cache reports the real age.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._dir = Path(directory)
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        try:
            self._dir.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass  # an existing directory keeps its permissions
        else:
            os.chmod(self._dir, 0o700)  # mkdir's mode is filtered by the umask

    @property
    def directory(self) -> Path:
        """The snapshot directory."""
        return self._dir

    def path_for(self, ns: str) -> Path:
        """Path of the snapshot file of ``ns``; ``ValueError`` for an invalid name."""
        return self._dir / filename_for(ns)

    def save(self, entry: CachedDoc, *, replace_newer: bool = False) -> Path:
        """Atomically write ``entry`` as the snapshot of ``entry.ns``; return its path.

        Skips the write (returning the same path) if the file holds a newer,
        valid revision, unless ``replace_newer``. Raises ``SnapshotError`` if the
        document cannot be encoded or the file cannot be written; the previous
        snapshot is then left intact.
        """
        path = self.path_for(entry.ns)
        data = encode_snapshot(entry, self._wall_clock())
        with self._lock:
            if not replace_newer and self._newer_on_disk(path, entry):
                log.debug("not saving %s revision %d: %s holds a newer one", entry.ns, entry.revision, path)
                return path
            try:
                self._write_atomically(path, data)
            except OSError as exc:
                raise SnapshotError(f"cannot write snapshot file {path}: {exc}") from exc
        return path

    def load_strict(self, ns: str) -> CachedDoc | None:
        """Load the snapshot of ``ns``: None if there is none, ``SnapshotError`` if unusable.

        The returned entry has ``source="disk"`` and an age reflecting ``saved_at``.
        Raises ``ValueError`` for an invalid namespace name.
        """
        path = self.path_for(ns)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _fail(path, f"unreadable ({exc.strerror or exc})")
        obj = _parse(path, raw)
        _check_fields(path, obj, ns)
        age = max(0.0, self._wall_clock() - float(obj["saved_at"]))
        return CachedDoc(
            ns=ns,
            revision=obj["revision"],
            kind=obj["kind"],
            doc=obj["doc"],
            stored_at=self._clock() - age,
            source="disk",
            track=obj.get("track", "base"),
            record=obj.get("record"),
        )

    def load(self, ns: str) -> CachedDoc | None:
        """Like :meth:`load_strict` but never raises: a missing, unusable or
        invalidly named snapshot gives None, the latter two with a WARNING."""
        try:
            return self.load_strict(ns)
        except (SnapshotError, ValueError) as exc:
            log.warning("ignoring snapshot of namespace %r: %s", ns, exc)
            return None

    def load_all(self, namespaces: Iterable[str]) -> dict[str, CachedDoc]:
        """Load every given namespace that has a usable snapshot (others are skipped, see ``load``)."""
        loaded: dict[str, CachedDoc] = {}
        for ns in namespaces:
            entry = self.load(ns)
            if entry is not None:
                loaded[ns] = entry
        return loaded

    def remove(self, ns: str) -> bool:
        """Delete the snapshot of ``ns``; returns whether one existed. ``SnapshotError`` on I/O errors."""
        path = self.path_for(ns)
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise SnapshotError(f"cannot remove snapshot file {path}: {exc}") from exc
        return True

    def write_resume(self, data: bytes) -> None:
        """Atomically replace the resume marker file with ``data``; ``SnapshotError`` on I/O errors."""
        with self._lock:
            try:
                self._write_atomically(self._dir / RESUME_FILE, data)
            except OSError as exc:
                raise SnapshotError(f"cannot write {self._dir / RESUME_FILE}: {exc}") from exc

    def read_resume(self) -> bytes | None:
        """The resume marker file's bytes, None if there is none or it cannot be read."""
        try:
            return (self._dir / RESUME_FILE).read_bytes()
        except OSError:
            return None

    def remove_resume(self) -> None:
        """Delete the resume marker file (if any); ``SnapshotError`` on I/O errors."""
        with self._lock:
            try:
                (self._dir / RESUME_FILE).unlink(missing_ok=True)
            except OSError as exc:
                raise SnapshotError(f"cannot remove {self._dir / RESUME_FILE}: {exc}") from exc

    def _newer_on_disk(self, path: Path, entry: CachedDoc) -> bool:
        """Whether ``path`` holds a valid snapshot of a revision newer than ``entry``'s."""
        try:
            with path.open("rb") as fh:
                match = _HEADER_RE.match(fh.read(_HEADER_BYTES))
        except OSError:
            return False
        if match is None or int(match.group(1)) <= entry.revision:
            return False
        try:
            self.load_strict(entry.ns)
        except SnapshotError as exc:
            log.warning("replacing unusable snapshot: %s", exc)
            return False
        return True

    def _write_atomically(self, path: Path, data: bytes) -> None:
        """temp file in the same dir -> write, flush, fsync -> replace -> fsync dir."""
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=self._dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        """Make the rename durable (the directory entry is what changed)."""
        fd = os.open(self._dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
