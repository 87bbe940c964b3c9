"""Server configuration: one YAML file, overridable by flags and environment variables.

Precedence (highest first): command-line flag, environment variable, config
file, built-in default.  Unknown keys are an error, so a typo cannot silently
leave a limit at its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML, YAMLError

from ..errors import ConfigError

ROLES = ("writer", "reader")


@dataclass(frozen=True)
class Limits:
    """Bounds on everything a client controls (see ``docs/bad-input.md``)."""

    max_body_bytes: int = 1_048_576  # raw request body, checked before reading it
    max_doc_bytes: int = 1_048_576  # the document after YAML alias expansion, as encoded JSON
    max_depth: int = 64  # nesting of a request body (JSON and YAML alike)
    max_regex_program_size: int = 100  # RE2 program size of one header regex (Envoy's default)
    subscriber_queue: int = 1024
    history_ring: int = 10_000
    header_timeout: float = 10.0  # seconds for a connection to deliver complete request headers
    max_connections: int = 16_384  # open client connections (SSE streams included); more are refused
    cpu_workers: int = 2  # threads for parse / validate / diff / compile of request bodies


@dataclass(frozen=True)
class WatchTuning:
    """How the mirror talks to etcd and how often the hub says it is alive."""

    progress_interval: float = 5.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    etcd_timeout: float = 5.0
    write_visibility_timeout: float = 2.0


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    etcd_endpoints: tuple[str, ...] = ("127.0.0.1:2379",)
    prefix: str = "/configcenter/"
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> role
    read_requires_token: bool = False
    limits: Limits = field(default_factory=Limits)
    watch: WatchTuning = field(default_factory=WatchTuning)

    @property
    def listen(self) -> str:
        return f"{self.host}:{self.port}"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {value!r} must look like HOST:PORT")
    return host or "127.0.0.1", int(port)


def parse_endpoints(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    cleaned = tuple(str(i).strip().removeprefix("http://") for i in items if str(i).strip())
    if not cleaned:
        raise ConfigError("at least one etcd endpoint is required")
    return cleaned


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    listen: str | None = None,
    etcd: str | None = None,
    prefix: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from file, then environment, then flags (see module docstring)."""
    env = os.environ if env is None else env
    settings = _from_mapping(_read_yaml(path)) if path else Settings()
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
    return settings


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
    _reject_unknown("config", data, {"listen", "etcd", "auth", "limits", "watch"})
    kwargs: dict[str, Any] = {}
    if "listen" in data:
        kwargs["host"], kwargs["port"] = parse_listen(str(data["listen"]))
    etcd = data.get("etcd") or {}
    _reject_unknown("etcd", etcd, {"endpoints", "prefix"})
    if "endpoints" in etcd:
        kwargs["etcd_endpoints"] = parse_endpoints(etcd["endpoints"])
    if "prefix" in etcd:
        kwargs["prefix"] = str(etcd["prefix"])
    auth = data.get("auth") or {}
    _reject_unknown("auth", auth, {"tokens", "read_requires_token"})
    kwargs["tokens"] = _parse_tokens(auth.get("tokens") or [])
    kwargs["read_requires_token"] = bool(auth.get("read_requires_token", False))
    kwargs["limits"] = _section(Limits, "limits", data.get("limits") or {})
    kwargs["watch"] = _section(WatchTuning, "watch", data.get("watch") or {})
    return Settings(**kwargs)


def _parse_tokens(items: list[Any]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("token") or item.get("role") not in ROLES:
            raise ConfigError(f"auth.tokens[{i}] must be {{token: <non-empty>, role: writer|reader}}")
        tokens[str(item["token"])] = str(item["role"])
    return tokens


def _section(cls: Any, name: str, raw: dict[str, Any]) -> Any:
    known = {f.name: f.type for f in fields(cls)}
    _reject_unknown(name, raw, set(known))
    try:
        return cls(**{k: (int(v) if known[k] == "int" else float(v)) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def _reject_unknown(section: str, raw: Any, allowed: set[str]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{section} must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
