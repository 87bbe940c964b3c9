"""SDK processes for bench_canary: ``count`` real ``ConfigClient``s each, ids ``bench-<n>`` (so the parent
knows the canary's members), reporting to the server.

Like ``_rollout_clients``: starts the clients in batches, says ``ready`` once each one's first report was
accepted, then records for every adopted revision ``(instance number, doc["v"], time.monotonic())``
(its ``on_change``: the effective document, the candidate on a member) until told to stop, and sends
them back over the pipe.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from configcenter_sdk import ConfigClient

Inbox = dict[int, list[tuple[int, Any, float]]]
_BATCH = 50


def client_process(first: int, count: int, url: str, ns: str, pipe: Connection) -> None:
    logging.basicConfig(level=logging.ERROR)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * count + 256)), hard))
    try:
        asyncio.run(_main(first, count, url, ns, pipe))
    except Exception as exc:  # tell the parent instead of leaving it waiting
        pipe.send(f"failed: {exc!r}")


async def _main(first: int, count: int, url: str, ns: str, pipe: Connection) -> None:
    inbox: Inbox = {}

    def recorder(number: int) -> Any:
        def applied(_ns: str, doc: Any, revision: int) -> None:
            value = doc.get("v") if isinstance(doc, dict) else None
            inbox.setdefault(int(revision), []).append((number, value, time.monotonic()))
        return applied

    clients: list[ConfigClient] = []
    for start in range(first, first + count, _BATCH):
        batch = [ConfigClient([url], [ns], service="bench", instance_id=f"bench-{i}", start_timeout=60,
                              idle_timeout=60, connect_timeout=30)
                 for i in range(start, min(start + _BATCH, first + count))]
        for number, client in zip(range(start, start + len(batch)), batch, strict=True):
            client.on_change(ns, recorder(number))
        await asyncio.gather(*(c.start() for c in batch))
        clients += batch
    while not all(c.reports_sent for c in clients):
        await asyncio.sleep(0.05)
    pipe.send("ready")
    while await asyncio.to_thread(pipe.recv) != "stop":
        pass
    pipe.send(inbox)
    await asyncio.gather(*(c.close() for c in clients))
