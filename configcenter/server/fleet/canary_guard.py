"""Abort on reject: a canary started with ``abort_on_reject`` ends itself when a member rejects it.

Every replica runs one :class:`CanaryGuard` (``Runtime`` owns it).  The registry tells it of every
report it stores (a rejection is a change, so it is always written: the replica that received it
acts at once) and of every fleet listing (each heartbeat: the backstop when that replica died or
etcd refused the abort).  For each namespace whose current release (the mirror's) has such a canary,
:func:`canary_view.rejection` decides; the abort is a normal ``canary_abort`` write, guarded by the
record's revision and bound to that canary's ``started`` (``expect_started``): when several replicas
see the rejection, one write wins and the others find the canary over (409), which is fine.

Bounded: at most one abort in flight per (namespace, canary); an abort that failed (etcd down) is
forgotten so the next listing retries it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from configcenter.errors import ConfigCenterError
from configcenter.model import Release

from .canary_view import rejection

log = logging.getLogger("configcenter.canary")
#: ``abort(ns, started, message)``: the ``canary_abort`` write (``Store.canary.abort`` with ``expect_started``)
Abort = Callable[[str, int, str], Awaitable[Any]]


class CanaryGuard:
    """See the module docstring; ``releases()`` is the mirror's current releases."""

    def __init__(self, releases: Callable[[], Mapping[str, Release]], abort: Abort) -> None:
        self._releases = releases
        self._abort = abort
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self.aborted = 0  # aborts this replica wrote (tests, metrics)

    def watching(self) -> list[Release]:
        """The current releases whose canary aborts on reject."""
        return [r for r in self._releases().values() if r.canary is not None and r.canary.get("abort_on_reject")]

    def reports(self, instances: Iterable[Mapping[str, Any]]) -> None:
        """Check ``instances`` (stored reports or fleet rows) against every watched canary."""
        watched = self.watching()
        if not watched:
            return
        for instance in instances:
            for release in watched:
                why = rejection(instance, release)
                started = int(release.canary["started"]) if release.canary else 0
                if why is not None and (release.ns, started) not in self._tasks:
                    task = asyncio.get_running_loop().create_task(self._run(release.ns, started, why))
                    self._tasks[(release.ns, started)] = task

    async def _run(self, ns: str, started: int, why: str) -> None:
        try:
            await self._abort(ns, started, why)
            self.aborted += 1
            log.warning("canary of %s started at %d: %s", ns, started, why)
        except ConfigCenterError as exc:  # over already (another replica, a promote), or etcd refused
            log.info("canary of %s started at %d not aborted here: %s", ns, started, exc.message)
        finally:
            self._tasks.pop((ns, started), None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
