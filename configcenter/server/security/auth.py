"""Named principals: bearer tokens with a role and namespace scopes (see ``docs/access-and-audit.md``).

Contract
--------
* A **principal** is a token's name, its role and its scope.  Roles are ordered
  ``reader`` < ``writer`` < ``admin``: a reader reads; a writer also pushes and rolls back;
  only an admin deletes a namespace.  A scope is a list of exact namespaces and ``prefix/``
  entries; without one the principal covers every namespace.
* Tokens are known only as SHA-256 digests.  A presented token is hashed once and compared
  with ``hmac.compare_digest`` against *every* principal's digest (no early exit), so timing
  reveals neither the token nor which principal it belongs to.
* A bad ``Authorization`` header, an unknown token, or no token where one is needed is 401
  (``configcenter_auth_failures_total``); a valid token whose role or scope does not allow
  the action is 403 naming the principal and the namespace (``configcenter_auth_denied_total``).
  With no principal able to do a write at all, anonymous writes are 403 (writes disabled).
* Reads (get, list, history, diff, route, watch) are open unless ``auth.read_requires_token``;
  only then do scopes restrict them: a single-namespace read outside the scope is 403 (checked
  before the namespace is looked up, so it reveals nothing about existence), a list shows only
  the namespaces in scope, and a watch is narrowed to the scope (403 if one of its selectors
  lies entirely outside it).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

from aiohttp import web

from configcenter.errors import ConfigCenterError, ConfigError, ForbiddenError, UnauthorizedError
from configcenter.model import validate_namespace, validate_prefix
from configcenter.server.metrics import Metrics

from .audit import request_info

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")
Action = Literal["get", "list", "history", "diff", "route", "watch", "push", "rollback", "delete", "schema",
                 "evict", "policy", "freeze", "approve", "reject", "canary", "promote"]
#: The least role each action needs ("evict": an operator removes an SDK instance's record; "policy" and
#: "freeze": release control's review policies and change freezes; "approve"/"reject": a proposal).
NEEDS: dict[str, Role] = {"push": "writer", "rollback": "writer", "delete": "admin", "schema": "admin",
                          "evict": "admin", "policy": "admin", "freeze": "admin", "approve": "writer",
                          "reject": "writer", "canary": "writer", "promote": "writer"}  # canary: start/grow/abort
READS = frozenset({"get", "list", "history", "diff", "route", "watch"})
_VERBS = {"get": "read", "history": "read the history of", "diff": "diff", "route": "evaluate the routes of",
          "push": "push to", "rollback": "roll back", "delete": "delete", "schema": "set the schema of",
          "evict": "remove an instance subscribed to", "policy": "set the review policy of",
          "freeze": "freeze", "approve": "approve a proposal for", "reject": "reject a proposal for",
          "canary": "run a canary of", "promote": "promote the canary of"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SECRETS = ("token", "token_sha256", "token_file")
_KEYS = frozenset({"name", "role", "namespaces", *_SECRETS})


def digest(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes (what ``printf %s "$TOKEN" | sha256sum`` prints, as bytes)."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Principal:
    """A named token.  ``namespaces`` None = every namespace; entries are names or ``prefix/``."""

    name: str
    role: Role
    token_sha256: bytes = field(repr=False)
    namespaces: tuple[str, ...] | None = None

    @classmethod
    def from_token(cls, name: str, token: str, role: Role, namespaces: Sequence[str] | None = None) -> Principal:
        return cls(name, role, digest(token), None if namespaces is None else tuple(namespaces))

    def has_role(self, role: Role) -> bool:
        """``admin`` ⊇ ``writer`` ⊇ ``reader``."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def covers(self, ns: str) -> bool:
        """Whether ``ns`` is inside this principal's scope."""
        if self.namespaces is None:
            return True
        return any(ns == entry or (entry.endswith("/") and ns.startswith(entry)) for entry in self.namespaces)

    def scope_text(self) -> str:
        return "all namespaces" if self.namespaces is None else ", ".join(self.namespaces) or "no namespaces"


