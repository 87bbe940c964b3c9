"""HTTPS on the server's listener: real TLS handshakes against a real server, certificates from ``trustme``.

Also the ``tls`` settings (file, env, flags and their precedence), the one-line errors
for unusable files, and ``configcenter serve`` over HTTPS as a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
from asyncio import sslproto
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from configcenter.cli.embedded_etcd import EtcdCluster, free_port
from configcenter.errors import ConfigError
from configcenter.server.metrics import Metrics
from configcenter.server.net import ConnectionGuard, GuardedSite, _tls_listener
from configcenter.server.security import server_ssl_context
from configcenter.server.settings import ServerTLS, load_settings
from helpers import WRITER, Certs, RunningServer, SSEStream, envelope, server_tls

REPO = Path(__file__).resolve().parents[3]


def client_context(certs: Certs, *, cert: Path | None = None, key: Path | None = None,
                   ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca or certs.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


async def get_status(url: str, context: ssl.SSLContext | bool) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context),
                                     timeout=aiohttp.ClientTimeout(total=5)) as session, \
            session.get(f"{url}/healthz") as resp:
        return resp.status


@pytest.fixture
async def https(certs: Certs) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(certs)),
                                     timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def test_https_with_the_ca_bundle_works_and_plain_http_to_the_tls_port_fails(
    make_tls_server: Any, https: aiohttp.ClientSession, certs: Certs,
) -> None:
    server: RunningServer = await make_tls_server()
    assert server.url.startswith("https://")
    async with https.put(f"{server.url}/v1/namespaces/tls/app", json=envelope({"a": 1}),
                         headers=server.auth(WRITER)) as resp:
        assert resp.status == 201
    async with https.get(f"{server.url}/v1/namespaces/tls/app") as resp:
        assert resp.status == 200 and (await resp.json())["doc"] == {"a": 1}
    with pytest.raises(aiohttp.ClientError):  # a plain-HTTP request is no TLS handshake: dropped
        await get_status(server.url.replace("https://", "http://"), False)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # the system CAs do not know our CA
        await get_status(server.url, True)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # a foreign CA bundle does not either
        await get_status(server.url, client_context(certs, ca=certs.other_ca))


async def test_mtls_refuses_a_client_without_a_certificate_or_with_a_foreign_one(
    make_tls_server: Any, certs: Certs,
) -> None:
    server: RunningServer = await make_tls_server(mtls=True)
    assert await get_status(server.url, client_context(certs, cert=certs.client_cert, key=certs.client_key)) == 200
    assert await get_status(server.url, client_context(certs, cert=certs.client_pem)) == 200
    with pytest.raises(aiohttp.ClientError):
        await get_status(server.url, client_context(certs))
    with pytest.raises(aiohttp.ClientError):
        await get_status(server.url, client_context(certs, cert=certs.other_client_cert, key=certs.other_client_key))


def test_mtls_trusts_only_the_client_ca_never_the_system_store(certs: Certs) -> None:
    context = server_ssl_context(ServerTLS(str(certs.server_cert), str(certs.server_key), str(certs.ca)))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    assert server_ssl_context(ServerTLS(str(certs.server_cert), str(certs.server_key))).verify_mode == ssl.CERT_NONE


def test_tls_settings_precedence_is_flag_then_env_then_file(tmp_path: Path, certs: Certs) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"tls: {{cert_file: {certs.client_cert}, key_file: {certs.client_key}}}\n")
    from_file = load_settings(config, env={})
    assert from_file.tls == ServerTLS(str(certs.client_cert), str(certs.client_key))
    env = {"CONFIGCENTER_TLS_CERT": str(certs.server_cert), "CONFIGCENTER_TLS_CLIENT_CA": str(certs.ca)}
    from_env = load_settings(config, env=env)
    assert from_env.tls == ServerTLS(str(certs.server_cert), str(certs.client_key), str(certs.ca))
    from_flags = load_settings(config, env=env, tls_key=str(certs.server_key), tls_client_ca=str(certs.other_ca))
    assert from_flags.tls == ServerTLS(str(certs.server_cert), str(certs.server_key), str(certs.other_ca))
    assert load_settings(None, env={}).tls is None


@pytest.mark.parametrize(("flags", "message"), [
    ({"tls_cert": "CERT"}, "tls: cert_file and key_file are both required"),
    ({"tls_client_ca": "CA"}, "tls: cert_file and key_file are both required"),
    ({"tls_cert": "CERT", "tls_key": "/nonexistent/key.pem"}, "tls.key_file /nonexistent/key.pem: cannot read"),
])
def test_incomplete_or_unreadable_tls_settings_are_config_errors(
    flags: dict[str, str], message: str, certs: Certs,
) -> None:
    values = {k: v.replace("CERT", str(certs.server_cert)).replace("CA", str(certs.ca)) for k, v in flags.items()}
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={}, **values)
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message


def test_unusable_certificate_files_are_one_line_config_errors(tmp_path: Path, certs: Certs) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (ServerTLS(str(garbage), str(certs.server_key)), f"tls: cannot load certificate {garbage}"),
        (ServerTLS(str(certs.server_cert), str(certs.client_key)), "tls: cannot load certificate"),  # wrong key
        (ServerTLS(str(certs.server_cert), str(certs.server_key), str(garbage)), f"tls.client_ca_file {garbage}"),
    ]
    for tls, message in cases:
        with pytest.raises(ConfigError) as caught:
            server_ssl_context(tls)
        assert caught.value.message.startswith(message) and "\n" not in caught.value.message


async def test_serve_over_https_logs_https_and_answers_with_the_ca_bundle(
    tmp_path: Path, etcd: EtcdCluster, certs: Certs,
) -> None:
    port = free_port()
    config = tmp_path / "server.yaml"
    config.write_text(f"listen: 127.0.0.1:{port}\n"
                      f"etcd: {{endpoints: [{etcd.endpoints[0]}], prefix: /cc-tls-{port}/}}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "configcenter", "serve", "--config", str(config),
         "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"https://127.0.0.1:{port}"
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            assert proc.poll() is None and asyncio.get_running_loop().time() < deadline, "serve did not start"
            try:
                if await get_status(url, client_context(certs)) == 200:
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"listening on https://127.0.0.1:{port}," in err


def test_serve_with_a_missing_certificate_exits_2_with_one_line(tmp_path: Path, certs: Certs) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "configcenter", "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(certs.server_key)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == f"error: tls.cert_file {tmp_path / 'missing.pem'}: cannot read: No such file or directory\n"


def test_serve_with_a_key_not_matching_the_certificate_exits_2(certs: Certs) -> None:
    env_cert = {"CONFIGCENTER_TLS_CERT": str(certs.server_cert), "CONFIGCENTER_TLS_KEY": str(certs.client_key)}
    result = subprocess.run(
        [sys.executable, "-m", "configcenter", "serve", "--listen", f"127.0.0.1:{free_port()}"],
        cwd=REPO, capture_output=True, text=True, timeout=30, env={**_clean_env(), **env_cert},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: tls: cannot load certificate") and result.stderr.count("\n") == 1


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CONFIGCENTER_")}


async def test_a_tls_listener_names_itself_https_with_the_bound_port(
        https: aiohttp.ClientSession, certs: Certs) -> None:
    """Port 0 and TLS: ``site.name`` is the https URL of the bound port, and it answers (the handshake
    through the listener's shared-buffer TLS)."""
    runner = web.AppRunner(web.Application(), shutdown_timeout=0.5)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, ConnectionGuard(10, 5.0, Metrics()),
                       ssl_context=server_ssl_context(server_tls(certs)))
    await site.start()
    try:
        assert site.port != 0 and site.name == f"https://127.0.0.1:{site.port}"
        async with https.get(f"{site.name}/nothing-here") as resp:
            assert resp.status == 404  # aiohttp's answer, over TLS
    finally:
        await runner.cleanup()


