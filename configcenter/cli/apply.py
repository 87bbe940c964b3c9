"""``configcenter apply PATH… [--dry-run] [--prune PREFIX] [--wait]``: publish a set of envelope files.

1. **Load** every file (``apply_files.py``: discovery, the namespace rule, envelope shape).
2. **Plan**: read each namespace's current release and the server's schemas, check every
   document (its kind's schema and route compiler, and the ``config`` schema registered for the
   namespace), and decide: ``create``, ``update`` (with a unified diff), ``unchanged``, or
   ``delete`` (``--prune``: a namespace under PREFIX without a file).  Any bad file: every
   problem is printed, exit 2, **nothing is written**.
3. **Apply** (not with ``--dry-run``): each change is pushed with ``If-Match`` of the revision
   it was diffed against (0 for a create), so a concurrent change fails that namespace
   (``conflict``, exit 4) while the others go on; prunes are deletes with ``If-Match`` too
   (they need an ``admin`` token).
4. **Report**: the diffs and a summary table (``--json``: one JSON document), then, with
   ``--wait``, the rollout of every pushed revision (``rollout.py``).

Exit code: 0 all done; 2 a bad file (nothing written); 1 some namespace failed (3 if the server
became unreachable); 4 only conflicts; 5/6 as ``rollout --wait`` when the writes succeeded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from ..diffing import structured_diff, unified_patch
from ..errors import ConfigCenterError
from ..model import validate_prefix
from ..schema_rules import check_schema, governing, validate_config
from ..validation import validate_document
from . import output as out
from .apply_files import Source, load_sources
from .client import EXIT_OK, EXIT_PRECONDITION, EXIT_SERVER_ERROR, Client, CliError, current_release, usage_error
from .release_cli import held, held_line
from .rollout import add_wait_flags, wait_for_rollout

DEFAULT_MESSAGE = "configcenter apply"


@dataclass
class Step:
    """What apply does to one namespace, and what came of it."""

    ns: str
    action: str  # create | update | unchanged | delete
    source: Source | None = None
    kind: str | None = None
    from_revision: int | None = None  # the revision diffed against (If-Match)
    patch: str = ""
    status: str = "planned"  # planned | dry-run | done | skipped | conflict | failed
    revision: int | None = None
    error: str | None = None
    code: int = EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {"ns": self.ns, "action": self.action, "status": self.status, "kind": self.kind,
                "file": str(self.source.path) if self.source else None, "from_revision": self.from_revision,
                "revision": self.revision, "patch": self.patch, "error": self.error}


# --------------------------------------------------------------------------- plan


async def server_schemas(client: Client, namespaces: list[str]) -> dict[str, tuple[str, Any]]:
    """ns -> (target, validator) of the schema the server would check each ``config`` push against."""
    try:
        listing = await client.call("GET", "/v1/schemas")
    except CliError as exc:
        if exc.status == 404:  # a server without schemas
            return {}
        raise
    targets = [s["target"] for s in listing["schemas"]]
    wanted = {ns: t for ns in namespaces if (t := governing(ns, targets)) is not None}
    validators: dict[str, Any] = {}
    for target in sorted(set(wanted.values())):
        body = await client.call("GET", f"/v1/schemas/{target}")
        try:
            validators[target] = check_schema(body["schema"], target)
        except ConfigCenterError as exc:
            raise CliError(f"the server's schema of {target} is unusable here: {exc.message}") from exc
    return {ns: (t, validators[t]) for ns, t in wanted.items()}


def check(source: Source, kind: str, schema: tuple[str, Any] | None) -> str | None:
    """The first problem of ``source``'s document (its kind's schema, then the namespace's), or None."""
    try:
        validate_document(kind, source.doc)
        if schema is not None and kind == "config":
            validate_config(source.ns, schema[0], schema[1], source.doc)
    except ConfigCenterError as exc:
        paths = ", ".join(v["path"] for v in exc.details.get("violations", [])[1:4])
        return f"{source.path}: {exc.message}" + (f" (also at {paths})" if paths else "")
    return None


def plan_one(source: Source, current: dict[str, Any] | None, schema: tuple[str, Any] | None) -> Step | str:
    """The step for one file, or the reason it cannot be applied."""
    kind = source.kind or (current or {}).get("kind")
    if not kind:
        return f"{source.path}: {source.ns} does not exist yet: the envelope needs a kind (routes or config)"
    problem = check(source, kind, schema)
    if problem:
        return problem
    label = f"{source.ns} ({source.path})"
    if current is None:
        return Step(source.ns, "create", source, kind, 0, unified_patch(None, source.doc, "/dev/null", label))
    old = current.get("doc")
    if current.get("kind") == kind and not structured_diff(old, source.doc):
        return Step(source.ns, "unchanged", source, kind, current["revision"], status="skipped")
    patch = unified_patch(old, source.doc, f"{source.ns}@{current['revision']}", label)
    if current.get("kind") != kind:
        patch = f"# kind {current.get('kind')} -> {kind}\n" + patch
    return Step(source.ns, "update", source, kind, current["revision"], patch)


async def prune_steps(client: Client, prefix: str, keep: set[str]) -> list[Step]:
    answer = await client.call("GET", "/v1/namespaces", params={"prefix": prefix})
    return [Step(item["ns"], "delete", None, item.get("kind"), item["revision"],
                 f"--- {item['ns']}@{item['revision']}\n+++ /dev/null (no file: pruned)\n")
            for item in answer["namespaces"] if item["ns"] not in keep]