class TokenAuth:
    """Authentication and authorization of requests against the configured principals."""

    def __init__(self, principals: Sequence[Principal], read_requires_token: bool, metrics: Metrics) -> None:
        self._principals = tuple(principals)
        self.read_requires_token = read_requires_token
        self._metrics = metrics

    def can_anyone(self, role: Role) -> bool:
        """Whether some configured principal has ``role`` (or more)."""
        return any(p.has_role(role) for p in self._principals)

    def authenticate(self, request: web.Request) -> Principal | None:
        """The request's principal; None without an ``Authorization`` header; 401 for a bad or unknown token."""
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._unauthorized(request, "Authorization header must be 'Bearer <token>'")
        presented = digest(token.strip())
        found: Principal | None = None
        for principal in self._principals:  # every digest is compared: no early exit
            if hmac.compare_digest(principal.token_sha256, presented):
                found = principal
        if found is None:
            raise self._unauthorized(request, "unknown bearer token")
        info = request_info(request)
        info.principal, info.role = found.name, found.role
        return found

    def require(self, request: web.Request, action: Action) -> Principal | None:
        """Authenticate and check the role ``action`` needs (not yet the scope): 401/403.

        Returns None for an anonymous read on a server whose reads are open.
        """
        info = request_info(request)
        info.action = action
        principal = self.authenticate(request)
        needed = NEEDS.get(action, "reader")
        if principal is None:
            if action in READS and not self.read_requires_token:
                return None
            if action in READS:
                raise self._unauthorized(request, "this server requires a bearer token to read")
            if not self.can_anyone(needed):
                what = "deletes" if action == "delete" else "writes"
                raise self._forbidden(request, f"{what} are disabled: no {needed} token is configured on this server")
            raise self._unauthorized(request, f"{action} requires a bearer token with the {needed} role")
        if not principal.has_role(needed):
            raise self._forbidden(request, f"principal {principal.name!r} ({principal.role}) may not {action}: "
                                           f"that needs the {needed} role", principal=principal.name)
        return principal

    def scoped(self, principal: Principal | None, action: Action) -> bool:
        """Whether the scope of ``principal`` limits ``action`` (reads only when reads need a token)."""
        return principal is not None and (action not in READS or self.read_requires_token)

    def check_scope(self, request: web.Request, principal: Principal | None, action: Action, ns: str) -> None:
        """403 if ``ns`` is outside the scope of ``principal`` for ``action`` (see module contract)."""
        request_info(request).namespace = ns
        if principal is None or not self.scoped(principal, action) or principal.covers(ns):
            return
        raise self._forbidden(
            request, f"principal {principal.name!r} may not {_VERBS.get(action, action)} namespace {ns!r}: "
                     f"outside its scope ({principal.scope_text()})", principal=principal.name, namespace=ns)

    def visible(self, principal: Principal | None, ns: str) -> bool:
        """Whether a list answer for ``principal`` may show ``ns``."""
        return principal is None or not self.scoped(principal, "list") or principal.covers(ns)

    def narrow(self, request: web.Request, principal: Principal | None, selectors: list[str]) -> list[str]:
        """The watch selectors cut down to the principal's scope (all selectors: the scope itself).

        403 if a selector has nothing in common with the scope, naming the selector.
        """
        if principal is None or principal.namespaces is None or not self.scoped(principal, "watch"):
            return selectors
        if not selectors:
            if not principal.namespaces:
                self._refuse_watch(request, principal, "everything")
            return list(principal.namespaces)
        narrowed: list[str] = []
        for selector in selectors:
            parts = [p for p in (intersect(selector, entry) for entry in principal.namespaces) if p is not None]
            if not parts:
                self._refuse_watch(request, principal, selector)
            narrowed += [p for p in parts if p not in narrowed]
        return narrowed

    def _refuse_watch(self, request: web.Request, principal: Principal, selector: str) -> NoReturn:
        raise self._forbidden(
            request, f"principal {principal.name!r} may not watch {selector!r}: outside its scope "
                     f"({principal.scope_text()})", principal=principal.name, namespace=selector)

    def _unauthorized(self, request: web.Request, message: str) -> UnauthorizedError:
        self._metrics.inc("configcenter_auth_failures_total")
        request_info(request).reason = message
        return UnauthorizedError(message)

    def _forbidden(self, request: web.Request, message: str, **details: str) -> ForbiddenError:
        self._metrics.inc("configcenter_auth_denied_total")
        request_info(request).reason = message
        return ForbiddenError(message, **details)


