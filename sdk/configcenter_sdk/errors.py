"""The SDK's exception hierarchy.

Everything the SDK raises on purpose derives from :class:`SDKError`, so a
service can catch one type around its configcenter calls.
"""

from __future__ import annotations


class SDKError(Exception):
    """Base class of every error the SDK raises on purpose."""


class RouteTableError(SDKError, ValueError):
    """A route table document cannot be compiled; the previous table stays in use."""


class UnknownServiceError(SDKError, LookupError):
    """No route table is loaded for the requested service."""


class UnknownNamespaceError(SDKError, LookupError):
    """The namespace is not subscribed or has no document (live, memory or disk)."""


class SnapshotError(SDKError):
    """An on-disk snapshot is unreadable, corrupt or belongs to another namespace."""


class BackendUnavailableError(SDKError, ConnectionError):
    """No configcenter server could be reached (the client is in fallback mode)."""


class EventTooLargeError(SDKError):
    """A server sent an SSE line or event past the client's ``max_event_bytes``.

    The client drops that connection, counts it (``status().oversized_events``), logs it
    and reconnects to the next server; the documents it holds stay in use meanwhile.
    """

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit
