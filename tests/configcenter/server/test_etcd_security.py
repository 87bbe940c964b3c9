"""The server's connection to etcd: TLS (with client certificates) and etcd authentication.

Real etcd processes, set up as ``docs/security.md`` says (``etcdctl`` users and roles, a role
limited to the prefix), with ``--auth-token-ttl=2`` so token expiry happens inside a test.
Run against etcd 3.4 too: ``CONFIGCENTER_ETCD_BIN=/usr/bin/etcd pytest tests/configcenter/server``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.cli.embedded_etcd import EtcdCluster, EtcdTLSFiles, free_port
from configcenter.errors import ConfigError
from configcenter.server.security import Principal, etcd_tls_material
from configcenter.server.settings import EtcdCredentials, EtcdTLS, exposure_warnings, load_settings
from helpers import (
    READER,
    TEST_PRINCIPALS,
    Certs,
    RunningServer,
    SSEStream,
    envelope,
    eventually,
    server_settings,
    start_server,
)

AUTH_PREFIX = "/cc-auth/"
PASSWORDS = {"root": "root-pw", "configcenter": "cc-pw", "reader": "reader-pw", "nobody": "nobody-pw"}


def enable_auth(cluster: EtcdCluster, prefix: str) -> None:
    """Least privilege as in docs/security.md: ``configcenter`` may read and write under ``prefix`` only."""
    ctl = cluster.ctl
    for user, password in PASSWORDS.items():
        ctl("user", "add", f"{user}:{password}")
    ctl("user", "grant-role", "root", "root")
    ctl("role", "add", "configcenter")
    ctl("role", "grant-permission", "configcenter", "--prefix=true", "readwrite", prefix)
    ctl("user", "grant-role", "configcenter", "configcenter")
    ctl("role", "add", "configcenter-read")
    ctl("role", "grant-permission", "configcenter-read", "--prefix=true", "read", prefix)
    ctl("user", "grant-role", "reader", "configcenter-read")
    ctl("auth", "enable")  # "nobody" has no role at all


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1, extra_args=["--auth-token-ttl=2"]) as cluster:
        enable_auth(cluster, AUTH_PREFIX)
        yield cluster


@pytest.fixture(scope="module")
def tls_etcd(certs: Certs) -> Iterator[EtcdCluster]:
    files = EtcdTLSFiles(certs.ca, certs.server_cert, certs.server_key, client_cert_auth=True,
                         client_cert=certs.client_cert, client_key=certs.client_key)
    with EtcdCluster(1, tls=files) as cluster:
        yield cluster


@pytest.fixture
async def servers() -> AsyncIterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        await server.stop()


async def start(servers: list[RunningServer], cluster: EtcdCluster, *, wait: bool = True,
                **overrides: Any) -> RunningServer:
    server = await start_server(server_settings(cluster, **overrides), cluster, wait=wait)
    servers.append(server)
    return server


def as_user(tmp_path: Path, user: str, password: str | None = None) -> dict[str, Any]:
    """Settings overrides: ``user`` with its password in a file, under its own sub-prefix of AUTH_PREFIX."""
    secret = tmp_path / f"{user}-{uuid.uuid4().hex[:6]}.pw"
    secret.write_text((password or PASSWORDS[user]) + "\n")
    return {"prefix": f"{AUTH_PREFIX}{uuid.uuid4().hex[:12]}/",
            "etcd_auth": EtcdCredentials(user, password_file=str(secret))}


@asynccontextmanager
async def subscribe(http: aiohttp.ClientSession, server: RunningServer) -> AsyncIterator[SSEStream]:
    async with http.get(f"{server.url}/v1/watch", params=[("ns", "sec/")]) as resp:
        assert resp.status == 200
        stream = SSEStream(resp)
        await stream.until(lambda e: e.event == "reset")
        yield stream


async def push(http: aiohttp.ClientSession, server: RunningServer, doc: dict[str, Any]) -> tuple[int, Any]:
    async with http.put(f"{server.url}/v1/namespaces/sec/app", json=envelope(doc), headers=server.auth()) as resp:
        return resp.status, await resp.json()


async def readiness(http: aiohttp.ClientSession, server: RunningServer,
                    token: str | None = READER) -> tuple[int, dict[str, Any]]:
    """``/readyz`` as a reader token holder sees it (the details); ``token=None``: as anyone."""
    headers = server.auth(token) if token else {}
    async with http.get(f"{server.url}/readyz", headers=headers) as resp:
        return resp.status, await resp.json()


def failed_attempts(server: RunningServer) -> float:
    """How many times the server's watch of etcd failed (each failure is one retry after backoff)."""
    return server.runtime.metrics.values["configcenter_watch_reconnects_total"]


