"""The ``configcenter`` command: run the server (``serve``, ``dev``) and administer it over HTTP.

Exit codes (stable, for scripts): 0 ok; 1 the server answered with an error;
2 usage or local input error; 3 server unreachable; 4 precondition failed
(HTTP 412, retry); 5 a rollout was rejected by an instance, 6 a rollout wait timed out
(``rollout.py``).  Errors go to stderr as one ``error: ...`` line.
See ``docs/cli.md`` for every command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from configcenter_sdk.tls import client_ssl_context

from ..errors import ConfigCenterError
from ..model import KINDS, validate_namespace, validate_prefix
from . import envelope
from . import output as out
from .apply import add_apply_command
from .canary_cli import add_canary_commands, add_canary_flags, canary_section, push_canary
from .client import EXIT_OK, EXIT_USAGE, Client, CliError, WatchOptions, request_id_arg, usage_error, watch
from .edit import add_edit_command
from .migrate_cli import add_migrate_command
from .release_cli import add_override_flag, add_release_commands, held, held_line, override_params
from .rollout import add_rollout_command, add_wait_flags, after_write
from .schema_cli import add_schema_command

DEFAULT_SERVER = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
Handler = Callable[[argparse.Namespace, Client], Awaitable[int]]


# --------------------------------------------------------------------------- helpers


def emit(text: str) -> None:
    print(text, flush=True)


def namespace(value: str) -> str:
    try:
        return validate_namespace(value)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc


def read_source(source: str) -> bytes:
    """The bytes of FILE, or of stdin for ``-``; exit 2 if it cannot be read."""
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise usage_error(f"{source}: cannot read: {exc.strerror or exc}") from exc


def push_body(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The ``{kind, doc, message?, author?}`` body from a parsed file plus the flags."""
    if envelope.is_envelope(data):
        body = dict(data)
        if args.kind and body.get("kind", args.kind) != args.kind:
            raise usage_error(f"{args.file}: envelope says kind {body['kind']!r} but --kind is {args.kind!r}")
        body.setdefault("kind", args.kind)
        if not body["kind"]:
            raise usage_error(f"{args.file}: the envelope has no kind and {args.ns} does not exist yet; "
                              "pass --kind routes|config")
    elif not args.kind:
        raise usage_error(f"{args.file}: {args.ns} does not exist yet: a plain document needs --kind "
                          "routes|config (or write an envelope {kind, doc, message})")
    else:
        body = {"kind": args.kind, "doc": data}
    if args.message is not None:
        body["message"] = args.message
    author = args.author or os.environ.get("CONFIGCENTER_AUTHOR")
    if author and (args.author or "author" not in body):
        body["author"] = author
    return body


