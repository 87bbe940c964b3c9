"""``configcenter rollout NS [--wait]`` and the ``--wait`` of ``push`` / ``rollback``.

The table comes from ``GET /v1/namespaces/{ns}/rollout[?revision=R]``. Waiting polls it until
every live subscribed instance applied the revision (exit 0), some instance rejected it (exit
:data:`EXIT_REJECTED`, who and why on stderr) or the deadline passed (exit :data:`EXIT_WAIT_TIMEOUT`,
the instances still pending on stderr). Instances in fallback mode are listed but not waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from ..errors import ConfigCenterError
from ..model import validate_namespace
from . import output as out
from .client import EXIT_OK, Client, usage_error

EXIT_REJECTED = 5
EXIT_WAIT_TIMEOUT = 6
_POLL = (0.1, 1.0)  # first and longest pause between polls


def rollout_table(body: dict[str, Any]) -> str:
    """``INSTANCE SERVICE STATUS APPLIED MODE SOURCE LAST-SEEN REASON`` plus a summary line."""
    tracked = "canary" in body  # an active canary: a TRACK column and a line per track
    rows = [[r["id"], r.get("service"), *([r.get("track")] if tracked else []), r["status"], r.get("applied"),
             r.get("mode"), r.get("source"), out.iso_time(r.get("last_seen")), r.get("reason")]
            for r in body["instances"]]
    head = f"{body['ns']} revision {body['revision']}: {_counts(body['summary'])}"
    if tracked:
        canary = body["canary"]
        head += (f"\n  canary (started at {canary.get('started')}, {out.target_text(canary.get('target'))}): "
                 f"{_counts(canary['summary'])}\n  base: {_counts(body['base']['summary'])}")
    if not rows:
        return head + " (no instance subscribes)"
    names = ["INSTANCE", "SERVICE", *(["TRACK"] if tracked else []), "STATUS", "APPLIED", "MODE", "SOURCE",
             "LAST-SEEN", "REASON"]
    return head + "\n" + out.table(names, rows)


def _counts(counts: dict[str, int]) -> str:
    return (f"{counts['applied']}/{counts['subscribed']} applied, {counts['pending']} pending, "
            f"{counts['rejected']} rejected, {counts['fallback']} in fallback")


async def fetch(client: Client, ns: str, revision: int | None) -> dict[str, Any]:
    params = {"revision": str(revision)} if revision is not None else None
    body: dict[str, Any] = await client.call("GET", f"/v1/namespaces/{ns}/rollout", params=params)
    return body


def _print(body: dict[str, Any], as_json: bool) -> None:
    print(out.to_json(body) if as_json else rollout_table(body), flush=True)


def _complain(body: dict[str, Any], status: str, what: str) -> None:
    for row in body["instances"]:
        if row["status"] == status:
            reason = f": {' '.join(str(row.get('reason', '')).split())}" if status == "rejected" else ""
            print(f"{what}: {row['id']} ({row.get('service')}){reason}", file=sys.stderr, flush=True)


async def wait_for_rollout(client: Client, ns: str, revision: int | None, timeout: float | None,
                           as_json: bool = False) -> int:
    """Poll the rollout of ``revision`` (None: the current one); the exit code (module docstring)."""
    code = await poll_rollout(client, ns, revision, timeout, as_json, pin=True, part=lambda body: body)
    assert code is not None  # the whole rollout never "ends"
    return code


Part = Callable[[dict[str, Any]], dict[str, Any] | None]


async def poll_rollout(client: Client, ns: str, revision: int | None, timeout: float | None, as_json: bool, *,
                       pin: bool, part: Part, label: str = "") -> int | None:
    """Poll until ``part(rollout)`` (its ``summary`` and ``complete``) is complete, rejected or past ``timeout``:
    the exit code; None as soon as ``part`` is None (what was waited for ended).  ``pin``: keep waiting for
    the first revision seen even if a newer one lands (else follow the current one)."""
    loop = asyncio.get_running_loop()
    deadline = None if not timeout else loop.time() + timeout
    pause = _POLL[0]
    while True:
        body = await fetch(client, ns, revision)
        if pin:
            revision = body["revision"]
        view = part(body)
        if view is None:
            return None
        if view["summary"]["rejected"]:
            _print(body, as_json)
            _complain(body, "rejected", f"rejected {ns}@{body['revision']}{label}")
            return EXIT_REJECTED
        if view["complete"]:
            _print(body, as_json)
            return EXIT_OK
        if deadline is not None and loop.time() + pause > deadline:
            _print(body, as_json)
            _complain(body, "pending", f"still pending after {timeout:g}s{label}")
            return EXIT_WAIT_TIMEOUT
        await asyncio.sleep(pause)
        pause = min(_POLL[1], pause * 2)


async def cmd_rollout(args: argparse.Namespace, client: Client) -> int:
    try:
        ns = validate_namespace(args.ns)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc
    if args.wait:
        return await wait_for_rollout(client, ns, args.revision, args.timeout, args.json)
    _print(await fetch(client, ns, args.revision), args.json)
    return EXIT_OK


def _revision(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def add_rollout_command(sub: Any, add_remote: Any) -> None:
    """``rollout`` (``add_remote`` is ``main.add_remote``: global flags and the handler)."""
    parser = add_remote(sub, "rollout", cmd_rollout, "which instances applied a namespace's revision")
    parser.add_argument("ns")
    parser.add_argument("--revision", type=_revision, metavar="R", help="this revision instead of the current one")
    parser.add_argument("--wait", action="store_true",
                        help=f"until every live subscribed instance applied it (exit 0), one rejected it "
                             f"(exit {EXIT_REJECTED}) or --timeout passed (exit {EXIT_WAIT_TIMEOUT})")


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    """``--wait`` / ``--wait-timeout`` of ``push`` and ``rollback``."""
    parser.add_argument("--wait", action="store_true",
                        help=f"then wait until every live subscribed instance applied it (exit 0), one rejected "
                             f"it (exit {EXIT_REJECTED}) or --wait-timeout passed (exit {EXIT_WAIT_TIMEOUT})")
    parser.add_argument("--wait-timeout", type=float, default=60.0, metavar="S", help="default 60")


async def after_write(args: argparse.Namespace, client: Client, ns: str, revision: int) -> int:
    """The exit code of a push/rollback: waits for the rollout of ``revision`` with ``--wait``."""
    if not getattr(args, "wait", False):
        return EXIT_OK
    return await wait_for_rollout(client, ns, revision, args.wait_timeout, args.json)
