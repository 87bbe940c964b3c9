"""Server configuration: one YAML file, overridable by flags and environment variables.

Precedence (highest first): command-line flag, environment variable, config
file, built-in default.  Unknown keys are an error, so a typo cannot silently
leave a limit at its default.  Every file named by the TLS and etcd credential
settings must be readable when the settings load (``ConfigError`` otherwise);
their content is checked when it is used (``server/security/tls.py``).

The settings sit at the top with ``runtime.py``: they compose types the packages define
(``limits.py``, ``security/tls.py``, ``etcd/credentials.py``); no package imports them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from configcenter.errors import ConfigError
from configcenter.server.etcd import EtcdCredentials
from configcenter.server.limits import ETCD_MAX_REQUEST_BYTES, RECORD_ALLOWANCE, Limits, WatchTuning, check_record_fits
from configcenter.server.security import EtcdTLS, Network, ServerTLS, parse_networks
from configcenter.server.security.auth import Principal, legacy_principals, load_principals

# re-exported: the configuration's types, defined where they are used
__all__ = ["ETCD_MAX_REQUEST_BYTES", "RECORD_ALLOWANCE", "EtcdCredentials", "EtcdTLS", "Limits", "ServerTLS",
           "Settings", "WatchTuning", "check_record_fits", "exposure_warnings", "load_settings", "parse_endpoints",
           "parse_listen", "parse_workers"]


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/configcenter/"
    tokens: tuple[Principal, ...] = ()  # auth.tokens; a {token: role} mapping is accepted (names token-<n>)
    read_requires_token: bool = False
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For names the client
    limits: Limits = field(default_factory=Limits)
    watch: WatchTuning = field(default_factory=WatchTuning)
    tls: ServerTLS | None = None  # None: plain HTTP
    etcd_tls: EtcdTLS | None = None  # None: plain gRPC, unless an endpoint is https://
    etcd_auth: EtcdCredentials | None = None  # None: no etcd user (etcd authentication disabled)
    etcd_max_request_bytes: int = ETCD_MAX_REQUEST_BYTES  # etcd.max_request_bytes: etcd's --max-request-bytes
    # etcd.allow_plaintext_credentials: accept sending etcd_auth over plaintext gRPC to a non-loopback etcd
    etcd_allow_plaintext_credentials: bool = False
    workers: int = 1  # processes sharing the port (SO_REUSEPORT), each with its own mirror; 1: no supervisor

    def __post_init__(self) -> None:
        if isinstance(self.tokens, Mapping):  # the old in-code form {token: role}
            object.__setattr__(self, "tokens", legacy_principals(self.tokens))

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {value!r} must look like HOST:PORT")
    return host or "127.0.0.1", int(port)


def parse_workers(value: Any) -> int:
    """``workers`` (file, ``CONFIGCENTER_WORKERS``, ``--workers``): an integer from 1 to 256."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 256:
        raise ConfigError(f"workers must be an integer from 1 to 256, got {value!r}")
    return int(text)


def parse_endpoints(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    cleaned = tuple(str(i).strip().removeprefix("http://") for i in items if str(i).strip())
    if not cleaned:
        raise ConfigError("at least one etcd endpoint is required")
    if len({e.startswith("https://") for e in cleaned}) > 1:
        raise ConfigError("etcd endpoints must be all https:// or none (one TLS setting covers every member)")
    return cleaned


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    listen: str | None = None,
    etcd: str | None = None,
    prefix: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    env: Mapping[str, str] | None = None,
    workers: int | None = None,
) -> Settings:
    """Build settings from file, then environment, then flags (see module docstring).

    ``tls_*`` (``--tls-cert`` / ``CONFIGCENTER_TLS_CERT`` ...) override ``tls.*`` of the file one
    key at a time.  ``ConfigError`` (one line) for anything invalid or a named file not readable.
    """
    env = os.environ if env is None else env
    data = _read_yaml(path) if path else {}
    settings = _from_mapping(data) if path else Settings()
    listen = listen or env.get("CONFIGCENTER_LISTEN")
    etcd = etcd or env.get("CONFIGCENTER_ETCD")
    prefix = prefix or env.get("CONFIGCENTER_PREFIX")
    if listen:
        host, port = parse_listen(listen)
        settings = replace(settings, host=host, port=port)
    if etcd:
        settings = replace(settings, etcd_endpoints=parse_endpoints(etcd))
    if prefix:
        settings = replace(settings, prefix=prefix)
    workers_text = workers if workers is not None else env.get("CONFIGCENTER_WORKERS")
    if workers_text:
        settings = replace(settings, workers=parse_workers(workers_text))
    flags = {"cert_file": tls_cert, "key_file": tls_key, "client_ca_file": tls_client_ca}
    settings = replace(settings, tls=_server_tls(data.get("tls") or {}, flags, env))
    _check_files(settings)
    check_record_fits(settings.limits, settings.etcd_max_request_bytes)
    check_credentials_transport(settings)
    return settings


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, IPv6 possibly in brackets) names this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint_host(endpoint: str) -> str:
    rest = endpoint.split("://", 1)[-1]
    return rest.rpartition(":")[0] if rest.rpartition(":")[2].isdigit() else rest


