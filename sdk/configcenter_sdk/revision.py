"""The revision handed to ``on_change`` listeners: an ``int`` that also says who made the release."""

from __future__ import annotations

MAX_AUDIT_TEXT = 256  # longest trace id / principal name the SDK keeps from a server answer


class Revision(int):
    """An etcd revision, usable everywhere an ``int`` is, plus the release's audit stamp.

    ``trace_id``: the trace id of the request that wrote the release (the ``X-Request-ID`` its
    writer got back, the trace-id of its ``traceparent``); ``principal``: the name of the token
    that wrote it.  Both are None when unknown: documents loaded from a snapshot on disk,
    deletions inferred from a ``reset``, releases written before the server recorded them.
    """

    trace_id: str | None
    principal: str | None

    def __new__(cls, value: int, trace_id: str | None = None, principal: str | None = None) -> Revision:
        self = super().__new__(cls, value)
        self.trace_id = trace_id
        self.principal = principal
        return self


def audit_text(value: object) -> str | None:
    """A ``trace_id`` / ``principal`` field of a release as received: a non-empty string, bounded, else None."""
    return value[:MAX_AUDIT_TEXT] if isinstance(value, str) and value else None
