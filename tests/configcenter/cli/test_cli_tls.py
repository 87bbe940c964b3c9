"""The ``configcenter`` CLI against a real HTTPS server: ``--ca-file``, client certificates, env variables.

As in ``test_cli.py`` the server runs in the test's event loop and each CLI call in a
worker thread, its output captured by ``capsys``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_cli
from helpers import Certs, RunningServer

NS = "tls/app"


async def test_push_get_history_over_https_with_ca_file(
    make_tls_server: Any, certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    server: RunningServer = await make_tls_server()
    doc = tmp_path / "doc.yaml"
    doc.write_text("kind: config\nmessage: over tls\ndoc: {a: 1}\n")
    ca = ["--ca-file", str(certs.ca)]
    pushed = await run_cli(capsys, server, "push", NS, str(doc), *ca)
    assert pushed.code == 0, pushed.err
    match = re.fullmatch(r"pushed tls/app revision (\d+) \(version 1\)\n", pushed.out)
    assert match, pushed
    revision = int(match.group(1))
    got = await run_cli(capsys, server, "get", NS, "--format", "json", *ca)
    assert got.code == 0 and '"a": 1' in got.out, got
    history = await run_cli(capsys, server, "history", NS, *ca)
    assert history.code == 0 and str(revision) in history.out and "over tls" in history.out, history


async def test_ca_file_from_the_environment_and_a_missing_ca_is_an_unreachable_server(
    make_tls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: RunningServer = await make_tls_server()
    unverified = await run_cli(capsys, server, "list")  # system CAs only: the certificate is not trusted
    assert unverified.code == 3
    assert unverified.err.startswith(f"error: cannot reach server at {server.url}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in unverified.err
    monkeypatch.setenv("CONFIGCENTER_CA_FILE", str(certs.ca))
    listed = await run_cli(capsys, server, "list")
    assert listed.code == 0, listed.err


async def test_client_certificate_for_an_mtls_server(
    make_tls_server: Any, certs: Certs, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server: RunningServer = await make_tls_server(mtls=True)
    without = await run_cli(capsys, server, "list", "--ca-file", str(certs.ca))
    assert without.code == 3, without
    flags = await run_cli(capsys, server, "list", "--ca-file", str(certs.ca),
                          "--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key))
    assert flags.code == 0, flags.err
    monkeypatch.setenv("CONFIGCENTER_CA_FILE", str(certs.ca))
    monkeypatch.setenv("CONFIGCENTER_CLIENT_CERT", str(certs.client_pem))  # certificate and key in one file
    from_env = await run_cli(capsys, server, "list")
    assert from_env.code == 0, from_env.err


async def test_unusable_ca_or_certificate_files_exit_2(
    make_tls_server: Any, certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    server: RunningServer = await make_tls_server()
    missing = tmp_path / "missing.pem"
    bad_ca = await run_cli(capsys, server, "list", "--ca-file", str(missing))
    assert bad_ca.code == 2 and bad_ca.err.startswith(f"error: CA file {missing}: ") and bad_ca.err.count("\n") == 1
    bad_cert = await run_cli(capsys, server, "list", "--ca-file", str(certs.ca), "--client-cert", str(certs.ca))
    assert bad_cert.code == 2 and bad_cert.err.startswith(f"error: client certificate {certs.ca}: cannot load")
    key_only = await run_cli(capsys, server, "list", "--client-key", str(certs.client_key))
    assert key_only.code == 2 and key_only.err == "error: client_key given without client_cert\n"
