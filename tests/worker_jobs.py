"""Jobs for the read lane's worker processes in tests: module-level functions of a module the worker
can import (``tests/`` is on ``sys.path``, which the pool hands to its workers)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from configcenter.errors import ConfigCenterError, InvalidBodyError, TooManyRequestsError

_KEPT: list[bytearray] = []


def wait_for(path: str, timeout: float = 30.0) -> int:
    """Block until ``path`` exists (the test's way to release a job); the worker's pid."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def started_then_wait_for(started: str, path: str, timeout: float = 30.0) -> int:
    """Create ``started`` (the test's signal that the worker runs the job), then ``wait_for(path)``."""
    Path(started).touch()
    return wait_for(path, timeout)


def pid() -> int:
    return os.getpid()


def niceness() -> int:
    return os.nice(0)


def fail(kind: str) -> None:
    if kind == "invalid_body":
        raise InvalidBodyError("body must be a mapping", line=3, column=7)
    if kind == "too_many":
        raise TooManyRequestsError("slow down", retry_after=7, lane="x")
    if kind == "base":
        raise ConfigCenterError("plain")
    raise RuntimeError("a bug in a job")


def allocate(size: int) -> int:
    """Allocate ``size`` bytes at once (past the address-space cap: MemoryError)."""
    return len(bytearray(size))


def keep(size: int) -> int:
    """Allocate and keep ``size`` bytes (touched, so resident): the worker's RSS grows; its pid."""
    _KEPT.append(bytearray(b"x" * size))
    return os.getpid()


def echo(*args: object) -> tuple[object, ...]:
    return args
