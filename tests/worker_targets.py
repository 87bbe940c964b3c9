"""Worker entry points for the supervisor tests (importable by name: spawned processes import them;
kept light, so a crash loop is quick)."""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection

from configcenter.server.settings import Settings
from configcenter.server.workers import WorkerSpec


def crash_at_start(settings: Settings, spec: WorkerSpec, conn: Connection) -> None:
    """A worker that dies before it listens, every time (exit status 3)."""
    print(f"worker {spec.index}: crashing at start on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