# ------------------------------------------------- TLS connections without a read buffer each (_tls_listener)


def test_contract_asyncio_ssl_internals_the_listener_relies_on_are_still_there() -> None:
    """Fails loudly when a Python upgrade changes ``asyncio.sslproto`` in a way ``_tls_listener`` relies on
    (the server would still serve TLS, through the fallback, at 256 KiB per connection)."""
    loop = asyncio.new_event_loop()
    try:
        assert _tls_listener.unsupported_reason(loop) is None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        stock = sslproto.SSLProtocol(loop, asyncio.Protocol(), context, None, True)
        assert isinstance(stock._ssl_buffer, bytearray) and len(stock._ssl_buffer) == sslproto.SSLProtocol.max_size
        assert stock.get_buffer(-1) is stock._ssl_buffer_view  # what the transport reads into
        shared = bytearray(_tls_listener.READ_BUFFER)
        lean = _tls_listener._SharedBufferSSLProtocol(shared, loop, asyncio.Protocol(), context, None, True)
        assert lean.get_buffer(-1).obj is shared and lean._ssl_buffer is shared  # no buffer of its own
        assert lean.get_buffer(10**9).obj is shared  # never re-allocated, whatever is asked
    finally:
        loop.close()
    assert _tls_listener.unsupported_reason(_NotSelector()) is not None


class _NotSelector(asyncio.AbstractEventLoop):
    """Stands for a loop whose reads hold the buffer across callbacks (proactor, uvloop)."""


async def test_tls_streams_share_one_read_buffer_and_work(
    make_tls_server: Any, https: aiohttp.ClientSession,
) -> None:
    server: RunningServer = await make_tls_server()
    url = f"{server.url}/v1/watch?ns=tls/"
    async with https.get(url) as first, https.get(url) as second:
        streams = [SSEStream(first), SSEStream(second)]
        for stream in streams:
            assert (await stream.next()).event == "reset"
        buffers = {id(t._ssl_protocol._ssl_buffer) for t in server.runtime.connections._by_transport}
        assert len(buffers) == 1  # every connection reads into the one shared buffer
        pushed = await server.runtime.store.push("tls/app", "config", {"blob": "y" * 300_000})  # several records
        for stream in streams:
            change = (await stream.until(lambda e: e.event == "change"))[-1]
            assert change.id == pushed.revision and change.data["doc"] == {"blob": "y" * 300_000}


async def test_tls_without_the_internals_falls_back_to_asyncio_s_own_buffers(
    make_tls_server: Any, https: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(_tls_listener, "unsupported_reason", lambda loop: "a changed asyncio (simulated)")
    server: RunningServer = await make_tls_server()
    async with https.get(f"{server.url}/v1/watch?ns=tls/") as resp:
        assert (await SSEStream(resp).next()).event == "reset"
        (transport,) = server.runtime.connections._by_transport
        assert len(transport._ssl_protocol._ssl_buffer) == sslproto.SSLProtocol.max_size
    assert "a changed asyncio (simulated)" in caplog.text
