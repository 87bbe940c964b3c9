"""The one etcd facade: the client and its connection (TLS, credentials, receive limit), the key layout,
paged reads, compare/transaction helpers, the release store with its history, the layout migration and
error mapping.  Nothing outside this package imports etcd3aio's internals or builds a key."""

from ._etcd3aio import Compare, EtcdInternalsChanged, channel_of, rpc_pb2, rpc_pb2_grpc
from .canary_records import CanaryChange
from .client import (
    EVENT_DELETE,
    EVENT_PUT,
    EtcdClient,
    RequestStream,
    RevisionCompacted,
    WatchCreateRequest,
    WatchProgressRequest,
    WatchRequest,
    WatchResponse,
    compacted,
    connect,
    etcd_errors,
    read_range,
    read_range_since,
    watch_stub,
)
from .credentials import EtcdCredentials
from .history import HistoryReader, LayoutMarker
from .keys import ControlFamily, KeyLayout, history_release, history_revision
from .migration import HistoryMigration, MigrationReport, migrate_history
from .store import GatedWrite, HistoryPage, Store, WriteControl, WriteGate

__all__ = [
    "EVENT_DELETE", "EVENT_PUT", "CanaryChange", "Compare", "ControlFamily", "EtcdClient", "EtcdCredentials",
    "EtcdInternalsChanged", "GatedWrite", "HistoryMigration", "HistoryPage", "HistoryReader", "KeyLayout",
    "LayoutMarker", "MigrationReport", "RequestStream", "RevisionCompacted", "Store", "WatchCreateRequest",
    "WatchProgressRequest", "WatchRequest", "WatchResponse", "WriteControl", "WriteGate", "channel_of", "compacted",
    "connect", "etcd_errors", "history_release", "history_revision", "migrate_history", "read_range",
    "read_range_since", "rpc_pb2", "rpc_pb2_grpc", "watch_stub",
]
