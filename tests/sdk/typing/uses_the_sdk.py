"""A service's use of the SDK, checked with ``mypy --strict`` against the installed SDK (scripts/check_sdk_alone.py)."""

from __future__ import annotations

from configcenter_sdk import ClientStatus, ConfigClient, RouteDecision, SyncConfigClient


def route_sync() -> str:
    with SyncConfigClient(["http://cc:8080"], ["payment/routes"], cache_ttl=10.0, service="checkout") as client:
        decision: RouteDecision = client.route("payment", {"x-user-id": "42"})
        status: ClientStatus = client.status()
        return f"{decision.cluster} {status.mode}"


async def route_async() -> str:
    async with ConfigClient(["http://cc:8080"], ["payment/routes"], report=False) as client:
        return client.route("payment", {}).cluster
