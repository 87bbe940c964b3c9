"""The server's exception hierarchy, each class with its HTTP status.

Every error the server raises on purpose is a :class:`ConfigCenterError`
carrying a stable machine ``code``, a one-line ``message`` for people and a
``details`` mapping for scripts.  The HTTP status lives on the class
(``status``), so no handler decides statuses itself: the one place that turns an
exception into an answer is ``configcenter.server.http.api.error_response`` (the
middleware calls it), which answers these classes with their own status, body
(``to_json``) and headers, and maps the rest (aiohttp's HTTP errors, a client
hanging up, 500 for anything unexpected).  ``error_status`` states the same rule
for a bare exception; the server's request path does not call it.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConfigCenterError(Exception):
    """Base of every deliberate server error."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        """The wire form: ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides the body (e.g. ``Retry-After``); none by default."""
        return {}


class InvalidBodyError(ConfigCenterError):
    """The request body is not valid JSON/YAML or not the expected shape."""

    status = 400
    code = "invalid_body"


class InvalidNamespaceError(ConfigCenterError):
    """A namespace name breaks the naming rules (see ``model.validate_namespace``)."""

    status = 400
    code = "invalid_namespace"


class InvalidArgumentError(ConfigCenterError):
    """A query parameter or header has a bad value (e.g. a non-numeric revision)."""

    status = 400
    code = "invalid_argument"


class UnauthorizedError(ConfigCenterError):
    """No or unknown bearer token."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}  # RFC 9110 §15.5.2: a 401 names the scheme to use


class ForbiddenError(ConfigCenterError):
    """The token is valid but its role may not do this."""

    status = 403
    code = "forbidden"


class NotFoundError(ConfigCenterError):
    """Unknown namespace or revision."""

    status = 404
    code = "not_found"


class ConflictError(ConfigCenterError):
    """The request is well-formed but conflicts with current state (e.g. roll back to a deletion)."""

    status = 409
    code = "conflict"


class FrozenError(ConfigCenterError):
    """A change freeze covers the namespace: the write is refused until the freeze ends or an admin
    overrides it with a reason.  423 Locked (the resource is locked, not in conflict with the request:
    the same request succeeds once the freeze ends); ``details`` name the freeze's target, reason,
    who set it and its window."""

    status = 423
    code = "frozen"


class HeldForReview(ConfigCenterError):
    """Not an error: a review policy governs the namespace, so the write became a *proposal* that a
    second principal must approve.  Raised from inside the write (the release gate decides in the
    write's own transaction, so every write path gets it) and answered 202 with the proposal as the
    body (``{"proposal": {...}, "message"}``) instead of the error envelope."""

    status = 202
    code = "proposal_created"

    def __init__(self, message: str, proposal: dict[str, Any]) -> None:
        super().__init__(message, proposal=proposal["id"])
        self.proposal = proposal

    def to_json(self) -> dict[str, Any]:
        return {"proposal": self.proposal, "message": self.message}


class PreconditionFailedError(ConfigCenterError):
    """``If-Match`` named a revision that is no longer current (someone else wrote first)."""

    status = 412
    code = "precondition_failed"


class PayloadTooLargeError(ConfigCenterError):
    """The body exceeds ``limits.max_body_bytes``."""

    status = 413
    code = "payload_too_large"


class TooManyRequestsError(ConfigCenterError):
    """A per-client or global cap is reached; ``Retry-After`` says when asking again may succeed."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SchemaViolationError(ConfigCenterError):
    """The document does not satisfy its JSON Schema; ``details.violations`` lists the paths."""

    status = 422
    code = "schema_violation"


class EtcdUnavailableError(ConfigCenterError):
    """etcd cannot be reached; writes are refused, reads may be served stale by the mirror."""

    status = 503
    code = "etcd_unavailable"


class ConfigError(ConfigCenterError):
    """The server configuration file or flags are invalid (start-up only)."""

    code = "bad_config"


def error_status(exc: BaseException) -> int:
    """HTTP status for any exception: deliberate errors carry theirs, the rest are 500."""
    return exc.status if isinstance(exc, ConfigCenterError) else 500
