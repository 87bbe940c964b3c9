"""Calls a type checker must refuse: the SDK's signatures are visible, the sync client's included."""

from __future__ import annotations

from configcenter_sdk import ConfigClient, SyncConfigClient


def wrong() -> None:
    SyncConfigClient(["http://cc:8080"], ["payment/routes"], cache_ttl="ten")
    ConfigClient(["http://cc:8080"], ["payment/routes"], no_such_option=True)
