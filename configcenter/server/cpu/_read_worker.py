"""The read lane's worker process: parses route-evaluation bodies and computes diffs, at low priority.

Anonymous callers reach these jobs, and in the server's own process their CPU time and the GIL
were taken from the event loop that serves pushes and streams (push p99 3-16x idle during the
attacks of ``bench/bench_hostile.py``).  Here they run in a separate interpreter (started fresh:
``python -c``, never a fork of the threaded server) at ``nice 19``, so the kernel runs the
server's loop first and the loop never waits for a reader's GIL.

This module is the worker's whole world, kept light (codec, diffing, errors, orjson: ~18 MB RSS):
``_read_pool.py`` starts ``python -c BOOT <fd> <parent pid> <max address space> <sys.path>``, and the
worker answers jobs on that socket until it reads end-of-file or the server dies (``PR_SET_PDEATHSIG``
kills it then: no orphan outlives the server).

The protocol is one frame per message, an 8-byte big-endian length then a pickle:

* job: ``(fn, args, kwargs)``; ``fn`` is a module-level function (pickled by reference).  An
  argument that is a ``DocArg`` is a document kept in this process's ``DOC_CACHE`` entries LRU
  keyed by ``(epoch, ns, revision)``: sent as JSON bytes once, referred to by key afterwards;
* reply: ``("ok", value, rss)``, ``("error", cls, args, state, rss)`` for a ``ConfigCenterError``
  (rebuilt as the same class, status and details in the server), ``("miss", key, rss)`` when a
  referred document is not (any longer) cached, ``("crash", text, rss)`` for anything else.
  ``rss`` is this process's resident size after the job: the server retires a worker past its limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Hashable
from typing import Any

import orjson
from cachetools import LRUCache

from configcenter.codec import ParseLimits, parse_body
from configcenter.diffing import encoded_diff
from configcenter.errors import ConfigCenterError, InvalidBodyError

HEADER = struct.Struct(">Q")
MAX_FRAME = 256 << 20  # a job or reply larger than this is a bug, not a request: the connection is dropped
DOC_CACHE = 4  # documents kept per worker (two diffs' worth); the server mirrors the same LRU per worker
NICE = 19
BOOT = "import sys, json; sys.path[:0] = json.loads(sys.argv[4]); " \
       "from configcenter.server.cpu._read_worker import main; main(sys.argv[1:4])"


class DocArg:
    """A document argument of a job: ``data`` (its JSON) when the worker may not have it, else None."""

    __slots__ = ("data", "key")

    def __init__(self, key: Hashable, data: bytes | None) -> None:
        self.key, self.data = key, data

    def __reduce__(self) -> tuple[Any, ...]:
        return DocArg, (self.key, self.data)


class _Miss(Exception):
    def __init__(self, key: Hashable) -> None:
        super().__init__(key)
        self.key = key


# --------------------------------------------------------------------------- the jobs


def route_headers(body: bytes, content_type: str, limits: ParseLimits, names: frozenset[str] | None
                  ) -> dict[str, str]:
    """A route-evaluation body's ``headers`` (``{name: string}``; 400 otherwise).  With ``names`` (the
    lower-cased header names the table reads; empty: no table) only those are kept, so what crosses back
    to the server is small whatever the body holds; None keeps all."""
    parsed = parse_body(body, content_type, limits)
    headers = parsed.get("headers") if isinstance(parsed, dict) else None
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise InvalidBodyError("body must be {headers: {name: value, ...}} with string values")
    return headers if names is None else {k: v for k, v in headers.items() if k.lower() in names}


def diff_body(ns: str, old: Any, new: Any, revisions: tuple[int, int]) -> bytes:
    """The encoded diff answer (``diffing.encoded_diff``: bounded entries, paths and patch)."""
    before, after = revisions
    return encoded_diff(old, new, f"{ns}@{before}", f"{ns}@{after}", {"ns": ns, "from": before, "to": after})


# --------------------------------------------------------------------------- framing (both sides)


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at end-of-file (the server closed its end or died)."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buf)


# --------------------------------------------------------------------------- the worker process


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def handle(job: bytes, docs: LRUCache[Hashable, Any]) -> bytes:
    """One job's reply frame payload; never raises (a reply that cannot be pickled is a crash)."""
    try:
        fn, args, kwargs = pickle.loads(job)
        resolved = [_resolve(arg, docs) for arg in args]
        reply: tuple[Any, ...] = ("ok", fn(*resolved, **kwargs))
    except _Miss as exc:
        docs.clear()
        reply = ("miss", exc.key)
    except ConfigCenterError as exc:
        reply = ("error", type(exc), exc.args, dict(exc.__dict__))
    except Exception as exc:  # a bug, MemoryError at the address-space cap, ...: the server answers 503
        docs.clear()
        traceback.print_exc(file=sys.stderr)
        reply = ("crash", f"{type(exc).__name__}: {exc}"[:500])
    try:
        return pickle.dumps((*reply, rss()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return pickle.dumps(("crash", f"reply not picklable: {type(exc).__name__}", rss()))


def _resolve(arg: Any, docs: LRUCache[Hashable, Any]) -> Any:
    if not isinstance(arg, DocArg):
        return arg
    if arg.data is None:
        if arg.key not in docs:
            raise _Miss(arg.key)
        return docs[arg.key]  # a hit refreshes its place, as the server's mirror of this cache does
    docs[arg.key] = doc = orjson.loads(arg.data)
    return doc


def serve(sock: socket.socket) -> None:
    """Answer jobs until end-of-file."""
    docs: LRUCache[Hashable, Any] = LRUCache(maxsize=DOC_CACHE)
    while True:
        head = recv_exactly(sock, HEADER.size)
        size = HEADER.unpack(head)[0] if head is not None else 0
        job = recv_exactly(sock, size) if head is not None and 0 < size <= MAX_FRAME else None
        if job is None:
            return
        sock.sendall(frame(handle(job, docs)))


def main(argv: list[str]) -> None:
    """The worker's entry point (``BOOT``): ``<socket fd> <server pid> <address-space cap in bytes>``."""
    fd, parent, max_address_space = (int(a) for a in argv)
    _die_with(parent)
    os.nice(NICE)  # the server's event loop first: a reader's job runs on what CPU is left
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the server, which stops us
    if max_address_space > 0:  # the backstop of every job's own bounds: MemoryError (503), not the OOM killer
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (max_address_space, max_address_space))
    with socket.socket(fileno=fd) as sock, contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(sock)


def _die_with(parent: int) -> None:
    """SIGKILL when the server dies (Linux ``PR_SET_PDEATHSIG``); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)

