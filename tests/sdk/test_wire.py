"""The event stream's wire format is written once (configcenter_sdk.wire) and the server, the SDK and the CLI
all read it from there."""

from __future__ import annotations

import pytest

from configcenter_sdk import wire


@pytest.mark.parametrize(("raw", "parsed"), [
    ("1043", (None, 1043)),
    ("a7add6a5f1a85547:1043", ("a7add6a5f1a85547", 1043)),
    (str(2**63 - 1), (None, 2**63 - 1)),
    (str(2**63), None),  # above int64
    ("A7:1", None),  # uppercase hex is not what the server sends
    ("1" * 20, None),
    ("x" * 10_000, None),  # refused by length before any pattern runs
    ("", None),
    (None, None),
])
def test_event_ids_parse_exactly_the_servers_format(raw: str | None, parsed: tuple[str | None, int] | None) -> None:
    assert wire.parse_event_id(raw) == parsed


def test_an_id_round_trips() -> None:
    assert wire.parse_event_id(wire.format_event_id(0xA7ADD6A5F1A85547, 99)) == ("a7add6a5f1a85547", 99)
    assert wire.format_event_id(0, 99) == "99"


def test_backwards_reasons_are_reset_reasons() -> None:
    assert wire.BACKWARDS_REASONS < wire.RESET_REASONS


def test_the_server_and_the_cli_use_the_one_definition() -> None:
    from configcenter.cli import client as cli_client
    from configcenter.server.watch import changes, mirror, subscription

    assert subscription.BACKWARDS is wire.BACKWARDS_REASONS
    assert (mirror.CLUSTER_CHANGED, mirror.REVISION_WENT_BACK) == (wire.CLUSTER_CHANGED, wire.REVISION_WENT_BACK)
    assert changes.MAX_RESUME_ID == wire.MAX_EVENT_ID
    assert changes.event_id(0xAB, 7) == b"ab:7"
    assert cli_client.wire is wire
