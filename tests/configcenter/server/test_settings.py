"""Configuration limits: a value that would disable a bound or make it meaningless is a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from configcenter.errors import ConfigError
from configcenter.server.settings import load_settings


@pytest.mark.parametrize(("text", "message"), [
    ("limits: {max_streams_per_address: 0}", "limits.max_streams_per_address must be a positive number, got 0"),
    ("limits: {max_instances: -5}", "limits.max_instances must be a positive number, got -5"),
    ("limits: {drain_timeout: -1.5}", "limits.drain_timeout must be a positive number, got -1.5"),
    ("limits: {max_body_bytes: true}", "limits.max_body_bytes must be a positive number, got True"),
    ("watch: {progress_interval: 0}", "watch.progress_interval must be a positive number, got 0"),
    ("limits: {read_queue: -1}", "limits.read_queue must be 0 or more, got -1"),
])
def test_a_limit_that_is_not_positive_is_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert str(caught.value) == message


def test_a_queue_of_zero_means_no_waiting_room(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("limits: {read_queue: 0, write_queue: 0}\n")
    limits = load_settings(config, env={}).limits
    assert (limits.read_queue, limits.write_queue) == (0, 0)
