"""The attacks section of ``bench_hostile.py``: push p99 and server peak RSS during each attack vs idle.

One server process (``bench_fanout.serve``, default limits) on a real etcd.  Phases of ``seconds``
each: idle, then each attack.  During every phase one writer pushes a small JSON document back to
back (its latencies give p50/p99); an attack is ``ATTACKERS`` anonymous clients repeating one request
as fast as they are answered (429s included).  Peak RSS is the server process's ``VmHWM`` after
resetting it at the start of the phase (``/proc/<pid>/clear_refs`` ← 5), minus its RSS then; the
same for its read-lane worker process (route bodies and diffs run there), shown separately.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from bench_fanout import TOKEN, pct, serve, wait_ready

from configcenter._yaml_render import render_lines
from configcenter.cli.embedded_etcd import free_port
from configcenter.server.settings import Settings

ATTACKERS = 8
MB = 1 << 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rss(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> int:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return rss(pid, "VmRSS")
    except OSError:
        return rss(pid, "VmHWM")


def read_workers(parent: int) -> list[int]:
    """The server's read-lane worker processes (``configcenter/server/cpu/_read_worker.py``)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if (b"configcenter.server.cpu._read_worker" in cmdline.read_bytes()
                    and int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def peaks_since(baselines: dict[int, int]) -> int:
    """Growth of the peaks of these processes (one that exited since: not counted)."""
    total = 0
    for pid, baseline in baselines.items():
        try:
            total += rss(pid, "VmHWM") - baseline
        except OSError:
            continue
    return total


def big_doc(marker: str) -> dict[str, Any]:
    return {"items": [{"name": f"item-{i}", "value": i, "tags": ["a", "b", marker]} for i in range(9_000)]}


async def put(http: aiohttp.ClientSession, url: str, ns: str, doc: dict[str, Any]) -> int:
    async with http.put(f"{url}/v1/namespaces/{ns}", json={"kind": "config", "doc": doc}, headers=AUTH) as resp:
        assert resp.status in (200, 201), await resp.text()
        return int((await resp.json())["revision"])


async def prepare(http: aiohttp.ClientSession, url: str) -> dict[str, tuple[str, str, bytes, str]]:
    """The four attacks as (method, path, body, content type); pushes the releases they diff."""
    key = "k" * 20_000
    row4 = [await put(http, url, "attack/row4", {key: [v] * 12_000}) for v in (0, 1)]
    big = [await put(http, url, "attack/big", big_doc(m)) for m in ("x", "y")]
    flood = {"headers": {"x": "y"}, "padding": [{"name": f"item-{i}", "tags": ["a", "b"]} for i in range(15_000)]}
    yaml_body = "".join(render_lines(flood, max_lines=1 << 30, max_chars=1 << 30)).encode()
    return {
        "row 3 (180 KB route body, 60,000-char key)": (
            "POST", "/v1/namespaces/attack/routes/route", orjson.dumps({"k" * 60_000: [[]] * 40_000}),
            "application/json"),
        "row 4 (diff, 12,000 changed leaves)": (
            "GET", f"/v1/namespaces/attack/row4/diff?from={row4[0]}&to={row4[1]}", b"", ""),
        f"/route YAML flood ({len(yaml_body) // 1024} KB bodies)": (
            "POST", "/v1/namespaces/attack/routes/route", yaml_body, "application/yaml"),
        "diff flood (two 400 KB documents)": (
            "GET", f"/v1/namespaces/attack/big/diff?from={big[0]}&to={big[1]}", b"", ""),
    }


async def alone(url: str, attack: tuple[str, str, bytes, str], runs: int = 3) -> tuple[int, float]:
    """One attack request on an otherwise idle server: its status and its best time of ``runs`` (s).
    (The unit suite checks what rows 3 and 4 answer and their memory; their time is measured here.)"""
    method, path, body, content_type = attack
    headers = {"Content-Type": content_type} if content_type else {}
    best, status = float("inf"), 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        for _ in range(runs):
            started = time.perf_counter()
            async with http.request(method, url + path, data=body or None, headers=headers) as resp:
                await resp.read()
                status = resp.status
            best = min(best, time.perf_counter() - started)
    return status, best


