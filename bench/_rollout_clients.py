"""SDK processes for bench_rollout: ``count`` real ``ConfigClient``s each, reporting to the server.

Each process starts its clients (in batches), reports ``ready`` once every client's first report
was accepted, then records for every revision the ``time.monotonic()`` (system-wide on Linux, so
comparable across processes) at which each client applied it (its ``on_change``: the change frame
read and applied), until told to stop; the records go back over the pipe and the clients close.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from configcenter_sdk import ConfigClient

Inbox = dict[int, list[float]]
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

    def applied(_ns: str, _doc: Any, revision: int) -> None:
        inbox.setdefault(int(revision), []).append(time.monotonic())

    clients: list[ConfigClient] = []
    for start in range(first, first + count, _BATCH):
        batch = [ConfigClient([url], [ns], service=f"svc{i % 5}", labels={"bench": "rollout"}, start_timeout=60,
                              idle_timeout=60, connect_timeout=30)
                 for i in range(start, min(start + _BATCH, first + count))]
        for client in batch:
            client.on_change(ns, applied)
        await asyncio.gather(*(c.start() for c in batch))
        clients += batch
    while not all(c.reports_sent for c in clients):
        await asyncio.sleep(0.05)
    pipe.send("ready")
    while True:
        message = await asyncio.to_thread(pipe.recv)
        if message == "stop":
            break
    pipe.send(inbox)
    await asyncio.gather(*(c.close() for c in clients))
