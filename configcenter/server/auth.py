"""Bearer-token roles: ``writer`` may read and write, ``reader`` may read.

Reads are open unless ``auth.read_requires_token`` is set.  With no writer
token configured at all, every write is refused (403) — a fresh install is
read-only until someone configures a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiohttp import web

from ..errors import ForbiddenError, UnauthorizedError


class TokenAuth:
    def __init__(self, tokens: Mapping[str, str], read_requires_token: bool) -> None:
        self._tokens = dict(tokens)
        self._read_requires_token = read_requires_token

    def role_of(self, request: web.Request) -> str | None:
        """The role of the request's bearer token; None without a header; 401 for an unknown token."""
        header = request.headers.get("Authorization", "")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("Authorization header must be 'Bearer <token>'")
        for known, role in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                return role
        raise UnauthorizedError("unknown bearer token")

    def require_read(self, request: web.Request) -> None:
        role = self.role_of(request)
        if role is None and self._read_requires_token:
            raise UnauthorizedError("this server requires a bearer token to read")

    def require_write(self, request: web.Request) -> None:
        role = self.role_of(request)
        if role is None:
            if "writer" not in self._tokens.values():
                raise ForbiddenError("writes are disabled: no writer token is configured on this server")
            raise UnauthorizedError("writing requires a bearer token with the writer role")
        if role != "writer":
            raise ForbiddenError(f"a {role} token may not write")
