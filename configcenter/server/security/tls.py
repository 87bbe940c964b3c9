"""TLS material for the server's HTTPS listener and for its gRPC channel to etcd.

Contract: each function reads the files the settings name, checks them with the ``ssl``
module and raises ``ConfigError`` with one line naming the setting and the file on any
problem (missing, unreadable, not PEM, key not matching the certificate, encrypted key),
so ``configcenter serve`` exits 2 at start instead of failing at the first handshake.

* The listener's context is built from scratch (``PROTOCOL_TLS_SERVER``), not with
  ``ssl.create_default_context``: that one loads the system CA store, which with
  ``CERT_REQUIRED`` would accept a client certificate from *any* public CA.  Here only
  ``client_ca_file`` is trusted for client certificates.
* TLS 1.2 is the minimum on both sides of the server.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from configcenter.errors import ConfigError

MIN_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class ServerTLS:
    """HTTPS on the listener; with ``client_ca_file`` every client must present a certificate from that CA."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


@dataclass(frozen=True)
class EtcdTLS:
    """TLS towards etcd (``etcd.tls``; https:// endpoints imply it with every field unset).

    ``ca_file`` None: the system's CA store.  ``cert_file``/``key_file``: the client certificate
    for etcd's ``--client-cert-auth``.  ``server_name``: the name checked in every member's
    certificate (default: the first endpoint's host).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None



def server_ssl_context(tls: ServerTLS) -> ssl.SSLContext:
    """The listener's context: TLS >= 1.2, ``cert_file`` (chain) and ``key_file``; with
    ``client_ca_file`` clients must present a certificate issued by that CA (mTLS, ``CERT_REQUIRED``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    _load_chain(context, "tls", tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        _load_ca(context, "tls.client_ca_file", tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True)
class EtcdTLSMaterial:
    """PEM bytes for ``grpc.ssl_channel_credentials`` (None: the system CA store / no client certificate)
    and the name to check in the members' certificates."""

    ca_cert: bytes | None
    cert_key: bytes | None
    cert_chain: bytes | None
    server_name: str


def etcd_tls_material(tls: EtcdTLS, default_server_name: str) -> EtcdTLSMaterial:
    """Read and check ``etcd.tls``; ``default_server_name`` applies when ``tls.server_name`` is unset."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = None
    if tls.ca_file:
        _load_ca(probe, "etcd.tls.ca_file", tls.ca_file)
        ca = _read("etcd.tls.ca_file", tls.ca_file)
    key = chain = None
    if tls.cert_file and tls.key_file:
        _load_chain(probe, "etcd.tls", tls.cert_file, tls.key_file)
        chain, key = _read("etcd.tls.cert_file", tls.cert_file), _read("etcd.tls.key_file", tls.key_file)
    return EtcdTLSMaterial(ca, key, chain, tls.server_name or default_server_name)


def _load_chain(context: ssl.SSLContext, section: str, cert_file: str, key_file: str) -> None:
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKey as exc:
        raise ConfigError(f"{section}: key {key_file} is encrypted; configcenter needs an unencrypted key") from exc
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConfigError(f"{section}: cannot load certificate {cert_file} with key {key_file}: {_reason(exc)} "
                          "(PEM certificate chain and its unencrypted private key expected)") from exc


def _load_ca(context: ssl.SSLContext, label: str, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except OSError as exc:
        raise ConfigError(f"{label} {path}: not a readable PEM CA bundle: {_reason(exc)}") from exc


def _read(label: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label} {path}: cannot read: {exc.strerror or exc}") from exc


def _reason(exc: OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    """Refuse encrypted keys instead of prompting on the terminal."""
    raise _EncryptedKey
