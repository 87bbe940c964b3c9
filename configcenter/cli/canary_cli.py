"""Canary releases from the command line: ``push --canary``, ``canary``, ``promote``, ``abort``.

* ``configcenter push NS FILE --canary SELECTOR [--abort-on-reject] [--wait]``: start a canary of FILE
  (``POST /v1/namespaces/{ns}/canary``); ``main.cmd_push`` hands over to :func:`push_canary`.
* ``configcenter canary NS SELECTOR [--wait]``: grow or shrink it (``PATCH``).
* ``configcenter promote NS [--wait]``: the candidate for everyone (``POST …/promote``).
* ``configcenter abort NS``: everyone back on the base (``DELETE …/canary``).

SELECTOR: comma-separated terms ``N%`` (a stable share of instances, 0 to 100), ``id:INSTANCE``
(repeatable) and ``KEY=VALUE`` (labels the instance must have), e.g. ``10%``, ``zone=az1,25%``,
``id:web-1,id:web-2``.  A malformed one is exit 2 with what is wrong, before anything is sent.

``--wait`` (start and grow): poll the rollout until every live member applied the canary's revision
(exit 0), one rejected it or the canary was aborted meanwhile (exit 5: who and why on stderr), or
``--wait-timeout`` passed (exit 6).  For ``promote --wait``: the fleet, as ``push --wait``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from configcenter_sdk.canary import parse_target

from ..errors import ConfigCenterError
from ..model import validate_namespace
from . import output as out
from .client import EXIT_OK, Client, usage_error
from .release_cli import held, held_line, override_params
from .rollout import EXIT_REJECTED, add_wait_flags, after_write, poll_rollout, rollout_table

_HINT = "use comma-separated terms N% (0-100), id:INSTANCE and KEY=VALUE, e.g. 10% or zone=az1,25%"


def parse_selector(text: str) -> dict[str, Any]:
    """SELECTOR -> the API's target ``{labels?, instances?, percent?}``; exit 2 naming the bad term."""
    labels: dict[str, str] = {}
    instances: list[str] = []
    percent: int | None = None
    terms = [term.strip() for term in text.split(",")]
    if not text.strip() or "" in terms:
        raise usage_error(f"canary selector {text!r} has an empty term: {_HINT}")
    for term in terms:
        if term.endswith("%"):
            number = term[:-1].strip()
            if not (number.isascii() and number.isdigit()) or int(number) > 100:
                raise usage_error(f"canary selector term {term!r}: a percent is a whole number from 0 to 100")
            if percent is not None:
                raise usage_error(f"canary selector {text!r} gives more than one percent")
            percent = int(number)
        elif term.startswith("id:"):
            if not term[3:].strip():
                raise usage_error(f"canary selector term {term!r}: id: needs an instance id")
            instances.append(term[3:].strip())
        elif "=" in term:
            key, _, value = (part.strip() for part in term.partition("="))
            if not key or not value:
                raise usage_error(f"canary selector term {term!r}: a label is KEY=VALUE, both non-empty")
            if labels.get(key, value) != value:
                raise usage_error(f"canary selector {text!r} gives label {key!r} two values")
            labels[key] = value
        else:
            raise usage_error(f"canary selector term {term!r} is not N%, id:INSTANCE or KEY=VALUE: {_HINT}")
    target: dict[str, Any] = {}
    if labels:
        target["labels"] = labels
    if instances:
        target["instances"] = sorted(set(instances))
    if percent is not None:
        target["percent"] = percent
    try:
        parse_target(target)  # the SDK's bounds (counts, lengths), checked before sending
    except ValueError as exc:
        raise usage_error(f"canary selector {text!r}: {exc}") from exc
    return target


def selector_text(target: Any) -> str:
    """The SELECTOR form of a target (what ``canary`` takes back)."""
    return out.target_text(target)


def canary_section(release: dict[str, Any]) -> str:
    """What ``get`` prints after the base document when a canary is active: its header and the candidate."""
    canary = release.get("canary")
    if not isinstance(canary, dict):
        return ""
    candidate = canary.get("candidate") or {}
    head = (f"# canary started at revision {canary.get('started')} for {selector_text(canary.get('target'))}"
            f"{' (aborts on reject)' if canary.get('abort_on_reject') else ''}: candidate kind {candidate.get('kind')}")
    return head + "\n" + out.document(candidate.get("doc"), "yaml")


def _namespace(value: str) -> str:
    try:
        return validate_namespace(value)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc


async def push_canary(args: argparse.Namespace, client: Client, ns: str, body: dict[str, Any]) -> int:
    """``push --canary``: start the canary of ``body`` (the push body) and, with ``--wait``, wait for it."""
    if args.canary is None:
        raise usage_error("--abort-on-reject needs --canary SELECTOR (it aborts a canary)")
    target = parse_selector(args.canary)
    release = await _send(client, args, "POST", f"/v1/namespaces/{ns}/canary",
                          body={**body, "target": target, "abort_on_reject": bool(args.abort_on_reject)})
    if release is None:
        return EXIT_OK
    print(out.to_json(release) if args.json else
          f"started a canary of {ns} for {selector_text(target)} at revision {release['revision']}", flush=True)
    return await _after_canary(args, client, ns, release)


