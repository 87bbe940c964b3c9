"""``configcenter migrate``: move history keys to the layout where no name's range covers another's.

Talks to etcd directly (with the server's configuration: ``--config``, ``--etcd``, ``--prefix``),
not to a server: the migration is an operator's step of an upgrade (``server/etcd/migration.py`` says
when to run it).  Safe to run again, and to rerun after an interruption.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigCenterError
from .client import EXIT_OK, EXIT_SERVER_ERROR, EXIT_UNREACHABLE, EXIT_USAGE, CliError

if TYPE_CHECKING:
    from ..server.etcd.migration import MigrationReport

EXIT_CONFLICTS = EXIT_SERVER_ERROR  # some keys could not move (see the report)


def add_migrate_command(sub: Any) -> None:
    parser = sub.add_parser("migrate", help="move history keys to the current etcd key layout (run once per prefix)",
                            description="Move history keys from history/<ns>/<version> to history/<ns>#<version>. "
                                        "Run it once every server replica runs this version; safe to rerun.")
    parser.add_argument("--config", metavar="FILE", help="the server's YAML configuration file")
    parser.add_argument("--etcd", metavar="URL[,URL]", help="etcd endpoints (env CONFIGCENTER_ETCD)")
    parser.add_argument("--prefix", metavar="P", help="etcd key prefix (env CONFIGCENTER_PREFIX)")
    parser.add_argument("--dry-run", action="store_true", help="only count the keys that would move")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(local=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from ..server.settings import load_settings  # the etcd client stack loads only for this command

    try:
        settings = load_settings(args.config, etcd=args.etcd, prefix=args.prefix)
    except ConfigCenterError as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    try:
        report = asyncio.run(_run(settings, dry_run=args.dry_run, quiet=args.json))
    except ConfigCenterError as exc:
        raise CliError(str(exc), EXIT_UNREACHABLE) from exc
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_json()).decode() + "\n")
    else:
        sys.stdout.write(_summary(report, args.dry_run) + "\n")
    return EXIT_CONFLICTS if report.conflicts else EXIT_OK


async def _run(settings: Any, *, dry_run: bool, quiet: bool) -> MigrationReport:
    from ..server.etcd import client as _etcd
    from ..server.etcd.migration import migrate_history
    from ..server.runtime import client_for

    client = client_for(settings)
    await client.connect()
    try:
        progress = None if quiet else (lambda line: sys.stderr.write(line + "\n"))
        return await migrate_history(client.kv, _etcd.KeyLayout(settings.prefix), timeout=settings.watch.etcd_timeout,
                                     progress=progress, dry_run=dry_run)
    finally:
        await client.close()


def _summary(report: MigrationReport, dry_run: bool) -> str:
    if dry_run:
        return f"{report.remaining} history keys in the old layout would move"
    lines = [f"moved {report.moved} history keys; {report.remaining} left in the old layout"]
    if report.closed:
        lines.append("migration complete: servers now read only the new layout")
    for key in report.conflicts[:20]:
        lines.append(f"conflict: {key} (its new key exists: an older server wrote after the migration began)")
    return "\n".join(lines)
