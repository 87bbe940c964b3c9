"""``configcenter freeze|unfreeze|freezes``, ``policy set|get|list|delete``, ``proposals``, ``proposal``,
``approve``, ``reject``: release control (change freezes, review policies, proposals).

A target is a namespace (``pay/routes``) or a prefix (``pay/``).  Under a review policy ``push``,
``rollback`` and ``delete`` answer 202 with a proposal instead of a release (``held_line``); another
writer approves it.  Under a freeze every write but a rollback is refused with the freeze's reason
(exit 1) unless an admin passes ``--override-freeze REASON``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigCenterError
from ..model import validate_namespace
from ..schema_rules import validate_target
from . import output as out
from .client import EXIT_OK, Client, usage_error


def target_arg(value: str) -> str:
    try:
        return validate_target(value)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc


def emit(text: str) -> None:
    print(text, flush=True)


def held(answer: Any) -> bool:
    """Whether a write's answer is a proposal (HTTP 202: held for review) rather than a release."""
    return isinstance(answer, dict) and isinstance(answer.get("proposal"), dict) and "revision" not in answer


def held_line(answer: dict[str, Any]) -> str:
    proposal = answer["proposal"]
    return (f"proposal {proposal.get('id')} created, awaiting approval (review policy on {proposal.get('policy')}; "
            f"another writer runs: configcenter approve {proposal.get('id')})")


def override_params(args: argparse.Namespace) -> dict[str, str]:
    """``?override_freeze=`` from ``--override-freeze`` (admins only; audited)."""
    reason = getattr(args, "override_freeze", None)
    return {"override_freeze": reason} if reason is not None else {}


# --------------------------------------------------------------------------- freezes


