"""Releases against etcd's request limit (``etcd.max_request_bytes``): a push stores its record twice
in one etcd transaction (``docs/`` and ``history/``), so the limits must leave room for that.

Checked when the config loads (``limits.max_doc_bytes``), measured by the store before each write
(413, nothing written), and etcd's own refusal, should its limit be lower than configured, is a 413
too, never a 503 that a retry cannot cure.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.errors import ConfigError, PayloadTooLargeError
from configcenter.server.etcd import KeyLayout, Store, connect
from configcenter.server.settings import ETCD_MAX_REQUEST_BYTES, Limits, check_record_fits, load_settings


def test_default_limits_fit_etcds_default_request_limit() -> None:
    check_record_fits(Limits(), ETCD_MAX_REQUEST_BYTES)
    assert load_settings(None, env={}).etcd_max_request_bytes == ETCD_MAX_REQUEST_BYTES


def test_config_refuses_a_max_doc_bytes_that_cannot_be_stored_twice(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("limits: {max_doc_bytes: 1048576}\n")
    with pytest.raises(ConfigError, match=r"^limits.max_doc_bytes 1048576 is too large for etcd.max_request_bytes "
                                          r"1572864: .* at most 753664"):
        load_settings(config, env={})
    config.write_text("limits: {max_doc_bytes: 1048576}\netcd: {max_request_bytes: 3145728}\n")
    settings = load_settings(config, env={})
    assert (settings.limits.max_doc_bytes, settings.etcd_max_request_bytes) == (1_048_576, 3_145_728)
    config.write_text("etcd: {max_request_bytes: 1.5}\n")
    with pytest.raises(ConfigError, match=r"^etcd.max_request_bytes must be a positive integer"):
        load_settings(config, env={})


async def store_on(etcd: EtcdCluster, max_request_bytes: int) -> Store:
    client = connect(etcd.endpoints)
    await client.connect()
    return Store(client, KeyLayout(f"/cc-size-{uuid.uuid4().hex[:8]}/"), max_request_bytes=max_request_bytes)


async def test_store_refuses_an_oversized_release_before_writing(etcd: EtcdCluster) -> None:
    store = await store_on(etcd, ETCD_MAX_REQUEST_BYTES)
    try:
        await store.push("big/ns", "config", {"blob": "x" * 700_000})  # twice 700 KB fits in 1.5 MiB
        before = await store.current_revision()
        with pytest.raises(PayloadTooLargeError, match=r"etcd\.max_request_bytes") as caught:
            await store.push("big/ns", "config", {"blob": "x" * 700_000}, message="m" * 100_000)
        assert caught.value.details["bytes"] > caught.value.details["limit"]
        assert await store.current_revision() == before
    finally:
        await store._client.close()


async def test_etcds_own_refusal_is_payload_too_large(etcd: EtcdCluster) -> None:
    store = await store_on(etcd, 4 * ETCD_MAX_REQUEST_BYTES)  # configured above etcd's real limit
    try:
        before = await store.current_revision()
        with pytest.raises(PayloadTooLargeError) as caught:
            await store.push("big/ns", "config", {"blob": "x" * 900_000})
        assert caught.value.details["reason"] == "etcd_request_too_large"
        assert await store.current_revision() == before
    finally:
        await store._client.close()
