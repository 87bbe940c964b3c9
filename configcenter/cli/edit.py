"""``configcenter edit NS``: edit a namespace's envelope in ``$VISUAL`` / ``$EDITOR``, then push it.

The current release is written as an envelope (``get -o yaml``) to a temporary file and the editor
opened on it.  On save the file is checked exactly as ``apply`` checks one (envelope, kind schema,
route compile, the namespace's registered schema); a problem re-opens the editor with the error as
``# error:`` comment lines at the top (as ``kubectl edit`` does).  A valid file is diffed against
the release it came from and pushed with ``If-Match`` of that revision, so a concurrent change is
exit 4 (the edited file is kept and its path printed).  Saving an unchanged or empty file cancels.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..codec import dump_yaml
from ..diffing import structured_diff, unified_patch
from ..errors import ConfigCenterError
from ..model import validate_namespace
from .apply import check, server_schemas
from .apply_files import Source, load_source
from .client import EXIT_OK, EXIT_PRECONDITION, Client, CliError, usage_error
from .envelope import from_release
from .release_cli import held, held_line

ERROR_PREFIX = "# error: "
HEADER = "# Edit {ns} and save to push it (revision {revision}); an empty file or no change cancels.\n"


def editor_command() -> list[str]:
    """``$VISUAL``, else ``$EDITOR``, else ``vi``, split like a shell would."""
    return shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")


def run_editor(path: Path) -> None:
    try:
        done = subprocess.run([*editor_command(), str(path)], check=False)
    except OSError as exc:
        raise usage_error(f"cannot start the editor {editor_command()[0]!r}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        raise CliError(f"the editor exited with {done.returncode}; nothing was pushed (your file: {path})")


def body_of(text: str) -> str:
    """The file without the error comments a previous attempt put at its top."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(ERROR_PREFIX):
        lines.pop(0)
    return "".join(lines)


def meaningful(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


async def checked(client: Client, path: Path, ns: str, current: dict[str, Any]) -> Source | str:
    """The edited file as a source to push, or the problem to show in the editor."""
    try:
        source = load_source(path, None)
    except CliError as exc:
        return exc.message.removeprefix(f"{path}: ")
    if source.ns != ns:
        return f"namespace must stay {ns} (got {source.ns}); use push or apply for another namespace"
    schema = (await server_schemas(client, [ns])).get(ns)
    problem = check(source, source.kind or current["kind"], schema)
    return problem.removeprefix(f"{path}: ") if problem else source


async def edit_loop(client: Client, path: Path, ns: str, current: dict[str, Any]) -> Source | None:
    """Open the editor until the file is valid (a Source), or the user cancels (None)."""
    original = body_of(path.read_text())
    previous_problem_text: str | None = None
    while True:
        await asyncio.to_thread(run_editor, path)
        text = body_of(path.read_text())
        if not meaningful(text) or text == original:
            return None
        if text == previous_problem_text:
            raise usage_error(f"{path}: still invalid; nothing was pushed (your file is kept)")
        result = await checked(client, path, ns, current)
        if isinstance(result, Source):
            return result
        comments = "".join(f"{ERROR_PREFIX}{line}\n" for line in result.splitlines())
        path.write_text(comments + text)
        previous_problem_text = text


async def push_edit(client: Client, source: Source, current: dict[str, Any], args: argparse.Namespace,
                    path: Path) -> int:
    kind = source.kind or current["kind"]
    if kind == current["kind"] and not structured_diff(current["doc"], source.doc):
        print(f"no changes to {source.ns}", flush=True)
        return EXIT_OK
    print(unified_patch(current["doc"], source.doc, f"{source.ns}@{current['revision']}", f"{source.ns} (edited)"),
          end="", flush=True)
    body = {"kind": kind, "doc": source.doc, "message": args.message or source.message or "configcenter edit",
            "author": args.author or source.author or os.environ.get("CONFIGCENTER_AUTHOR") or ""}
    try:
        release = await client.call("PUT", f"/v1/namespaces/{source.ns}", body=body, if_revision=current["revision"])
    except CliError as exc:
        if exc.code == EXIT_PRECONDITION:
            raise CliError(f"{source.ns} changed since revision {current['revision']} while you edited; "
                           f"nothing was pushed; your version is in {path}", EXIT_PRECONDITION) from exc
        raise CliError(f"{exc.message}; your version is in {path}", exc.code, exc.status) from exc
    if held(release):  # a review policy holds it as a proposal
        print(held_line(release), flush=True)
        return EXIT_OK
    print(f"pushed {source.ns} revision {release['revision']} (version {release['version']})", flush=True)
    return EXIT_OK


async def cmd_edit(args: argparse.Namespace, client: Client) -> int:
    try:
        ns = validate_namespace(args.ns)
    except ConfigCenterError as exc:
        raise usage_error(exc.message) from exc
    current = await client.call("GET", f"/v1/namespaces/{ns}")
    workdir = Path(tempfile.mkdtemp(prefix="configcenter-edit-"))
    path = workdir / f"{ns.replace('/', '~')}.yaml"
    path.write_text(HEADER.format(ns=ns, revision=current["revision"]) + dump_yaml(from_release(current)))
    source = await edit_loop(client, path, ns, current)
    if source is None:
        print(f"edit cancelled: {ns} is unchanged", flush=True)
        code = EXIT_OK
    else:
        code = await push_edit(client, source, current, args, path)
    if code == EXIT_OK:
        path.unlink(missing_ok=True)
        workdir.rmdir()
    return code


def add_edit_command(sub: Any, add_remote: Any) -> None:
    """``edit`` (``add_remote`` is ``main.add_remote``: global flags and the handler)."""
    parser = add_remote(sub, "edit", cmd_edit, "edit a namespace in $EDITOR, check it, push it with If-Match")
    parser.add_argument("ns")
    parser.add_argument("-m", "--message", help="release message (default: the envelope's, else 'configcenter edit')")
    parser.add_argument("--author", help="author (default $CONFIGCENTER_AUTHOR)")