async def round_trip(http: aiohttp.ClientSession, server: RunningServer) -> None:
    """Push, read back, read history, and see the change on an SSE stream (the mirror's watch)."""
    async with subscribe(http, server) as stream:
        status, release = await push(http, server, {"round": "trip"})
        assert status == 201, release
        (change,) = await stream.changes(1)
        assert change.id == release["revision"] and change.data["doc"] == {"round": "trip"}
    async with http.get(f"{server.url}/v1/namespaces/sec/app") as resp:
        assert resp.status == 200 and (await resp.json())["revision"] == release["revision"]
    async with http.get(f"{server.url}/v1/namespaces/sec/app/history") as resp:
        assert resp.status == 200 and len((await resp.json())["entries"]) >= 1


# ------------------------------------------------------------------------------------------ TLS to etcd


async def test_server_reaches_etcd_over_tls_with_a_client_certificate(
    tls_etcd: EtcdCluster, certs: Certs, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{free_port()}\n"
        f"etcd:\n  endpoints: [{tls_etcd.urls[0]}]\n  prefix: /cc-tls-{uuid.uuid4().hex[:8]}/\n"
        f"  tls: {{ca_file: {certs.ca}, cert_file: {certs.client_cert}, key_file: {certs.client_key}}}\n"
    )
    settings = load_settings(config, env={})
    assert tls_etcd.urls[0].startswith("https://") and settings.etcd_tls is not None
    server = await start(servers, tls_etcd, etcd_endpoints=settings.etcd_endpoints, prefix=settings.prefix,
                         etcd_tls=settings.etcd_tls)
    await round_trip(http, server)