async def attacker(url: str, attack: tuple[str, str, bytes, str], until: float, statuses: Counter[int]) -> None:
    method, path, body, content_type = attack
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        while time.monotonic() < until:
            async with http.request(method, url + path, data=body or None, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] += 1
                if resp.status == 429:
                    await asyncio.sleep(0.05)  # a polite client would wait Retry-After; a hostile one does not


def attack_process(url: str, attack: tuple[str, str, bytes, str], until: float, out: Any) -> None:
    """The attackers in a process of their own, so the pusher's latencies are the server's, not
    those of a client loop busy sending 8 attackers' bodies."""
    statuses: Counter[int] = Counter()

    async def run() -> None:
        await asyncio.gather(*(attacker(url, attack, until, statuses) for _ in range(ATTACKERS)))

    asyncio.run(run())
    out.put(dict(statuses))


async def pusher(http: aiohttp.ClientSession, url: str, until: float) -> list[float]:
    took, i = [], 0
    while time.monotonic() < until:
        started = time.perf_counter()
        await put(http, url, "attack/writes", {"round": i})
        took.append(time.perf_counter() - started)
        i += 1
        await asyncio.sleep(0.01)
    return took


async def phase(url: str, pid: int, attack: tuple[str, str, bytes, str] | None, seconds: float
                ) -> tuple[list[float], tuple[int, int], dict[int, int]]:
    baseline = reset_peak(pid)
    workers = {worker: reset_peak(worker) for worker in read_workers(pid)}
    until = time.monotonic() + seconds
    results: Any = multiprocessing.Queue()
    attackers = multiprocessing.Process(target=attack_process, args=(url, attack, until, results), daemon=True)
    if attack:
        attackers.start()
        await asyncio.sleep(0.3)  # let the attack reach the server first
    async with aiohttp.ClientSession() as http:
        took = await pusher(http, url, until)
    statuses: dict[int, int] = {}
    if attack:
        statuses = await asyncio.to_thread(results.get, True, 120)
        attackers.join(10)
    new = {worker: 0 for worker in read_workers(pid) if worker not in workers}  # started during the phase
    return took, (rss(pid, "VmHWM") - baseline, peaks_since({**workers, **new})), statuses


async def attacks_section(endpoints: list[str], seconds: float) -> None:
    port = free_port()
    settings = Settings(port=port, etcd_endpoints=tuple(endpoints), tokens={TOKEN: "writer"})  # type: ignore[arg-type]
    proc = multiprocessing.Process(target=serve, args=(settings,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url)
        async with aiohttp.ClientSession() as http:
            attacks = await prepare(http, url)
        idle, (idle_peak, _), _ = await phase(url, proc.pid or 0, None, seconds)
        idle_p50, idle_p99 = pct(idle, 0.5), pct(idle, 0.99)
        print(f"push idle: p50 {idle_p50:.1f} ms, p99 {idle_p99:.1f} ms ({len(idle)} pushes), "
              f"server peak RSS +{idle_peak / MB:.1f} MB (baseline)")
        for name, attack in attacks.items():
            status, best = await alone(url, attack)
            print(f"{name} alone: {status} in {best * 1e3:.0f} ms (best of 3)")
            took, (peak, worker_peak), statuses = await phase(url, proc.pid or 0, attack, seconds)
            answers = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
            print(f"push during {name}: p50 {pct(took, 0.5):.1f} ms, p99 {pct(took, 0.99):.1f} ms "
                  f"({pct(took, 0.99) / idle_p99:.2f}x idle p99), server peak RSS +{peak / MB:.1f} MB "
                  f"(read worker +{worker_peak / MB:.1f} MB); {ATTACKERS} attackers got {answers}")
    finally:
        proc.terminate()
        proc.join()