async def cmd_canary(args: argparse.Namespace, client: Client) -> int:
    ns = _namespace(args.ns)
    target = parse_selector(args.selector)
    body: dict[str, Any] = {"target": target, "message": args.message or ""}
    if args.author:
        body["author"] = args.author
    release = await _send(client, args, "PATCH", f"/v1/namespaces/{ns}/canary", body=body)
    if release is None:
        return EXIT_OK
    print(out.to_json(release) if args.json else
          f"canary of {ns} now for {selector_text(target)} (revision {release['revision']})", flush=True)
    return await _after_canary(args, client, ns, release)


async def cmd_promote(args: argparse.Namespace, client: Client) -> int:
    ns = _namespace(args.ns)
    body = {"message": args.message or "", **({"author": args.author} if args.author else {})}
    release = await _send(client, args, "POST", f"/v1/namespaces/{ns}/promote", body=body)
    if release is None:
        return EXIT_OK
    print(out.to_json(release) if args.json else
          f"promoted the canary of {ns} (started at {release.get('from_canary')}) as revision "
          f"{release['revision']}", flush=True)
    return await after_write(args, client, ns, release["revision"])


async def cmd_abort(args: argparse.Namespace, client: Client) -> int:
    ns = _namespace(args.ns)
    params = {"message": args.message or "", **({"author": args.author} if args.author else {})}
    release = await _send(client, args, "DELETE", f"/v1/namespaces/{ns}/canary", params=params)
    if release is None:
        return EXIT_OK
    print(out.to_json(release) if args.json else
          f"aborted the canary of {ns}: every instance runs the base (revision {release['revision']})", flush=True)
    return EXIT_OK


async def _send(client: Client, args: argparse.Namespace, method: str, path: str, *,
                body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The write's release; None (after saying so) if a review policy held it as a proposal."""
    answer: dict[str, Any] = await client.call(method, path, body=body, if_revision=args.if_revision,
                                               params={**(params or {}), **override_params(args)} or None)
    if held(answer):
        print(out.to_json(answer) if args.json else held_line(answer), flush=True)
        return None
    return answer


async def _after_canary(args: argparse.Namespace, client: Client, ns: str, release: dict[str, Any]) -> int:
    if not getattr(args, "wait", False):
        return EXIT_OK
    return await wait_for_canary(client, ns, int(release["canary"]["started"]), args.wait_timeout, args.json)


async def wait_for_canary(client: Client, ns: str, started: int, timeout: float | None, as_json: bool) -> int:
    """Poll the rollout until the members of the canary ``started`` applied its latest revision (see the
    module docstring for the exit codes)."""
    def this_canary(body: dict[str, Any]) -> dict[str, Any] | None:
        canary: dict[str, Any] | None = body.get("canary")
        return canary if canary is not None and canary.get("started") == started else None

    code = await poll_rollout(client, ns, None, timeout, as_json, pin=False, part=this_canary, label=" (canary)")
    return code if code is not None else await _ended(client, ns, started)


async def _ended(client: Client, ns: str, started: int) -> int:
    """The canary ended while we waited: say how (an abort, e.g. on reject, is exit 5)."""
    release = await client.call("GET", f"/v1/namespaces/{ns}")
    op, message = release.get("op"), " ".join(str(release.get("message") or "").split())
    print(f"the canary of {ns} started at {started} ended: {op} at revision {release.get('revision')}"
          f"{': ' + message if message else ''}", file=sys.stderr, flush=True)
    return EXIT_REJECTED if op in ("canary_abort", "rollback") else EXIT_OK


def _print(body: dict[str, Any], as_json: bool) -> None:
    print(out.to_json(body) if as_json else rollout_table(body), flush=True)


def _complain(body: dict[str, Any], status: str, what: str) -> None:
    for row in body["instances"]:
        if row["status"] == status and row.get("track") == "canary":
            reason = f": {' '.join(str(row.get('reason', '')).split())}" if status == "rejected" else ""
            print(f"{what}: {row['id']} ({row.get('service')}){reason}", file=sys.stderr, flush=True)


def add_canary_flags(push: argparse.ArgumentParser) -> None:
    """``--canary`` / ``--abort-on-reject`` of ``push``."""
    push.add_argument("--canary", metavar="SELECTOR",
                      help="publish FILE only to these instances (N%%, id:INSTANCE, KEY=VALUE, comma-separated); "
                           "promote or abort it later")
    push.add_argument("--abort-on-reject", action="store_true",
                      help="with --canary: the first member that rejects the candidate aborts the canary")


def add_canary_commands(sub: Any, add_remote: Any, add_write_flags: Any) -> None:
    """``canary``, ``promote`` and ``abort`` (``add_remote``/``add_write_flags``: ``main``'s)."""
    canary = add_remote(sub, "canary", cmd_canary, "grow or shrink a namespace's canary")
    canary.add_argument("ns")
    canary.add_argument("selector", metavar="SELECTOR", help="N%%, id:INSTANCE, KEY=VALUE, comma-separated")
    add_write_flags(canary)
    add_wait_flags(canary)
    promote = add_remote(sub, "promote", cmd_promote, "make a namespace's canary the release of every instance")
    promote.add_argument("ns")
    add_write_flags(promote)
    add_wait_flags(promote)
    abort = add_remote(sub, "abort", cmd_abort, "abort a namespace's canary: every instance back on the base")
    abort.add_argument("ns")
    add_write_flags(abort)