def header_pairs(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise usage_error(f"--header {item!r} must look like NAME=VALUE")
        headers[name.strip()] = value
    return headers


def author_of(args: argparse.Namespace) -> str:
    return str(args.author or os.environ.get("CONFIGCENTER_AUTHOR") or "")


# --------------------------------------------------------------------------- remote commands


async def cmd_push(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    data = envelope.strip_identity(envelope.parse_source(args.file, read_source(args.file)), ns, args.file)
    if not args.kind and envelope.needs_kind(data):  # an existing namespace keeps its kind
        args.kind = await envelope.existing_kind(client, ns)
    body = push_body(data, args)
    if args.canary is not None or args.abort_on_reject:  # only to the selected instances (canary_cli.py)
        return await push_canary(args, client, ns, body)
    release = await client.call("PUT", f"/v1/namespaces/{ns}", body=body, if_revision=args.if_revision,
                                params=override_params(args) or None)
    if held(release):  # 202: a review policy holds it as a proposal
        emit(out.to_json(release) if args.json else held_line(release))
        return EXIT_OK
    emit(out.to_json(release) if args.json else
         f"pushed {ns} revision {release['revision']} (version {release['version']})")
    return await after_write(args, client, ns, release["revision"])


async def cmd_get(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    params = {"revision": str(args.revision)} if args.revision is not None else None
    release = await client.call("GET", f"/v1/namespaces/{ns}", params=params)
    if args.output:  # an envelope that push and apply take back unchanged
        sys.stdout.write(envelope.render(release, args.output))
    elif args.json:
        emit(out.to_json(release))
    elif args.format == "json":
        emit(out.document(release.get("doc"), "json").rstrip("\n"))
    else:
        sys.stdout.write(out.release_header(release) + "\n" + out.document(release.get("doc"), "yaml")
                         + canary_section(release))
        sys.stdout.flush()
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, client: Client) -> int:
    try:
        prefix = validate_prefix(args.prefix or "")
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc
    answer = await client.call("GET", "/v1/namespaces", params={"prefix": prefix} if prefix else None)
    if args.json:
        emit(out.to_json(answer))
    elif not answer["namespaces"]:
        emit(f"no namespaces{' under ' + prefix if prefix else ''} (revision {answer['revision']})")
    else:
        emit(out.namespaces_table(answer["namespaces"]))
    return EXIT_OK


async def cmd_history(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    params = {"limit": str(args.limit)}
    if args.before is not None:
        params["before"] = str(args.before)
    answer = await client.call("GET", f"/v1/namespaces/{ns}/history", params=params)
    if args.json:
        emit(out.to_json(answer))
        return EXIT_OK
    emit(out.history_table(answer["entries"]) if answer["entries"] else f"no older history for {ns}")
    if answer.get("next_before") is not None:
        emit(f"# older: configcenter history {ns} --limit {args.limit} --before {answer['next_before']}")
    return EXIT_OK


async def cmd_diff(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    params = {"from": str(args.r1)}
    if args.r2 is not None:
        params["to"] = str(args.r2)
    answer = await client.call("GET", f"/v1/namespaces/{ns}/diff", params=params)
    if args.json:
        emit(out.to_json(answer))
    else:
        patch = answer.get("patch") or ""
        emit(patch.rstrip("\n") if patch else f"no differences between revision {answer['from']} and {answer['to']}")
    return EXIT_OK


async def cmd_rollback(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    body: dict[str, Any] = {"to_revision": args.to_revision, "message": args.message or "", "author": author_of(args)}
    release = await client.call("POST", f"/v1/namespaces/{ns}/rollback", body=body, if_revision=args.if_revision,
                                params=override_params(args) or None)
    if held(release):
        emit(out.to_json(release) if args.json else held_line(release))
        return EXIT_OK
    emit(out.to_json(release) if args.json else
         f"rolled back {ns} to revision {args.to_revision} as revision {release['revision']}")
    return await after_write(args, client, ns, release["revision"])


async def cmd_delete(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    params = {"message": args.message or "", "author": author_of(args), **override_params(args)}
    release = await client.call("DELETE", f"/v1/namespaces/{ns}", params=params, if_revision=args.if_revision)
    if held(release):
        emit(out.to_json(release) if args.json else held_line(release))
        return EXIT_OK
    emit(out.to_json(release) if args.json else
         f"deleted {ns} at revision {release['revision']} (version {release['version']})")
    return EXIT_OK


async def cmd_route(args: argparse.Namespace, client: Client) -> int:
    ns = namespace(args.ns)
    body = {"headers": header_pairs(args.header or [])}
    decision = await client.call("POST", f"/v1/namespaces/{ns}/route", body=body)
    emit(out.to_json(decision) if args.json else out.route_line(decision))
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace, client: Client) -> int:
    selectors = list(args.selectors or [])
    for sel in selectors:
        try:
            validate_prefix(sel) if sel.endswith("/") else validate_namespace(sel)
        except ConfigCenterError as exc:
            raise usage_error(exc.message) from exc
    options = WatchOptions(selectors, args.since, args.count, args.verbose, args.json, args.timeout)
    return await watch(client, options)


# --------------------------------------------------------------------------- local commands


def cmd_serve(args: argparse.Namespace) -> int:
    from .dev import run_serve

    return run_serve(args.config, listen=args.listen, etcd=args.etcd, prefix=args.prefix,
                     tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                     workers=args.workers)


def cmd_dev(args: argparse.Namespace) -> int:
    from .dev import DevOptions, run_dev

    examples = Path(args.examples) if args.examples else None
    data_dir = Path(args.data_dir) if args.data_dir else None
    return run_dev(DevOptions(listen=args.listen, examples=examples, data_dir=data_dir))


# --------------------------------------------------------------------------- parser


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def global_flags(suppress: bool) -> argparse.ArgumentParser:
    """The flags every command accepts, before or after its name (the subcommand copy never overrides)."""
    default: Any = argparse.SUPPRESS if suppress else None
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--server", default=default, metavar="URL",
                        help=f"server URL (default: $CONFIGCENTER_SERVER or {DEFAULT_SERVER})")
    parent.add_argument("--token", default=default, help="bearer token (default: $CONFIGCENTER_TOKEN)")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                        help="machine output: the server's JSON")
    parent.add_argument("--timeout", type=non_negative_float, default=default, metavar="S",
                        help=f"seconds per request (default {DEFAULT_TIMEOUT:g}); for watch: bounds the whole watch")
    parent.add_argument("--request-id", type=request_id_arg, default=default, metavar="ID",
                        help="X-Request-ID sent with the requests (default: a new id); shown with server errors")
    for flag, text in (("--ca-file", "CA bundle for https:// (default: system CAs)"),
                       ("--client-cert", "client certificate (mTLS)"), ("--client-key", "key of --client-cert")):
        env = "$CONFIGCENTER_" + flag[2:].replace("-", "_").upper()
        parent.add_argument(flag, default=default, metavar="FILE", help=f"PEM {text}; env {env}")
    return parent


def add_remote(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[global_flags(True)], help=help_text,
                                                     description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def add_local_commands(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the server", description="Run the configcenter server.")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="listen address (env CONFIGCENTER_LISTEN)")
    serve.add_argument("--etcd", metavar="URL[,URL]", help="etcd endpoints (env CONFIGCENTER_ETCD)")
    serve.add_argument("--prefix", metavar="P", help="etcd key prefix (env CONFIGCENTER_PREFIX)")
    serve.add_argument("--workers", type=positive_int, metavar="N",
                       help="server processes sharing the port (SO_REUSEPORT; env CONFIGCENTER_WORKERS; default 1)")
    for flag, text in (("--tls-cert", "serve HTTPS with this certificate chain"), ("--tls-key", "its private key"),
                       ("--tls-client-ca", "require client certificates from this CA (mTLS)")):
        serve.add_argument(flag, metavar="FILE", help=f"{text} (env CONFIGCENTER_{flag[2:].replace('-', '_').upper()})")
    serve.set_defaults(local=cmd_serve)
    dev = sub.add_parser("dev", help="embedded etcd + server + examples, for trying things out",
                         description="Start an embedded etcd and a server, load examples/, print a token.")
    dev.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    dev.add_argument("--examples", metavar="DIR", help="examples directory (default ./examples)")
    dev.add_argument("--data-dir", metavar="DIR", help="etcd data directory (default ./.run/etcd, kept)")
    dev.set_defaults(local=cmd_dev)


def add_write_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--message", help="release message")
    parser.add_argument("--author", help="author (default $CONFIGCENTER_AUTHOR)")
    parser.add_argument("--if-revision", type=positive_int, metavar="R",
                        help="only if the namespace is still at revision R (else exit 4)")
    add_override_flag(parser)


def add_read_commands(sub: Any) -> None:
    get = add_remote(sub, "get", cmd_get, "print a namespace's document")
    get.add_argument("ns")
    get.add_argument("--revision", type=positive_int, metavar="R", help="a past release instead of the current")
    get.add_argument("--format", choices=("yaml", "json"), default="yaml")
    get.add_argument("-o", "--output", choices=("yaml", "json"), help="an envelope {namespace, kind, revision, doc} "
                     "that push and apply accept unchanged")
    lst = add_remote(sub, "list", cmd_list, "list namespaces")
    lst.add_argument("--prefix", metavar="P", help="only namespaces under P (ends with '/')")
    hist = add_remote(sub, "history", cmd_history, "releases of a namespace, newest first")
    hist.add_argument("ns")
    hist.add_argument("--limit", type=positive_int, default=20, metavar="N")
    hist.add_argument("--before", type=positive_int, metavar="R", help="only releases older than revision R")
    diff = add_remote(sub, "diff", cmd_diff, "differences between two releases (R2 default: current)")
    diff.add_argument("ns")
    diff.add_argument("r1", type=positive_int, metavar="R1")
    diff.add_argument("r2", type=positive_int, metavar="R2", nargs="?")
    route = add_remote(sub, "route", cmd_route, "evaluate a route table for request headers")
    route.add_argument("ns")
    route.add_argument("--header", "-H", action="append", metavar="NAME=VALUE", help="repeatable")
    watch_p = add_remote(sub, "watch", cmd_watch, "print changes as they happen")
    watch_p.add_argument("selectors", nargs="*", metavar="NS|PREFIX/", help="default: everything")
    watch_p.add_argument("--since", type=int, metavar="R", help="resume after revision R")
    watch_p.add_argument("--count", type=positive_int, metavar="N", help="exit after N change events")
    watch_p.add_argument("--verbose", "-v", action="store_true", help="also print progress events")


def add_write_commands(sub: Any) -> None:
    push = add_remote(sub, "push", cmd_push, "publish a document (YAML or JSON file, '-' for stdin)")
    push.add_argument("ns")
    push.add_argument("file", metavar="FILE")
    push.add_argument("--kind", choices=KINDS, help="required when FILE is a plain document")
    add_write_flags(push)
    add_wait_flags(push)
    add_canary_flags(push)
    rollback = add_remote(sub, "rollback", cmd_rollback, "republish an earlier release")
    rollback.add_argument("ns")
    rollback.add_argument("--to-revision", type=positive_int, required=True, metavar="R")
    add_write_flags(rollback)
    add_wait_flags(rollback)
    delete = add_remote(sub, "delete", cmd_delete, "delete a namespace (its history stays)")
    delete.add_argument("ns")
    add_write_flags(delete)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="configcenter", parents=[global_flags(False)],
        description="Config center fronting etcd: run the server, push and inspect documents.",
        epilog="exit codes: 0 ok, 1 server error, 2 usage/input error, 3 server unreachable, 4 precondition failed, "
               "5 rollout rejected, 6 rollout wait timed out",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_local_commands(sub)
    add_migrate_command(sub)
    add_write_commands(sub)
    add_read_commands(sub)
    add_rollout_command(sub, add_remote)
    add_apply_command(sub, add_remote)
    add_edit_command(sub, add_remote)
    add_schema_command(sub, add_remote)
    add_release_commands(sub, add_remote)
    add_canary_commands(sub, add_remote, add_write_flags)
    return parser


# --------------------------------------------------------------------------- entry points


def resolve_globals(args: argparse.Namespace) -> None:
    """Fill --server/--token/--timeout/--ca-file/--client-cert/--client-key from the environment and defaults."""
    args.server = args.server or os.environ.get("CONFIGCENTER_SERVER") or DEFAULT_SERVER
    args.token = args.token or os.environ.get("CONFIGCENTER_TOKEN") or None
    for name in ("ca_file", "client_cert", "client_key"):
        setattr(args, name, getattr(args, name) or os.environ.get(f"CONFIGCENTER_{name.upper()}") or None)
    if args.timeout is None and args.command != "watch":
        args.timeout = DEFAULT_TIMEOUT


async def run_remote(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    try:
        context = client_ssl_context(args.ca_file, args.client_cert, args.client_key)
    except ValueError as exc:
        raise usage_error(str(exc)) from exc
    async with Client(args.server, args.token, args.timeout or None, context, args.request_id) as client:
        return await handler(args, client)


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command and return the exit code (errors are printed, never raised)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or --help)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if hasattr(args, "local"):
            return int(args.local(args))
        resolve_globals(args)
        with out.escaped_output():  # what a server sent never reaches the terminal raw (output.py)
            return asyncio.run(run_remote(args))
    except CliError as err:
        print(f"error: {out.printable(err.message)}", file=sys.stderr, flush=True)
        return err.code
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the command and raises ``SystemExit`` with its exit code."""
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
