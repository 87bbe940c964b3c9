"""Every use of etcd3aio's internals, in one place (etcd3aio 0.3, its only release, beta).

Why we reach inside at all:

* its ``watch()`` helper resumes from a response header and sends no progress requests, so the mirror
  drives the raw Watch RPC with the stubs etcd3aio generates (``rpc_pb2``, ``rpc_pb2_grpc``);
* the instance registry's lease keep-alives share one raw LeaseKeepAlive stream;
* a range with ``min_mod_revision`` (the mirror's window read) and transaction ``Compare``s on
  ``mod_revision`` / ranges have no helper;
* TLS material and etcd's auth token must be on *every* call, the raw streams included, so the client's
  channel factory (``Etcd3Client._manager``, a ``ConnectionManager``) is replaced by ours.

That last one is a security property, so it fails closed: ``install_channel_factory`` refuses a client
whose factory is not where 0.3 keeps it, and ``verify_channel`` refuses a connected client whose channel
our factory did not build — rather than connect without the TLS or credentials it was configured with.
``tests/contracts/test_etcd3aio_contract.py`` pins each internal listed here and fails by name when one
changes.
"""

from __future__ import annotations

from typing import Any

from etcd3aio import Etcd3Client
from etcd3aio._protobuf import Compare, rpc_pb2, rpc_pb2_grpc
from etcd3aio.connections import ConnectionManager

__all__ = ["Compare", "ConnectionManager", "EtcdInternalsChanged", "channel_of", "install_channel_factory",
           "raw_range", "rpc_pb2", "rpc_pb2_grpc", "verify_channel"]


class EtcdInternalsChanged(RuntimeError):
    """etcd3aio no longer looks the way this module relies on: refuse to run rather than run without
    the TLS or credentials the configuration asks for."""


def install_channel_factory(client: Etcd3Client, factory: ConnectionManager) -> None:
    """Make ``client`` build its channel with ``factory`` (our TLS material and interceptors)."""
    if not isinstance(getattr(client, "_manager", None), ConnectionManager):
        raise EtcdInternalsChanged(
            "etcd3aio no longer keeps its channel factory in Etcd3Client._manager: configcenter cannot put its TLS "
            "material and etcd credentials on the connection, so it refuses to connect (install an etcd3aio "
            "version this configcenter supports: see pyproject.toml)")
    client._manager = factory


def verify_channel(client: Etcd3Client, expected: Any) -> None:
    """After ``connect()``: the client's channel must be the one our factory built."""
    channel = getattr(client, "_channel", None)
    if channel is None or channel is not expected:
        raise EtcdInternalsChanged(
            "etcd3aio connected on a channel configcenter did not build (its TLS and credentials would be missing); "
            "refusing to use it (install an etcd3aio version this configcenter supports: see pyproject.toml)")


def channel_of(client: Etcd3Client) -> Any:
    """The connected client's gRPC channel (for the raw Watch and LeaseKeepAlive streams)."""
    channel = getattr(client, "_channel", None)
    if channel is None:
        raise RuntimeError("etcd client is not connected")
    return channel


async def raw_range(kv: Any, request: Any, timeout: float | None) -> Any:
    """A ``RangeRequest`` as built (filters etcd3aio's ``get`` does not expose), with its retries."""
    return await kv._rpc(kv._stub.Range, request, operation="KV.Range", timeout=timeout)
