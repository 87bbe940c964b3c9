"""``configcenter dev`` as a real process: embedded etcd, examples loaded, clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from configcenter.cli.embedded_etcd import EtcdCluster, free_port

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_NAMESPACES = ["orders/config", "orders/routes", "payment/routes"]


def processes_using(fragment: str) -> list[int]:
    """PIDs whose command line mentions ``fragment`` (e.g. an etcd data dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


async def wait_for_examples(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[str]) -> list[str]:
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"dev exited early with {proc.returncode}: {err.strip()}")
        try:
            async with http.get(f"{url}/readyz") as ready:
                if ready.status == 200:
                    async with http.get(f"{url}/v1/namespaces") as resp:
                        names = [n["ns"] for n in (await resp.json())["namespaces"]]
                    if len(names) >= len(EXAMPLE_NAMESPACES):
                        return names
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("dev did not load the examples within 30s")


def read_banner(proc: subprocess.Popen[str]) -> str:
    """stdout up to the banner's last line (the examples are loaded by then)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("press Ctrl-C"):
            break
    return "".join(lines)


def start_dev(port: int, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "configcenter", "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@contextlib.contextmanager
def reaped(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill ``proc`` on the way out if the test did not stop it (never leave etcd or a server behind)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def stop_dev(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    return proc.returncode, out, err


async def test_dev_loads_examples_and_stops_cleanly(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    data_dir = tmp_path / "etcd"
    port = free_port()
    with reaped(start_dev(port, data_dir)) as proc:
        names = await wait_for_examples(http, f"http://127.0.0.1:{port}", proc)
        assert names == EXAMPLE_NAMESPACES
        banner = await asyncio.wait_for(asyncio.to_thread(read_banner, proc), 30)
        async with http.post(f"http://127.0.0.1:{port}/v1/namespaces/payment/routes/route",
                             json={"headers": {"x-release": "v2-beta"}}) as resp:
            assert (await resp.json())["cluster"] == "payment-canary"
        async with http.get(f"http://127.0.0.1:{port}/ui/") as resp:  # the console, with no extra step
            assert resp.status == 200 and "app.js" in await resp.text()
        assert processes_using(str(data_dir))  # etcd is running on our data dir
        code, _, err = await stop_dev(proc)
    assert code == 0, err
    assert f"http://127.0.0.1:{port}" in banner and "export CONFIGCENTER_TOKEN=" in banner
    assert f"console: http://127.0.0.1:{port}/ui/" in banner
    assert banner.count("loaded revision") == 3
    assert processes_using(str(data_dir)) == []


async def test_dev_keeps_data_between_runs(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    data_dir = tmp_path / "etcd"
    for run in range(2):
        port = free_port()
        with reaped(start_dev(port, data_dir)) as proc:
            assert await wait_for_examples(http, f"http://127.0.0.1:{port}", proc) == EXAMPLE_NAMESPACES
            banner = await asyncio.wait_for(asyncio.to_thread(read_banner, proc), 30)
            code, _, err = await stop_dev(proc)
        assert code == 0, err
        assert banner.count("loaded revision" if run == 0 else "already present") == 3
    assert processes_using(str(data_dir)) == []


async def test_serve_with_a_config_file_serves_and_stops_on_sigterm(
    tmp_path: Path, etcd: EtcdCluster, http: aiohttp.ClientSession,
) -> None:
    port = free_port()
    config = tmp_path / "server.yaml"
    config.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f"etcd: {{endpoints: [{etcd.endpoints[0]}], prefix: /cc-serve-{port}/}}\n"
        "auth: {tokens: [{token: serve-writer, role: writer}]}\n"
        "limits: {max_body_bytes: 2048}\n"
    )
    serve = subprocess.Popen([sys.executable, "-m", "configcenter", "serve", "--config", str(config)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    with reaped(serve) as proc:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            assert proc.poll() is None and asyncio.get_running_loop().time() < deadline, "serve did not start"
            try:
                async with http.get(f"{url}/readyz") as ready:
                    if ready.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        body = {"kind": "config", "doc": {"from": "serve"}}
        async with http.put(f"{url}/v1/namespaces/serve/cfg", json=body,
                            headers={"Authorization": "Bearer serve-writer"}) as resp:
            assert resp.status == 201
        big = {"kind": "config", "doc": {"blob": "x" * 4096}}
        async with http.put(f"{url}/v1/namespaces/serve/cfg", json=big,
                            headers={"Authorization": "Bearer serve-writer"}) as resp:
            assert resp.status == 413  # the config file's limit is in force
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    assert f"listening on http://127.0.0.1:{port}" in err