def check_credentials_transport(settings: Settings) -> None:
    """``ConfigError`` when an etcd user (``etcd.username``) would authenticate over plaintext gRPC to a
    non-loopback etcd (no ``etcd.tls``, no https:// endpoint): its password and every auth token would
    cross the network readable, unless the file opts in with ``etcd.allow_plaintext_credentials: true``."""
    if settings.etcd_auth is None or settings.etcd_allow_plaintext_credentials or settings.etcd_tls is not None:
        return
    endpoints = settings.etcd_endpoints
    if any(e.startswith("https://") for e in endpoints) or all(is_loopback(_endpoint_host(e)) for e in endpoints):
        return
    raise ConfigError(
        f"etcd.username {settings.etcd_auth.username!r} would be sent over plaintext gRPC to "
        f"{', '.join(endpoints)}: the password and etcd auth tokens would be readable on the network; use "
        "https:// endpoints or etcd.tls, or set etcd.allow_plaintext_credentials: true to accept that")


def exposure_warnings(settings: Settings) -> tuple[str, ...]:
    """What this configuration exposes that an operator should know (logged by ``serve`` at start and
    shown by ``/readyz``): anonymous reads and bearer tokens in plain HTTP on a non-loopback listen."""
    if is_loopback(settings.host):
        return ()
    warnings = []
    if not settings.read_requires_token:
        warnings.append(f"reads are anonymous on the non-loopback address {settings.listen}: anyone who can reach "
                        "it reads every namespace (auth.read_requires_token: true requires a token)")
    if settings.tls is None and settings.tokens:
        warnings.append(f"bearer tokens travel in plain HTTP to the non-loopback address {settings.listen}: anyone "
                        "on the path can copy them (serve HTTPS with tls.cert_file/key_file, or terminate TLS "
                        "in a proxy on the same host)")
    return tuple(warnings)


def _read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = YAML(typ="safe", pure=True).load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping at top level")
    return data


def _from_mapping(data: dict[str, Any]) -> Settings:
    _reject_unknown("config", data, {"listen", "etcd", "auth", "limits", "watch", "tls", "workers"})
    kwargs: dict[str, Any] = {}
    if "workers" in data:
        kwargs["workers"] = parse_workers(data["workers"])
    if "listen" in data:
        kwargs["host"], kwargs["port"] = parse_listen(str(data["listen"]))
    etcd = data.get("etcd") or {}
    _reject_unknown("etcd", etcd, {"endpoints", "prefix", "tls", "username", "password", "password_file",
                                   "max_request_bytes", "allow_plaintext_credentials"})
    if "allow_plaintext_credentials" in etcd:
        kwargs["etcd_allow_plaintext_credentials"] = _bool("etcd.allow_plaintext_credentials",
                                                           etcd["allow_plaintext_credentials"])
    if "max_request_bytes" in etcd:
        kwargs["etcd_max_request_bytes"] = _positive_int("etcd.max_request_bytes", etcd["max_request_bytes"])
    if "endpoints" in etcd:
        kwargs["etcd_endpoints"] = parse_endpoints(etcd["endpoints"])
    if "prefix" in etcd:
        kwargs["prefix"] = str(etcd["prefix"])
    if etcd.get("tls") is not None:
        kwargs["etcd_tls"] = _etcd_tls(etcd["tls"])
    kwargs["etcd_auth"] = _etcd_credentials(etcd)
    _reject_unknown("tls", data.get("tls") or {}, {"cert_file", "key_file", "client_ca_file"})
    auth = data.get("auth") or {}
    _reject_unknown("auth", auth, {"tokens", "read_requires_token", "trusted_proxies"})
    kwargs["tokens"] = _parse_tokens(auth.get("tokens") or [])
    kwargs["read_requires_token"] = bool(auth.get("read_requires_token", False))
    kwargs["trusted_proxies"] = _trusted_proxies(auth.get("trusted_proxies") or [])
    kwargs["limits"] = _section(Limits, "limits", data.get("limits") or {})
    kwargs["watch"] = _section(WatchTuning, "watch", data.get("watch") or {})
    return Settings(**kwargs)