async def test_etcd_requiring_client_certificates_refuses_a_server_without_one(
    tls_etcd: EtcdCluster, certs: Certs, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    server = await start(servers, tls_etcd, wait=False, etcd_tls=EtcdTLS(ca_file=str(certs.ca)))
    await eventually(lambda: failed_attempts(server) >= 3, timeout=30)  # refused again and again, never ready
    status, body = await readiness(http, server)
    assert status == 503 and body["status"] == "starting"
    status, answer = await push(http, server, {"a": 1})
    assert status == 503 and answer["error"]["code"] == "etcd_unavailable"


def test_etcd_tls_material_errors_are_one_line(tmp_path: Path, certs: Certs) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nope\n")
    with pytest.raises(ConfigError, match=rf"^etcd.tls.ca_file {garbage}: not a readable PEM CA bundle"):
        etcd_tls_material(EtcdTLS(ca_file=str(garbage)), "127.0.0.1")
    with pytest.raises(ConfigError, match=r"^etcd.tls: cannot load certificate"):
        etcd_tls_material(EtcdTLS(cert_file=str(certs.client_cert), key_file=str(certs.server_key)), "127.0.0.1")
    material = etcd_tls_material(EtcdTLS(ca_file=str(certs.ca)), "localhost")
    assert material.server_name == "localhost" and material.ca_cert == certs.ca.read_bytes()


# ------------------------------------------------------------------------------------------ etcd auth


async def test_server_with_an_etcd_user_pushes_reads_and_streams(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    server = await start(servers, auth_etcd, **as_user(tmp_path, "configcenter"))
    await round_trip(http, server)
    assert (await readiness(http, server))[0] == 200


@pytest.mark.slow
async def test_expired_tokens_are_renewed_for_writes_and_for_a_reconnecting_watch(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    watcher = await start(servers, auth_etcd, **as_user(tmp_path, "configcenter"))
    writer = await start(servers, auth_etcd, prefix=watcher.prefix, etcd_auth=watcher.settings.etcd_auth)
    keeper = watcher.runtime.client.keeper
    assert keeper is not None
    async with subscribe(http, watcher) as stream:
        assert (await push(http, writer, {"n": 1}))[0] == 201
        await stream.changes(1)
        first = keeper.token
        await asyncio.sleep(3.0)  # > --auth-token-ttl=2 without a call: both servers' tokens expired
        watcher.runtime.mirror.drop_connection()  # the watch comes back with the expired token, is refused, renews
        status, release = await push(http, writer, {"n": 2})  # the writer's calls are refused once and renewed
        assert status == 200, release
        (change,) = await stream.changes(1, timeout=10)
        assert change.id == release["revision"]
        assert keeper.token != first and keeper.problem is None


async def test_wrong_password_is_not_ready_writes_503_and_a_fixed_password_file_recovers(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="configcenter.etcd")
    overrides = as_user(tmp_path, "configcenter", password="not-the-password")
    server = await start(servers, auth_etcd, wait=False, **overrides)
    body: dict[str, Any] = {}

    async def refused() -> bool:
        nonlocal body
        status, body = await readiness(http, server)
        return status == 503 and "rejected the credentials" in body.get("message", "")

    await eventually(refused, timeout=5)
    assert body["status"] == "starting" and "'configcenter'" in body["message"]
    status, answer = await push(http, server, {"a": 1})
    assert status == 503 and answer["error"]["code"] == "etcd_unavailable"
    assert answer["error"]["message"].startswith("etcd refused access, cannot ")
    assert "rejected the credentials of user 'configcenter'" in answer["error"]["message"]
    attempts = failed_attempts(server)
    await eventually(lambda: failed_attempts(server) >= attempts + 3, timeout=30)  # several more: one ERROR line
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "rejected the credentials" in r.message]
    assert len(errors) == 1
    Path(overrides["etcd_auth"].password_file).write_text(PASSWORDS["configcenter"])  # rotated in place
    await eventually(lambda: server.runtime.mirror.ready.is_set(), timeout=10)
    await round_trip(http, server)


async def test_user_without_permission_on_the_prefix_is_not_ready_and_writes_503(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    server = await start(servers, auth_etcd, wait=False, **as_user(tmp_path, "nobody"))
    body: dict[str, Any] = {}

    async def denied() -> bool:
        nonlocal body
        status, body = await readiness(http, server)
        return status == 503 and "not permitted" in body.get("message", "")

    await eventually(denied, timeout=5)
    assert "etcd user 'nobody'" in body["message"] and server.prefix in body["message"]
    status, answer = await push(http, server, {"a": 1})
    assert status == 503 and "etcd user 'nobody' is not permitted" in answer["error"]["message"]


async def test_read_only_user_serves_reads_and_refuses_writes_with_503(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    server = await start(servers, auth_etcd, **as_user(tmp_path, "reader"))
    async with http.get(f"{server.url}/v1/namespaces") as resp:
        assert resp.status == 200
    status, answer = await push(http, server, {"a": 1})
    assert status == 503 and answer["error"]["details"]["reason"] == "etcd_access"
    assert "etcd user 'reader' is not permitted to KV.Txn" in answer["error"]["message"]
    assert f"readwrite {server.prefix}" in answer["error"]["message"]


async def test_a_user_configured_for_an_etcd_without_auth_is_ignored(
    etcd: EtcdCluster, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    server = await start(servers, etcd, etcd_auth=EtcdCredentials("configcenter", password="unused"))
    await round_trip(http, server)


# ------------------------------------------------------------------------------------------ settings


def test_etcd_security_settings_from_the_file(tmp_path: Path, certs: Certs) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = tmp_path / "server.yaml"
    config.write_text(
        "etcd:\n  endpoints: [https://10.0.0.1:2379, https://10.0.0.2:2379]\n"
        f"  tls: {{ca_file: {certs.ca}, server_name: etcd.internal}}\n"
        f"  username: configcenter\n  password_file: {secret}\n"
    )
    settings = load_settings(config, env={})
    assert settings.etcd_tls == EtcdTLS(ca_file=str(certs.ca), server_name="etcd.internal")
    assert settings.etcd_auth == EtcdCredentials("configcenter", password_file=str(secret))
    assert "s3cret" not in repr(EtcdCredentials("u", password="s3cret"))


@pytest.mark.parametrize(("etcd", "message"), [
    ("{username: u}", "etcd: with etcd.username give exactly one of password and password_file"),
    ("{username: u, password: p, password_file: /x}", "etcd: with etcd.username give exactly one"),
    ("{password: p}", "etcd: password / password_file given without etcd.username"),
    ("{username: u, password_file: /nonexistent/pw}", "etcd.password_file /nonexistent/pw: cannot read"),
    ("{tls: {cert_file: /x}}", "etcd.tls: cert_file and key_file go together"),
    ("{tls: {ca: /x}}", "etcd.tls: unknown key(s) ca"),
    ("{endpoints: [https://a:1, b:2]}", "etcd endpoints must be all https:// or none"),
    ("{tls: {ca_file: /nonexistent/ca.pem}}", "etcd.tls.ca_file /nonexistent/ca.pem: cannot read"),
])
def test_etcd_security_settings_errors(tmp_path: Path, etcd: str, message: str) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"etcd: {etcd}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message


# ------------------------------------------------------------------------------------------ safe defaults


async def test_readyz_tells_anyone_only_the_status_and_a_token_holder_the_details(
    auth_etcd: EtcdCluster, tmp_path: Path, http: aiohttp.ClientSession, servers: list[RunningServer],
) -> None:
    """Issue 16 item 6: ``/readyz`` named etcd users and key prefixes to anyone."""
    server = await start(servers, auth_etcd, wait=False, **as_user(tmp_path, "nobody"))
    await eventually(lambda: server.runtime.client.access_problem is not None, timeout=5)
    status, anonymous = await readiness(http, server, token=None)
    assert status == 503 and anonymous == {"status": "starting", "stale": anonymous["stale"], "warnings": []}
    assert "nobody" not in str(anonymous) and server.prefix not in str(anonymous)
    status, detailed = await readiness(http, server)
    assert status == 503 and "etcd user 'nobody'" in detailed["message"] and detailed["etcd"] == "down"
    async with http.get(f"{server.url}/readyz", headers=server.auth("not-a-token")) as resp:
        assert resp.status == 401
    async with http.get(f"{server.url}/v1/namespaces/sec/app") as resp:  # a read etcd refuses: 503, no names
        body = await resp.json()
        assert resp.status == 503 and "nobody" not in str(body) and server.prefix not in str(body)
    async with http.get(f"{server.url}/v1/namespaces/sec/app", headers=server.auth(READER)) as resp:
        assert resp.status == 503 and "etcd user 'nobody'" in (await resp.json())["error"]["message"]


async def test_metrics_need_a_token_when_reads_do_and_a_scoped_token_sees_its_namespaces_only(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    scoped = Principal.from_token("team-a", "team-a-token", "reader", ["a/"])
    server = await make_server(read_requires_token=True, tokens=(*TEST_PRINCIPALS, scoped))
    server.runtime.metrics.set_series("configcenter_rollout_pending_instances", "ns", {"a/x": 1, "b/secret": 2})
    async with http.get(f"{server.url}/metrics") as resp:
        assert resp.status == 401
    async with http.get(f"{server.url}/metrics", headers=server.auth(READER)) as resp:
        text = await resp.text()
        assert resp.status == 200 and 'ns="a/x"' in text and 'ns="b/secret"' in text
    async with http.get(f"{server.url}/metrics", headers=server.auth("team-a-token")) as resp:
        text = await resp.text()
        assert resp.status == 200 and 'ns="a/x"' in text and "b/secret" not in text
        assert "configcenter_applied_revision" in text


async def test_readyz_warns_of_anonymous_reads_and_tokens_in_plain_http_on_a_public_listen(
    make_server: Any, http: aiohttp.ClientSession,
) -> None:
    server = await make_server(host="0.0.0.0")
    async with http.get(f"http://127.0.0.1:{server.settings.port}/readyz") as resp:
        warnings = (await resp.json())["warnings"]
    assert resp.status == 200 and len(warnings) == 2
    assert "reads are anonymous" in warnings[0] and "bearer tokens travel in plain HTTP" in warnings[1]
    quiet = await make_server(read_requires_token=True, tokens=())
    assert exposure_warnings(quiet.settings) == ()  # loopback: nothing to say
    assert exposure_warnings(replace(quiet.settings, host="10.1.2.3")) == ()  # tokens required, none in transit


async def test_serve_warns_at_start_on_a_public_listen(tmp_path: Path, etcd: EtcdCluster) -> None:
    port = free_port()
    config = tmp_path / "server.yaml"
    config.write_text(f"listen: 0.0.0.0:{port}\netcd: {{endpoints: [{etcd.endpoints[0]}], prefix: /cc-warn-{port}/}}\n"
                      "auth: {tokens: [{token: w, role: admin}]}\n")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "configcenter", "serve", "--config", str(config),
                                                stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("bearer tokens travel" in line for line in lines):
                line = (await proc.stderr.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
    finally:
        proc.terminate()
        await proc.wait()
    assert any("WARNING" in line and "reads are anonymous" in line for line in lines), lines


@pytest.mark.parametrize(("etcd", "refused"), [
    ("{endpoints: [10.0.0.1:2379], username: u, password: p}", True),
    ("{endpoints: ['http://etcd.internal:2379'], username: u, password: p}", True),
    ("{endpoints: [10.0.0.1:2379], username: u, password: p, allow_plaintext_credentials: true}", False),
    ("{endpoints: ['https://10.0.0.1:2379'], username: u, password: p}", False),
    ("{endpoints: [10.0.0.1:2379], tls: {server_name: etcd}, username: u, password: p}", False),
    ("{endpoints: ['127.0.0.1:2379', 'localhost:2379', '[::1]:2379'], username: u, password: p}", False),
    ("{endpoints: [10.0.0.1:2379]}", False),
])
def test_etcd_credentials_over_plaintext_need_an_explicit_opt_in(tmp_path: Path, etcd: str, refused: bool) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"etcd: {etcd}\n")
    if not refused:
        load_settings(config, env={})
        return
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    message = caught.value.message
    assert message.startswith("etcd.username 'u' would be sent over plaintext gRPC") and "\n" not in message
    assert "etcd.allow_plaintext_credentials: true" in message and "'p'" not in message


def test_allow_plaintext_credentials_must_be_a_boolean(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("etcd: {allow_plaintext_credentials: 'yes'}\n")
    with pytest.raises(ConfigError, match=r"^etcd\.allow_plaintext_credentials must be true or false"):
        load_settings(config, env={})
