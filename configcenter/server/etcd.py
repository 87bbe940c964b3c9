"""Thin glue over etcd3aio: client construction, key layout and error mapping.

Kept private so the rest of the server speaks in namespaces and releases,
never in raw keys or gRPC status codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdError

# etcd3aio exposes no progress requests on its watch helper, so the mirror
# drives the Watch stream itself with the generated stubs it ships.
from etcd3aio._protobuf import rpc_pb2, rpc_pb2_grpc

from ..errors import EtcdUnavailableError

WatchRequest = rpc_pb2.WatchRequest
WatchCreateRequest = rpc_pb2.WatchCreateRequest
WatchProgressRequest = rpc_pb2.WatchProgressRequest
WatchResponse = rpc_pb2.WatchResponse
EVENT_PUT = 0
EVENT_DELETE = 1


class KeyLayout:
    """Where things live in etcd under the configured prefix (default ``/configcenter/``).

    ``docs/<ns>`` holds the current record; ``history/<ns>/<version:012d>``
    holds every release, written in the same transaction as ``docs/<ns>``.
    """

    def __init__(self, prefix: str = "/configcenter/") -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.docs_prefix = f"{prefix}docs/".encode()

    def doc_key(self, ns: str) -> bytes:
        return self.docs_prefix + ns.encode()

    def history_prefix(self, ns: str) -> bytes:
        return f"{self.prefix}history/{ns}/".encode()

    def history_key(self, ns: str, version: int) -> bytes:
        return self.history_prefix(ns) + f"{version:012d}".encode()

    def ns_of_doc_key(self, key: bytes) -> str:
        return key[len(self.docs_prefix):].decode()

    @staticmethod
    def version_of_history_key(key: bytes) -> int:
        return int(key.rsplit(b"/", 1)[1])


def connect(endpoints: Sequence[str]) -> Etcd3Client:
    """An unconnected client; ``await client.connect()`` opens the channel lazily (no I/O)."""
    clean = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
    return Etcd3Client(clean, rpc_max_attempts=2, watch_reconnect_backoff_seconds=0.1)


def watch_stub(client: Etcd3Client) -> rpc_pb2_grpc.WatchStub:
    """A raw Watch stub on the client's channel (see module note on progress requests)."""
    channel = client._channel
    if channel is None:
        raise RuntimeError("etcd client is not connected")
    return rpc_pb2_grpc.WatchStub(channel)


@contextlib.contextmanager
def etcd_errors(action: str) -> Iterator[None]:
    """Turn every way an etcd call can fail for lack of etcd into ``EtcdUnavailableError`` (503)."""
    try:
        yield
    except (EtcdError, grpc.aio.AioRpcError, TimeoutError, ConnectionError) as exc:
        raise EtcdUnavailableError(
            f"etcd is unavailable, cannot {action}: {exc.__class__.__name__}: {exc}".strip(),
            action=action,
        ) from exc
