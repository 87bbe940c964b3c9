"""The etcd3aio internals configcenter relies on (``configcenter/server/etcd/_etcd3aio.py``), each pinned by name,
and the facade failing closed when the one that carries TLS and credentials moves.

If a test here fails after an etcd3aio upgrade, the upgrade changed something the server depends on:
adapt ``_etcd3aio.py`` (and only it) before widening the version range in pyproject.toml.
"""

from __future__ import annotations

import inspect
from typing import Any

import grpc.aio
import pytest
from etcd3aio import Etcd3Client

from configcenter.server.etcd import _etcd3aio as _etcd3aio
from configcenter.server.etcd import connect


def test_the_channel_factory_lives_in_etcd3aio_client_manager() -> None:
    client = Etcd3Client(["127.0.0.1:1"])
    assert isinstance(client._manager, _etcd3aio.ConnectionManager)
    manager = client._manager
    assert isinstance(manager.grpc_options, list) and isinstance(manager.target, str)
    assert list(inspect.signature(manager.get_channel).parameters) == [
        "ca_cert", "cert_key", "cert_chain", "tls_server_name"]


async def test_connect_builds_the_channel_through_the_factory_and_keeps_it_in_channel() -> None:
    client = connect(["127.0.0.1:1"])  # lazy: no I/O until a call
    await client.connect()
    try:
        assert client._channel is client._channels.built is not None
        assert _etcd3aio.channel_of(client) is client._channel
        kv: Any = client.kv
        assert callable(kv._rpc) and hasattr(kv._stub, "Range")
    finally:
        await client.close()


def test_the_generated_messages_and_stubs_we_drive() -> None:
    pb, stubs = _etcd3aio.rpc_pb2, _etcd3aio.rpc_pb2_grpc
    for message in ("WatchRequest", "WatchCreateRequest", "WatchProgressRequest", "WatchResponse", "TxnRequest",
                    "LeaseKeepAliveRequest"):
        assert hasattr(pb, message), message
    assert {"min_mod_revision", "max_mod_revision", "keys_only", "limit", "revision"} <= set(
        pb.RangeRequest.DESCRIPTOR.fields_by_name)
    assert {"progress_notify", "start_revision"} <= set(pb.WatchCreateRequest.DESCRIPTOR.fields_by_name)
    assert hasattr(stubs, "WatchStub") and hasattr(stubs, "LeaseStub")
    compare = _etcd3aio.Compare
    assert {"range_end", "mod_revision", "create_revision"} <= set(compare.DESCRIPTOR.fields_by_name)
    assert (compare.EQUAL, compare.LESS, compare.MOD, compare.CREATE) is not None


def test_a_client_whose_factory_moved_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Etcd3Client.__init__

    def renamed(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._connections = self.__dict__.pop("_manager")

    monkeypatch.setattr(Etcd3Client, "__init__", renamed)
    with pytest.raises(_etcd3aio.EtcdInternalsChanged, match="refuses to connect"):
        connect(["127.0.0.1:1"])


async def test_a_client_that_connects_on_a_channel_we_did_not_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def own_channel(self: Any) -> None:  # an etcd3aio that stopped asking its factory
        self._channel = grpc.aio.insecure_channel("127.0.0.1:1")

    monkeypatch.setattr(Etcd3Client, "connect", own_channel)
    client = connect(["127.0.0.1:1"])
    with pytest.raises(_etcd3aio.EtcdInternalsChanged, match="did not build"):
        await client.connect()
    assert client._channel is None  # closed again: nothing usable is left connected