def intersect(selector: str, entry: str) -> str | None:
    """The selector covering what ``selector`` and scope ``entry`` (each a name or ``prefix/``) share."""
    if selector.endswith("/") and entry.endswith("/"):
        return selector if selector.startswith(entry) else entry if entry.startswith(selector) else None
    if selector.endswith("/"):
        return entry if entry.startswith(selector) else None
    if entry.endswith("/"):
        return selector if selector.startswith(entry) else None
    return selector if selector == entry else None


# --------------------------------------------------------------------------- configuration


def load_principals(items: Any) -> tuple[Principal, ...]:
    """``auth.tokens`` of the config file as principals; ``ConfigError`` (one line) for any mistake.

    Each entry: ``name`` (required, unique, ``[A-Za-z0-9][A-Za-z0-9._@-]{0,63}``), ``role``
    (reader | writer | admin), exactly one of ``token``, ``token_sha256`` (64 hex digits: the
    SHA-256 of the token) and ``token_file`` (read now, surrounding whitespace stripped), and
    optionally ``namespaces`` (non-empty list of names and ``prefix/``; default: all).
    The old form ``{token, role}`` (nothing else) is still accepted; its name is ``token-<n>``
    (``n`` = its position, from 1).  Two entries may not share a name or a token.
    """
    if not isinstance(items, list):
        raise ConfigError("auth.tokens must be a list of {name, role, token|token_sha256|token_file, namespaces?}")
    principals = tuple(_principal(i, item) for i, item in enumerate(items))
    for i, principal in enumerate(principals):
        earlier = principals[:i]
        if any(p.name == principal.name for p in earlier):
            raise ConfigError(f"auth.tokens[{i}]: duplicate name {principal.name!r}")
        if any(p.token_sha256 == principal.token_sha256 for p in earlier):
            raise ConfigError(f"auth.tokens[{i}] ({principal.name}): the same token is configured twice")
    return principals


def legacy_principals(tokens: Mapping[str, str]) -> tuple[Principal, ...]:
    """The old in-code form ``{token: role}`` as principals ``token-1``, ``token-2``, …"""
    return load_principals([{"token": token, "role": role} for token, role in tokens.items()])


def _principal(i: int, item: Any) -> Principal:
    where = f"auth.tokens[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a mapping {{name, role, token|token_sha256|token_file, namespaces?}}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
                          f"allowed: {', '.join(sorted(_KEYS))}")
    legacy = set(item) == {"token", "role"}
    name = item.get("name", f"token-{i + 1}" if legacy else None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name is required: 1-64 characters [A-Za-z0-9._@-], got {name!r}")
    where = f"{where} ({name})"
    role = item.get("role")
    if role not in ROLES:
        raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    given = [key for key in _SECRETS if item.get(key) not in (None, "")]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of token, token_sha256, token_file"
                          f" (got {', '.join(given) or 'none'})")
    return Principal(name, cast(Role, role), _secret(where, given[0], item[given[0]]),
                     _scope(where, item.get("namespaces")))


def _secret(where: str, key: str, value: Any) -> bytes:
    if key == "token_sha256":
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            raise ConfigError(f"{where}: token_sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)")
        return bytes.fromhex(value)
    if key == "token_file":
        try:
            token = Path(str(value)).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{where}: token_file {value}: cannot read: {reason or exc}") from exc
        if not token:
            raise ConfigError(f"{where}: token_file {value} is empty")
        return digest(token)
    return digest(str(value))


def _scope(where: str, raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) and v for v in raw):
        raise ConfigError(f"{where}: namespaces must be a non-empty list of namespaces and prefixes ending in '/' "
                          "(omit it for all namespaces)")
    try:
        return tuple(validate_prefix(v) if v.endswith("/") else validate_namespace(v) for v in raw)
    except ConfigCenterError as exc:
        raise ConfigError(f"{where}: namespaces: {exc.message}") from exc