_TLS_ENV = {"cert_file": "CONFIGCENTER_TLS_CERT", "key_file": "CONFIGCENTER_TLS_KEY",
            "client_ca_file": "CONFIGCENTER_TLS_CLIENT_CA"}


def _server_tls(file: dict[str, Any], flags: Mapping[str, str | None], env: Mapping[str, str]) -> ServerTLS | None:
    """``tls`` from the file's section with each key overridden by its env variable, then its flag."""
    merged = {key: flags.get(key) or env.get(name) or file.get(key) for key, name in _TLS_ENV.items()}
    cert, key, client_ca = (_optional_str(merged[k]) for k in ("cert_file", "key_file", "client_ca_file"))
    if not (cert or key or client_ca):
        return None
    if not (cert and key):
        raise ConfigError("tls: cert_file and key_file are both required to serve HTTPS "
                          "(flags --tls-cert/--tls-key, env CONFIGCENTER_TLS_CERT/CONFIGCENTER_TLS_KEY)")
    return ServerTLS(cert, key, client_ca)


def _etcd_tls(raw: Any) -> EtcdTLS:
    _reject_unknown("etcd.tls", raw, {"ca_file", "cert_file", "key_file", "server_name"})
    tls = EtcdTLS(**{k: _optional_str(v) for k, v in raw.items()})
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("etcd.tls: cert_file and key_file go together (the client certificate and its key)")
    return tls


def _etcd_credentials(etcd: dict[str, Any]) -> EtcdCredentials | None:
    username, password, password_file = (_optional_str(etcd.get(k)) for k in ("username", "password", "password_file"))
    if not username:
        if password or password_file:
            raise ConfigError("etcd: password / password_file given without etcd.username")
        return None
    if bool(password) == bool(password_file):
        raise ConfigError("etcd: with etcd.username give exactly one of password and password_file")
    return EtcdCredentials(username, password, password_file)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer (bytes), got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _check_files(settings: Settings) -> None:
    """Every file a TLS or credential setting names must be readable now (content is checked in ``tls.py``)."""
    named = []
    if settings.tls:
        named += [("tls.cert_file", settings.tls.cert_file), ("tls.key_file", settings.tls.key_file),
                  ("tls.client_ca_file", settings.tls.client_ca_file)]
    if settings.etcd_tls:
        named += [(f"etcd.tls.{k}", getattr(settings.etcd_tls, k)) for k in ("ca_file", "cert_file", "key_file")]
    if settings.etcd_auth:
        named.append(("etcd.password_file", settings.etcd_auth.password_file))
    for label, path in named:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{label} {path}: cannot read: {exc.strerror or exc}") from exc


def _parse_tokens(items: Any) -> tuple[Principal, ...]:
    """``auth.tokens`` as named principals (rules and the old ``{token, role}`` form: ``auth.load_principals``)."""
    return load_principals(items)


def _trusted_proxies(items: Any) -> tuple[Network, ...]:
    """``auth.trusted_proxies``: addresses / CIDRs of proxies whose ``X-Forwarded-For`` is believed."""
    if not isinstance(items, list):
        raise ConfigError("auth.trusted_proxies must be a list of addresses or CIDRs, e.g. [10.0.0.0/8]")
    try:
        return parse_networks(items)
    except ValueError as exc:
        raise ConfigError(f"auth.trusted_proxies: {exc}") from exc


_MAY_BE_ZERO = frozenset({"write_queue", "read_queue"})  # no waiting room: refuse whatever finds no thread


def _section(cls: Any, name: str, raw: dict[str, Any]) -> Any:
    """One numeric section (``limits``, ``watch``): known keys only, every value a positive number."""
    known = {f.name: f.type for f in fields(cls)}
    _reject_unknown(name, raw, set(known))
    try:
        values = {k: (int(v) if known[k] == "int" else float(v)) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc
    for key, value in values.items():
        if value < 0 or (value == 0 and key not in _MAY_BE_ZERO) or isinstance(raw[key], bool):
            least = "0 or more" if key in _MAY_BE_ZERO else "a positive number"
            raise ConfigError(f"{name}.{key} must be {least}, got {raw[key]!r}")
    return cls(**values)


def _reject_unknown(section: str, raw: Any, allowed: set[str]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
