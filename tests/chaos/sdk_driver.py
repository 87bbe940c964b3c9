"""A real SDK client in its own process for the fault suite; records everything to a JSONL file.

Run as a script (``python tests/chaos/sdk_driver.py --out F --cache-dir D --servers U1,U2 --ns app/``);
the harness starts, SIGKILLs and restarts it.  It records (see ``sse_records.py``):

* every ``on_change`` call (public API) as ``cb``;
* every SSE frame the client processes, just before the client applies it, and
  every (re)connection and HTTP re-read.  This is test instrumentation of SDK
  internals, kept as loose as possible: the SDK's ``SSEParser`` (wherever the
  SDK modules imported it) is replaced by a subclass whose ``feed()`` result
  records each event as the client iterates over it, and the ``_subscribe`` /
  ``_fetch`` methods are wrapped on the class.  The checker needs the frames to
  tell a legitimately skipped revision (a ``reset``) from a lost one;
* ``status()`` every 0.2 s, and on SIGTERM a ``final`` record (state of every
  namespace as ``get()`` returns it, with its canary track) before closing the client cleanly.

Its identity (``--instance-id``, ``--label``) is fixed, so the checker knows which canaries it is a
member of; ``--max-regex-program-size`` lets one driver reject route tables the server accepts (a
canary with ``abort_on_reject`` then aborts itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from sse_records import JsonlWriter, frame_record, marker

import configcenter_sdk
from configcenter_sdk import ConfigClient, _sse

STATUS_INTERVAL = 0.2


def status_record(client: ConfigClient) -> dict[str, Any]:
    status = client.status()
    return {
        "mode": status.mode, "server": status.server, "rev": status.revision,
        "reconnects": getattr(status, "reconnects", None), "gaps": getattr(status, "gaps", None),
        "dups": getattr(status, "duplicates", None), "stale": getattr(status, "server_stale", None),
        "ns": {ns: [s.revision, s.source, getattr(s, "track", "base")] for ns, s in status.namespaces.items()},
    }


def resume_id(client: ConfigClient) -> Any:
    """The resume point the client is about to send (new SDK: ``_stream.last_event_id()``)."""
    stream = getattr(client, "_stream", None)
    if stream is not None and hasattr(stream, "last_event_id"):
        return stream.last_event_id()
    return getattr(client, "_revision", None)


class _Current:
    url: str | None = None


def instrument(rec: JsonlWriter) -> None:
    """Patch the SDK (this process only) so that it records what it receives; see the module docstring."""
    original = _sse.SSEParser

    class Recorded(list):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[Any]:
            for event in list.__iter__(self):
                rec.write(**frame_record(event.event, event.id, event.data, _Current.url or ""))
                yield event

    class RecordingParser(original):  # type: ignore[misc, valid-type]
        def feed(self, chunk: bytes) -> Any:
            return Recorded(super().feed(chunk))

    patched = [name for name, module in list(sys.modules.items())
               if name.startswith(configcenter_sdk.__name__) and getattr(module, "SSEParser", None) is original
               and name != _sse.__name__]
    for name in patched:
        sys.modules[name].SSEParser = RecordingParser  # type: ignore[attr-defined]
    if not patched:
        raise SystemExit("sdk_driver: no SDK module uses _sse.SSEParser; update the instrumentation")

    subscribe = getattr(ConfigClient, "_subscribe", None)
    if subscribe is not None:
        async def recording_subscribe(self: ConfigClient, url: str, *args: Any, **kwargs: Any) -> Any:
            _Current.url = url
            rec.write(k="conn", url=url, since=resume_id(self))
            return await subscribe(self, url, *args, **kwargs)

        ConfigClient._subscribe = recording_subscribe  # type: ignore[method-assign]
    fetch = getattr(ConfigClient, "_fetch", None)
    if fetch is not None:
        async def recording_fetch(self: ConfigClient, ns: str, *args: Any, **kwargs: Any) -> Any:
            release = await fetch(self, ns, *args, **kwargs)
            rec.write(k="fetch", ns=ns, rev=getattr(release, "revision", None),
                      m=marker(getattr(release, "doc", None)) if release is not None else None)
            return release

        ConfigClient._fetch = recording_fetch  # type: ignore[method-assign]


async def run(args: argparse.Namespace) -> None:
    rec = JsonlWriter(args.out)
    rec.write(k="start", pid=os.getpid())
    instrument(rec)
    client = ConfigClient(
        args.servers.split(","), args.ns, cache_dir=args.cache_dir, backoff_initial=0.05, backoff_max=0.3,
        idle_timeout=args.idle_timeout, start_timeout=3.0, connect_timeout=1.0,
        instance_id=args.instance_id, labels=dict(label.split("=", 1) for label in args.label),
        max_regex_program_size=args.max_regex_program_size,
    )
    client.on_change(None, lambda ns, doc, rev: rec.write(k="cb", ns=ns, rev=rev, m=marker(doc)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.start()
    rec.write(k="started", **status_record(client))
    while not stop.is_set():
        rec.write(k="status", **status_record(client))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_INTERVAL)
    final = status_record(client)
    state = {ns: [s[0], marker(client.get(ns)), s[2]] for ns, s in final["ns"].items()}
    rec.write(k="final", state=state, **final)
    await client.close()
    rec.write(k="closed")
    rec.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--servers", required=True, help="comma-separated replica URLs")
    parser.add_argument("--ns", action="append", required=True, help="namespace or prefix (repeatable)")
    parser.add_argument("--idle-timeout", type=float, default=1.5)
    parser.add_argument("--instance-id", default=None)
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    parser.add_argument("--max-regex-program-size", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
