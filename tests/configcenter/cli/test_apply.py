"""Configuration as code against a real server and etcd: ``get -o`` round trips, ``apply``, ``schema``.

The server runs in the test's event loop, so every CLI call runs in a worker thread with its
output captured.  "Writes nothing" is checked on etcd's own revision.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from cli_helpers import run_cli
from configcenter.cli import apply
from configcenter.cli.apply_files import load_sources
from configcenter.cli.client import Client
from configcenter.server.security import Principal
from helpers import TEST_PRINCIPALS, WRITER, RunningServer

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
ROUTES = {"service": "shop", "rules": [], "default": {"cluster": "blue"}}
PLAIN_WRITER = "plain-writer-token"  # role writer: may push, may not delete (prune)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def table(out: str) -> dict[str, tuple[str, str]]:
    """ns -> (ACTION, RESULT) from apply's summary table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("NS "))
    rows = [line.split() for line in lines[start + 1:] if line and not line.startswith(("applied:", "dry run:"))]
    return {r[0]: (r[1], r[2]) for r in rows}


async def revision(server: RunningServer) -> int:
    return await server.runtime.store.current_revision()


async def doc_of(http: aiohttp.ClientSession, server: RunningServer, ns: str) -> Any:
    async with http.get(f"{server.url}/v1/namespaces/{ns}") as resp:
        return (await resp.json())["doc"] if resp.status == 200 else resp.status


def config_set(root: Path) -> Path:
    """shop/config by its path (no namespace key), shop/routes named in its envelope."""
    write(root / "shop" / "config.yaml", "kind: config\nmessage: first\ndoc:\n  timeout_ms: 100\n  retries: 2\n")
    write(root / "any-name.yaml", "namespace: shop/routes\nkind: routes\ndoc:\n" + "".join(
        f"  {line}\n" for line in orjson.dumps(ROUTES).decode().split("\n")))
    return root


# --------------------------------------------------------------------------- get -o / push


async def test_get_envelope_round_trips_through_push(server: RunningServer, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path / "v1.yaml", "kind: config\ndoc:\n  a: 1\n  b: {c: x}\n")
    assert (await run_cli(capsys, server, "push", "team/app", str(first))).code == 0
    for fmt in ("yaml", "json"):
        got = await run_cli(capsys, server, "get", "team/app", "-o", fmt)
        assert got.code == 0
        saved = write(tmp_path / f"env.{fmt}", got.out)
        envelope = orjson.loads(got.out) if fmt == "json" else None
        if envelope is not None:
            assert set(envelope) == {"namespace", "kind", "revision", "doc"} and envelope["namespace"] == "team/app"
        pushed = await run_cli(capsys, server, "push", "team/app", str(saved))  # no --kind, unchanged file
        assert pushed.code == 0, pushed
    plain = write(tmp_path / "plain.yaml", "a: 2\n")  # a plain document: the existing kind is kept
    assert (await run_cli(capsys, server, "push", "team/app", str(plain))).code == 0
    got = await run_cli(capsys, server, "--json", "get", "team/app")
    assert orjson.loads(got.out)["kind"] == "config" and orjson.loads(got.out)["doc"] == {"a": 2}


