"""Running the CLI in-process for tests: ``cli.main`` in a thread (it runs its own event loop),
its exit code and captured output."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from configcenter import cli
from helpers import WRITER, RunningServer

# every variable the CLI reads its defaults from: a test must not see the developer's
CLI_ENV = ("CONFIGCENTER_SERVER", "CONFIGCENTER_TOKEN", "CONFIGCENTER_AUTHOR", "CONFIGCENTER_CA_FILE",
           "CONFIGCENTER_CLIENT_CERT", "CONFIGCENTER_CLIENT_KEY", "VISUAL")


@dataclass
class Result:
    code: int
    out: str
    err: str


def call_main(argv: list[str]) -> int:
    """``cli.main(argv)``'s exit code (it always exits)."""
    try:
        cli.main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    raise AssertionError("cli.main must raise SystemExit")


async def run_cli(capsys: pytest.CaptureFixture[str], server: RunningServer | None, *argv: str,
                  token: str | None = WRITER) -> Result:
    """The CLI against ``server`` (``--server``/``--token`` unless None) with ``argv``."""
    prefix = ["--server", server.url] if server else []
    prefix += ["--token", token] if token else []
    code = await asyncio.to_thread(call_main, [*prefix, *argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


class Printed:
    """What the CLI printed so far, read from ``capsys`` as it goes: a test waits for a line (a command
    running in a thread has reached a point) instead of sleeping."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.out = self.err = ""

    def read(self) -> Printed:
        captured = self._capsys.readouterr()
        self.out += captured.out
        self.err += captured.err
        return self

    def has(self, text: str) -> bool:
        return text in self.read().out


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)
