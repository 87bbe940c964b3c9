"""``configcenter schema set|get|list|history|delete``: the per-namespace schemas of ``config`` documents.

A target is a namespace (``orders/config``) or a prefix (``orders/``); the server validates every
``config`` push under it (see ``configcenter/schema_rules.py`` for which schema governs a namespace).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..codec import dump_yaml
from ..errors import ConfigCenterError
from ..schema_rules import validate_target
from . import output as out
from .client import EXIT_OK, Client, usage_error
from .envelope import parse_file

SCHEMA_FILE_KEYS = frozenset({"target", "schema", "message"})


def target_arg(value: str) -> str:
    try:
        return validate_target(value)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc


def schema_body(path: str, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """``{schema, message?, author?}`` from FILE: the JSON Schema itself, or ``{target?, schema, message?}``."""
    data = parse_file(Path(path), sys.stdin.buffer.read() if path == "-" else None)
    if isinstance(data, dict) and "schema" in data and set(data) <= SCHEMA_FILE_KEYS:
        if data.get("target", target) != target:
            raise usage_error(f"{path}: the file is the schema of {data['target']!r}, not {target!r}")
        body = {k: v for k, v in data.items() if k != "target"}
    else:
        body = {"schema": data}
    if args.message is not None:
        body["message"] = args.message
    author = args.author or os.environ.get("CONFIGCENTER_AUTHOR")
    if author:
        body["author"] = author
    return body


async def cmd_set(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    body = schema_body(args.file, target, args)
    params = {"force": "true"} if args.force else None
    release = await client.call("PUT", f"/v1/schemas/{target}", params=params, body=body,
                                if_revision=args.if_revision)
    print(out.to_json(release) if args.json else
          f"schema of {target} set at revision {release['revision']} (version {release['version']})", flush=True)
    return EXIT_OK


async def cmd_get(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    release = await client.call("GET", f"/v1/schemas/{target}")
    if args.json:
        print(out.to_json(release), flush=True)
    else:
        head = f"# schema of {target} revision {release['revision']} version {release['version']}\n"
        sys.stdout.write(head + dump_yaml(release["schema"]))
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, client: Client) -> int:
    answer = await client.call("GET", "/v1/schemas")
    if args.json:
        print(out.to_json(answer), flush=True)
    elif not answer["schemas"]:
        print(f"no schemas (revision {answer['revision']})", flush=True)
    else:
        rows = [[s["target"], s["revision"], s["version"], s.get("principal"), s.get("message")]
                for s in answer["schemas"]]
        print(out.table(["TARGET", "REVISION", "VERSION", "PRINCIPAL", "MESSAGE"], rows), flush=True)
    return EXIT_OK


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    answer = await client.call("GET", f"/v1/schema-history/{target}")
    if args.json:
        print(out.to_json(answer), flush=True)
    else:
        rows = [[e["revision"], e["version"], e["op"], e.get("principal"), out.iso_time(e.get("time")),
                 e.get("message")] for e in answer["entries"]]
        print(out.table(["REVISION", "VERSION", "OP", "PRINCIPAL", "TIME", "MESSAGE"], rows), flush=True)
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    target = target_arg(args.target)
    params = {"message": args.message or "", "author": args.author or os.environ.get("CONFIGCENTER_AUTHOR") or ""}
    release = await client.call("DELETE", f"/v1/schemas/{target}", params=params, if_revision=args.if_revision)
    print(out.to_json(release) if args.json else
          f"deleted the schema of {target} at revision {release['revision']}", flush=True)
    return EXIT_OK


def _write_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--message", help="release message")
    parser.add_argument("--author", help="author (default $CONFIGCENTER_AUTHOR)")
    parser.add_argument("--if-revision", type=int, metavar="R", help="only if the schema is still at revision R")


def add_schema_command(sub: Any, add_remote: Any) -> None:
    """``schema`` and its actions (``add_remote`` is ``main.add_remote``: global flags and the handler)."""
    schema = sub.add_parser("schema", help="per-namespace JSON Schemas of config documents",
                            description="Register, inspect and remove the JSON Schemas that config pushes "
                                        "under a namespace or prefix must satisfy.")
    actions = schema.add_subparsers(dest="schema_command", metavar="ACTION", required=True)
    set_p = add_remote(actions, "set", cmd_set, "register or replace the schema of NS or PREFIX/ (admin)")
    set_p.add_argument("target", metavar="NS|PREFIX/")
    set_p.add_argument("file", metavar="FILE", help="the JSON Schema (YAML or JSON; '-' for stdin)")
    set_p.add_argument("--force", action="store_true", help="even if current documents violate it")
    _write_flags(set_p)
    get_p = add_remote(actions, "get", cmd_get, "print the schema of NS or PREFIX/")
    get_p.add_argument("target", metavar="NS|PREFIX/")
    add_remote(actions, "list", cmd_list, "list registered schemas")
    hist_p = add_remote(actions, "history", cmd_history, "releases of a schema, newest first")
    hist_p.add_argument("target", metavar="NS|PREFIX/")
    del_p = add_remote(actions, "delete", cmd_delete, "remove the schema of NS or PREFIX/ (admin)")
    del_p.add_argument("target", metavar="NS|PREFIX/")
    _write_flags(del_p)