async def test_push_refusals_send_nothing(server: RunningServer, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    plain = write(tmp_path / "plain.yaml", "a: 1\n")
    before = await revision(server)
    new_ns = await run_cli(capsys, server, "push", "team/new", str(plain))
    assert new_ns.code == 2 and "needs --kind" in new_ns.err
    other = write(tmp_path / "other.yaml", "namespace: team/other\nkind: config\ndoc: {a: 1}\n")
    wrong = await run_cli(capsys, server, "push", "team/app", str(other))
    assert wrong.code == 2 and "for namespace 'team/other'" in wrong.err
    assert await revision(server) == before


# --------------------------------------------------------------------------- apply


async def test_apply_creates_changes_and_skips_unchanged(server: RunningServer, http: aiohttp.ClientSession,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = config_set(tmp_path / "cfg")
    created = await run_cli(capsys, server, "apply", str(root))
    assert created.code == 0, created
    assert table(created.out) == {"shop/config": ("create", "done"), "shop/routes": ("create", "done")}
    assert await doc_of(http, server, "shop/config") == {"timeout_ms": 100, "retries": 2}
    assert await doc_of(http, server, "shop/routes") == ROUTES
    write(root / "shop" / "config.yaml", "kind: config\ndoc:\n  timeout_ms: 250\n  retries: 2\n")
    changed = await run_cli(capsys, server, "apply", str(root))
    assert changed.code == 0, changed
    assert "-timeout_ms: 100\n+timeout_ms: 250\n" in changed.out
    assert table(changed.out) == {"shop/config": ("update", "done"), "shop/routes": ("unchanged", "skipped")}
    assert (await doc_of(http, server, "shop/config"))["timeout_ms"] == 250
    before = await revision(server)
    again = await run_cli(capsys, server, "--json", "apply", str(root))
    report = orjson.loads(again.out)
    assert again.code == 0 and [s["action"] for s in report["steps"]] == ["unchanged", "unchanged"]
    assert await revision(server) == before


async def test_dry_run_prints_the_changes_and_writes_nothing(server: RunningServer, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = config_set(tmp_path / "cfg")
    assert (await run_cli(capsys, server, "apply", str(root))).code == 0
    write(root / "shop" / "config.yaml", "kind: config\ndoc:\n  timeout_ms: 999\n  retries: 2\n")
    write(root / "shop" / "extra.yaml", "kind: config\ndoc: {x: 1}\n")
    (root / "any-name.yaml").unlink()
    before = await revision(server)
    dry = await run_cli(capsys, server, "apply", str(root), "--dry-run", "--prune", "shop/")
    assert dry.code == 0, dry
    assert "+timeout_ms: 999" in dry.out and "+x: 1" in dry.out and "+++ /dev/null (no file: pruned)" in dry.out
    assert "dry run: 1 create, 1 delete, 1 update; nothing was written" in dry.out
    as_json = orjson.loads((await run_cli(capsys, server, "--json", "apply", str(root), "--dry-run")).out)
    assert {s["ns"]: s["status"] for s in as_json["steps"]} == {"shop/config": "dry-run", "shop/extra": "dry-run"}
    assert await revision(server) == before


async def test_an_invalid_file_in_the_set_writes_nothing(server: RunningServer, http: aiohttp.ClientSession,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = config_set(tmp_path / "cfg")
    write(root / "bad" / "routes.yaml", "kind: routes\ndoc:\n  service: x\n  rules: []\n")  # no default
    write(root / "broken" / "config.yaml", "kind: config\ndoc: {a: [1, 2}\n")  # YAML syntax error
    before = await revision(server)
    result = await run_cli(capsys, server, "apply", str(root))
    assert result.code == 2, result
    assert "bad/routes.yaml" in result.err and "$" in result.err and "broken/config.yaml" in result.err
    assert "nothing was written" in result.err
    assert await revision(server) == before
    assert await doc_of(http, server, "shop/config") == 404


async def test_a_concurrent_change_fails_that_namespace_only(server: RunningServer, http: aiohttp.ClientSession,
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = config_set(tmp_path / "cfg")
    assert (await run_cli(capsys, server, "apply", str(root))).code == 0
    write(root / "shop" / "config.yaml", "kind: config\ndoc:\n  timeout_ms: 1\n  retries: 2\n")
    write(root / "any-name.yaml", "namespace: shop/routes\nkind: routes\ndoc:\n  service: shop\n  rules: []\n"
                                  "  default: {cluster: green}\n")
    args = argparse.Namespace(message=None, author=None, json=False, dry_run=False)
    sources, problems = load_sources([str(root)])
    async with Client(server.url, WRITER, 10) as client:
        steps, problems = await apply.plan(client, sources, None)
        assert not problems and [s.action for s in steps] == ["update", "update"]
        # someone else writes shop/config between apply's diff and its push
        async with http.put(f"{server.url}/v1/namespaces/shop/config", headers=server.auth(),
                            json={"kind": "config", "doc": {"timeout_ms": 7}}) as resp:
            assert resp.status == 200
        for step in steps:
            await apply.execute(client, step, args)
    assert [s.status for s in steps] == ["conflict", "done"]
    assert apply.exit_code(steps) == 4
    assert "changed since revision" in (steps[0].error or "")
    assert await doc_of(http, server, "shop/config") == {"timeout_ms": 7}  # the other writer's, not ours
    assert (await doc_of(http, server, "shop/routes"))["default"] == {"cluster": "green"}
    # end to end: the re-run diffs against the new revision and exits 0
    rerun = await run_cli(capsys, server, "apply", str(root))
    assert rerun.code == 0 and "-timeout_ms: 7\n+timeout_ms: 1\n" in rerun.out


async def test_prune_deletes_namespaces_without_a_file(
        make_server: Callable[..., Awaitable[RunningServer]], http: aiohttp.ClientSession, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    writer = Principal.from_token("plain-writer", PLAIN_WRITER, "writer")
    server = await make_server(tokens=(*TEST_PRINCIPALS, writer))
    root = config_set(tmp_path / "cfg")
    write(root / "shop" / "old.yaml", "kind: config\ndoc: {old: true}\n")
    write(root / "other" / "config.yaml", "kind: config\ndoc: {keep: true}\n")
    assert (await run_cli(capsys, server, "apply", str(root))).code == 0
    (root / "shop" / "old.yaml").unlink()
    (root / "other" / "config.yaml").unlink()  # outside the prune prefix: kept
    refused = await run_cli(capsys, server, "apply", str(root), "--prune", "shop/", token=PLAIN_WRITER)
    assert refused.code == 1 and "--prune needs a token with the admin role" in refused.out
    assert await doc_of(http, server, "shop/old") == {"old": True}
    pruned = await run_cli(capsys, server, "apply", str(root), "--prune", "shop/")
    assert pruned.code == 0 and table(pruned.out)["shop/old"] == ("delete", "done"), pruned
    assert await doc_of(http, server, "shop/old") == 404
    assert await doc_of(http, server, "other/config") == {"keep": True}


async def test_examples_apply_as_is(server: RunningServer, capsys: pytest.CaptureFixture[str]) -> None:
    first = await run_cli(capsys, server, "--json", "apply", str(EXAMPLES), "--wait", "--wait-timeout", "5")
    report = orjson.loads(first.out)
    assert first.code == 0, first
    assert {s["ns"]: s["status"] for s in report["steps"]} == {
        "orders/config": "done", "orders/routes": "done", "payment/routes": "done"}
    again = await run_cli(capsys, server, "apply", str(EXAMPLES))
    assert again.code == 0 and set(table(again.out).values()) == {("unchanged", "skipped")}


# --------------------------------------------------------------------------- schema


async def test_schema_cli_and_apply_checks_the_namespace_schema(server: RunningServer, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    schema = write(tmp_path / "shop.schema.yaml", "type: object\nrequired: [timeout_ms]\n"
                                                  "properties:\n  timeout_ms: {type: integer, maximum: 500}\n")
    assert (await run_cli(capsys, server, "schema", "set", "shop/", str(schema), "-m", "bounded")).code == 0
    listed = await run_cli(capsys, server, "schema", "list")
    assert "shop/" in listed.out and "bounded" in listed.out
    got = await run_cli(capsys, server, "schema", "get", "shop/")
    assert got.code == 0 and "maximum: 500" in got.out
    root = config_set(tmp_path / "cfg")
    write(root / "shop" / "config.yaml", "kind: config\ndoc:\n  timeout_ms: 900\n")
    before = await revision(server)
    dry = await run_cli(capsys, server, "apply", str(root), "--dry-run")
    assert dry.code == 2 and "schema registered for 'shop/' at $.timeout_ms" in dry.err, dry
    assert await revision(server) == before
    write(root / "shop" / "config.yaml", "kind: config\ndoc:\n  timeout_ms: 400\n")
    assert (await run_cli(capsys, server, "apply", str(root))).code == 0
    stricter = write(tmp_path / "strict.json", '{"properties": {"timeout_ms": {"maximum": 100}}}')
    conflict = await run_cli(capsys, server, "schema", "set", "shop/", str(stricter))
    assert conflict.code == 1 and "shop/config" in conflict.err and "HTTP 409" in conflict.err
    assert (await run_cli(capsys, server, "schema", "set", "shop/", str(stricter), "--force")).code == 0


async def test_apply_refuses_an_unusable_file_set_locally(server: RunningServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    direct = write(tmp_path / "direct.yaml", "kind: config\ndoc: {a: 1}\n")  # no namespace, not in a directory
    twice = tmp_path / "twice"
    write(twice / "a" / "b.yaml", "kind: config\ndoc: {a: 1}\n")
    write(twice / "other.yaml", "namespace: a/b\nkind: config\ndoc: {a: 2}\n")
    kindless = write(tmp_path / "kindless" / "new" / "ns.yaml", "doc: {a: 1}\n")  # new namespace, no kind
    plain = write(tmp_path / "plain" / "x" / "y.yaml", "a: 1\n")  # not an envelope
    before = await revision(server)
    cases = [
        ([str(direct)], "no 'namespace' in the envelope"),
        ([str(twice)], "namespace a/b is also in"),
        ([str(kindless.parent.parent)], "new/ns does not exist yet: the envelope needs a kind"),
        ([str(plain.parent.parent)], "not an envelope"),
        ([str(tmp_path / "missing")], "no such file or directory"),
        ([str(twice), "--prune", ""], "--prune needs a prefix"),
        ([str(twice), "--prune", "team"], "must end with '/'"),
    ]
    for paths, message in cases:
        result = await run_cli(capsys, server, "apply", *paths)
        assert result.code == 2 and message in result.err, (paths, result)
    assert await revision(server) == before
