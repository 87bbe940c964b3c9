"""configcenter SDK: subscribe to namespaces, hot-reload config and route requests.

Quick start::

    async with ConfigClient(["http://cc1:8080", "http://cc2:8080"], ["payment/routes"],
                            cache_dir="/var/cache/myservice/configcenter") as client:
        decision = client.route("payment", request.headers)

See ``docs/sdk.md`` for status/fallback semantics and the blocking :class:`SyncConfigClient`.
"""

from __future__ import annotations

from . import wire
from ._sse import SSEEvent, SSEParser
from ._state import ClientError
from .cache import CachedDoc, FallbackCache, Lookup
from .client import ClientStatus, ConfigClient, Mode, NamespaceStatus
from .errors import (
    BackendUnavailableError,
    EventTooLargeError,
    RouteTableError,
    SDKError,
    SnapshotError,
    UnknownNamespaceError,
    UnknownServiceError,
)
from .revision import Revision
from .routing import RouteDecision, RouteTable, compile_table, stable_bucket
from .snapshot import SnapshotStore
from .sync import SyncConfigClient

__all__ = [
    "BackendUnavailableError",
    "CachedDoc",
    "ClientError",
    "ClientStatus",
    "ConfigClient",
    "EventTooLargeError",
    "FallbackCache",
    "Lookup",
    "Mode",
    "NamespaceStatus",
    "Revision",
    "RouteDecision",
    "RouteTable",
    "RouteTableError",
    "SDKError",
    "SSEEvent",
    "SSEParser",
    "SnapshotError",
    "SnapshotStore",
    "SyncConfigClient",
    "UnknownNamespaceError",
    "UnknownServiceError",
    "compile_table",
    "stable_bucket",
    "wire",
]