async def cmd_freeze(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    body: dict[str, Any] = {"reason": args.reason}
    for name in ("until", "from_"):
        if getattr(args, name) is not None:
            body[name.rstrip("_")] = getattr(args, name)
    if args.message is not None:
        body["message"] = args.message
    record = await client.call("PUT", f"/v1/freezes/{target}", body=body)
    emit(out.to_json(record) if args.json else
         f"froze {target} ({record.get('reason')}) {window(record)} at revision {record['revision']}")
    return EXIT_OK


def window(record: dict[str, Any]) -> str:
    start, end = record.get("from_time"), record.get("until_time")
    text = f"until {end}" if end else "until unfrozen"
    return f"from {start} {text}" if start else text


async def cmd_unfreeze(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    record = await client.call("DELETE", f"/v1/freezes/{target}", params={"message": args.message or ""})
    emit(out.to_json(record) if args.json else f"unfroze {target} at revision {record['revision']}")
    return EXIT_OK


async def cmd_freezes(args: argparse.Namespace, client: Client) -> int:
    answer = await client.call("GET", "/v1/freezes")
    if args.json:
        emit(out.to_json(answer))
    elif not answer["freezes"]:
        emit(f"no freezes (revision {answer['revision']})")
    else:
        rows = [[f["target"], "yes" if f.get("active") else "no", f.get("reason"), f.get("principal"),
                 f.get("from_time"), f.get("until_time") or "until unfrozen"] for f in answer["freezes"]]
        emit(out.table(["TARGET", "ACTIVE", "REASON", "SET BY", "FROM", "UNTIL"], rows))
    return EXIT_OK


# --------------------------------------------------------------------------- policies


async def cmd_policy_set(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    body: dict[str, Any] = {"require_review": args.require_review, "allow_rollback": args.allow_rollback}
    if args.message is not None:
        body["message"] = args.message
    record = await client.call("PUT", f"/v1/policies/{target}", body=body)
    emit(out.to_json(record) if args.json else f"policy of {target}: {policy_text(record)} "
                                               f"(revision {record['revision']})")
    return EXIT_OK


def policy_text(record: dict[str, Any]) -> str:
    if not record.get("require_review"):
        return "no review required"
    return "review required" + (", rollbacks without review" if record.get("allow_rollback") else "")


async def cmd_policy_get(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    record = await client.call("GET", f"/v1/policies/{target}")
    emit(out.to_json(record) if args.json else
         f"policy of {target}: {policy_text(record)} (revision {record['revision']}, set by {record.get('principal')})")
    return EXIT_OK


async def cmd_policy_list(args: argparse.Namespace, client: Client) -> int:
    answer = await client.call("GET", "/v1/policies")
    if args.json:
        emit(out.to_json(answer))
    elif not answer["policies"]:
        emit(f"no review policies (revision {answer['revision']})")
    else:
        rows = [[p["target"], policy_text(p), p.get("principal"), p["revision"]] for p in answer["policies"]]
        emit(out.table(["TARGET", "POLICY", "SET BY", "REVISION"], rows))
    return EXIT_OK


async def cmd_policy_delete(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    record = await client.call("DELETE", f"/v1/policies/{target}", params={"message": args.message or ""})
    emit(out.to_json(record) if args.json else f"removed the policy of {target} at revision {record['revision']}")
    return EXIT_OK


# --------------------------------------------------------------------------- proposals


async def cmd_proposals(args: argparse.Namespace, client: Client) -> int:
    params = None
    if args.ns:
        try:
            params = {"ns": validate_namespace(args.ns)}
        except ConfigCenterError as exc:
            raise usage_error(exc.message) from exc
    answer = await client.call("GET", "/v1/proposals", params=params)
    if args.json:
        emit(out.to_json(answer))
    elif not answer["proposals"]:
        emit("no open proposals" + (f" for {args.ns}" if args.ns else ""))
    else:
        rows = [[p["id"], p["ns"], p["op"], p.get("principal"), p.get("base_revision"), out.iso_time(p.get("time")),
                 p.get("message")] for p in answer["proposals"]]
        emit(out.table(["ID", "NS", "OP", "PROPOSED BY", "BASE", "TIME", "MESSAGE"], rows))
    return EXIT_OK


async def cmd_proposal(args: argparse.Namespace, client: Client) -> int:
    answer = await client.call("GET", f"/v1/proposals/{args.id}")
    if args.json:
        emit(out.to_json(answer))
        return EXIT_OK
    p, diff = answer["proposal"], answer["diff"]
    stale = " (STALE: the namespace changed since; reject it)" if answer.get("stale") else ""
    emit(f"# proposal {p['id']}: {p['op']} {p['ns']} by {p.get('principal')}, against revision "
         f"{p.get('base_revision')}{stale}\n# message: {out.cell(p.get('message'))}")
    patch = diff.get("patch") or ""
    emit(patch.rstrip("\n") if patch else "no differences from the current release")
    return EXIT_OK


async def cmd_approve(args: argparse.Namespace, client: Client) -> int:
    release = await client.call("POST", f"/v1/proposals/{args.id}/approve", params=override_params(args) or None)
    emit(out.to_json(release) if args.json else
         f"approved {args.id}: {release['ns']} revision {release['revision']} (version {release['version']}), "
         f"proposed by {release.get('principal')}, approved by {release.get('approved_by')}")
    return EXIT_OK


async def cmd_reject(args: argparse.Namespace, client: Client) -> int:
    answer = await client.call("POST", f"/v1/proposals/{args.id}/reject")
    emit(out.to_json(answer) if args.json else f"rejected {args.id} ({answer['proposal']['ns']})")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def add_release_commands(sub: Any, add_remote: Any) -> None:
    """The release-control commands (``add_remote`` is ``main.add_remote``: global flags and the handler)."""
    freeze = add_remote(sub, "freeze", cmd_freeze, "freeze a namespace or prefix: only rollbacks until it ends (admin)")
    freeze.add_argument("target", metavar="NS|PREFIX/")
    freeze.add_argument("--reason", required=True, help="why (shown to everyone the freeze refuses)")
    freeze.add_argument("--until", metavar="TIME", help="RFC 3339 time (2024-05-01T18:00:00Z) or a duration "
                                                        "(30m, 2h, 1d); default: until unfrozen")
    freeze.add_argument("--from", dest="from_", metavar="TIME", help="RFC 3339 start (default: now)")
    freeze.add_argument("-m", "--message", help="history message")
    unfreeze = add_remote(sub, "unfreeze", cmd_unfreeze, "remove the freeze of NS or PREFIX/ (admin)")
    unfreeze.add_argument("target", metavar="NS|PREFIX/")
    unfreeze.add_argument("-m", "--message", help="history message")
    add_remote(sub, "freezes", cmd_freezes, "list freezes (active or not)")
    policy = sub.add_parser("policy", help="review policies (four eyes)",
                            description="Require that changes under a namespace or prefix be approved by "
                                        "another principal before release.")
    actions = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    set_p = add_remote(actions, "set", cmd_policy_set, "set the review policy of NS or PREFIX/ (admin)")
    set_p.add_argument("target", metavar="NS|PREFIX/")
    review = set_p.add_mutually_exclusive_group(required=True)
    review.add_argument("--require-review", dest="require_review", action="store_true", default=None)
    review.add_argument("--no-review", dest="require_review", action="store_false",
                        help="exempt NS from a broader prefix's policy")
    set_p.add_argument("--allow-rollback", action="store_true", help="rollbacks need no review")
    set_p.add_argument("-m", "--message", help="history message")
    for name, handler, text in (("get", cmd_policy_get, "print"), ("delete", cmd_policy_delete, "remove (admin)")):
        parser = add_remote(actions, name, handler, f"{text} the review policy of NS or PREFIX/")
        parser.add_argument("target", metavar="NS|PREFIX/")
        if name == "delete":
            parser.add_argument("-m", "--message", help="history message")
    add_remote(actions, "list", cmd_policy_list, "list review policies")
    proposals = add_remote(sub, "proposals", cmd_proposals, "open proposals (of NS)")
    proposals.add_argument("ns", nargs="?", metavar="NS")
    show = add_remote(sub, "proposal", cmd_proposal, "a proposal and its diff against the current release")
    show.add_argument("id", metavar="ID")
    approve = add_remote(sub, "approve", cmd_approve, "approve and release a proposal (not its author)")
    approve.add_argument("id", metavar="ID")
    add_override_flag(approve)
    reject = add_remote(sub, "reject", cmd_reject, "reject (or withdraw) a proposal")
    reject.add_argument("id", metavar="ID")


def add_override_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--override-freeze", metavar="REASON",
                        help="write through a change freeze (admin; audited, recorded in the release)")