async def plan(client: Client, sources: list[Source], prune: str | None) -> tuple[list[Step], list[str]]:
    """Every step, or every problem (then nothing may be written)."""
    names = [s.ns for s in sources]
    currents = await asyncio.gather(*(current_release(client, ns) for ns in names))
    schemas = await server_schemas(client, names)
    steps: list[Step] = []
    problems: list[str] = []
    for source, current in zip(sources, currents, strict=True):
        result = plan_one(source, current, schemas.get(source.ns))
        if isinstance(result, str):
            problems.append(result)
        else:
            steps.append(result)
    if prune is not None and not problems:
        steps += await prune_steps(client, prune, set(names))
    return steps, problems


# --------------------------------------------------------------------------- apply


def push_body(step: Step, args: argparse.Namespace) -> dict[str, Any]:
    source = step.source
    assert source is not None
    message = args.message if args.message is not None else source.message
    author = args.author or source.author or os.environ.get("CONFIGCENTER_AUTHOR") or ""
    return {"kind": step.kind, "doc": source.doc, "message": message or DEFAULT_MESSAGE, "author": author}


async def execute(client: Client, step: Step, args: argparse.Namespace) -> None:
    """Write one planned step; record its outcome on the step (never raises for a server answer)."""
    try:
        if step.action == "delete":
            params = {"message": args.message or DEFAULT_MESSAGE + " --prune", "author": args.author or ""}
            release = await client.call("DELETE", f"/v1/namespaces/{step.ns}", params=params,
                                        if_revision=step.from_revision)
        else:
            release = await client.call("PUT", f"/v1/namespaces/{step.ns}", body=push_body(step, args),
                                        if_revision=step.from_revision)
    except CliError as exc:
        step.code, step.error = exc.code, exc.message
        step.status = "conflict" if exc.code == EXIT_PRECONDITION else "failed"
        if exc.status == 412:
            step.error = f"changed since revision {step.from_revision} (someone else wrote): re-run apply"
        elif exc.status == 403 and step.action == "delete":
            step.error = f"--prune needs a token with the admin role: {exc.message}"
        return
    if held(release):  # a review policy holds the change as a proposal: nothing released yet
        step.status, step.error = "held", held_line(release)
        return
    step.status, step.revision = "done", release["revision"]


async def wait_all(client: Client, steps: list[Step], args: argparse.Namespace) -> int:
    """``--wait``: the rollout of every pushed revision; the worst exit code (0 when all applied)."""
    code = EXIT_OK
    sink = sys.stderr if args.json else sys.stdout  # keep stdout one JSON document with --json
    with contextlib.redirect_stdout(sink):
        for step in steps:
            if step.status == "done" and step.action in ("create", "update") and step.revision is not None:
                code = max(code, await wait_for_rollout(client, step.ns, step.revision, args.wait_timeout))
    return code


def exit_code(steps: list[Step]) -> int:
    failed = [s.code for s in steps if s.status == "failed"]
    if failed:
        return failed[0] or EXIT_SERVER_ERROR
    return EXIT_PRECONDITION if any(s.status == "conflict" for s in steps) else EXIT_OK


# --------------------------------------------------------------------------- report


def summary(steps: list[Step], dry_run: bool) -> str:
    rows = [[s.ns, s.action, s.status, s.from_revision if s.action != "create" else "-", s.revision,
             str(s.source.path) if s.source else "-", s.error] for s in steps]
    table = out.table(["NS", "ACTION", "RESULT", "FROM", "REVISION", "FILE", "ERROR"], rows) if rows else "no files"
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.action] = counts.get(s.action, 0) + 1
    text = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing"
    if dry_run:
        return f"{table}\ndry run: {text}; nothing was written"
    bad = sum(s.status in ("conflict", "failed") for s in steps)
    return f"{table}\napplied: {text}" + (f"; {bad} namespace(s) not applied" if bad else "")


def report(steps: list[Step], args: argparse.Namespace, code: int) -> None:
    if args.json:
        print(out.to_json({"dry_run": args.dry_run, "exit_code": code, "steps": [s.to_json() for s in steps]}),
              flush=True)
        return
    for step in steps:
        if step.patch:
            sys.stdout.write(step.patch if step.patch.endswith("\n") else step.patch + "\n")
    print(summary(steps, args.dry_run), flush=True)


async def cmd_apply(args: argparse.Namespace, client: Client) -> int:
    prune = None
    if args.prune is not None:
        try:
            prune = validate_prefix(args.prune)
        except ConfigCenterError as exc:
            raise usage_error(f"--prune: {exc.message}") from exc
        if not prune:
            raise usage_error("--prune needs a prefix such as team/ (pruning every namespace is not offered)")
    sources, problems = load_sources(args.paths)
    steps, more = await plan(client, sources, None if problems else prune)  # every file is checked
    problems += more
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        raise usage_error(f"{len(problems)} problem(s) found; nothing was written")
    for step in steps:
        if args.dry_run and step.action != "unchanged":
            step.status = "dry-run"
        elif not args.dry_run and step.status == "planned":
            await execute(client, step, args)
    code = exit_code(steps)
    report(steps, args, code)
    if args.wait and not args.dry_run and code == EXIT_OK:
        code = await wait_all(client, steps, args)
    return code


def add_apply_command(sub: Any, add_remote: Any) -> None:
    """``apply`` (``add_remote`` is ``main.add_remote``: global flags and the handler)."""
    parser = add_remote(sub, "apply", cmd_apply, "publish files or directories of envelopes (diff, push, prune)")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="envelope files, or directories of them")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    parser.add_argument("--prune", metavar="PREFIX/", help="delete namespaces under PREFIX/ that have no file "
                        "(admin token)")
    parser.add_argument("-m", "--message", help="release message (default: the file's, else 'configcenter apply')")
    parser.add_argument("--author", help="author (default: the file's, else $CONFIGCENTER_AUTHOR)")
    add_wait_flags(parser)

