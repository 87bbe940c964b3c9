"""Every row of docs/bad-input.md's "Instance reports" section is a test case here.

The first table (refused reports): each input a row lists is one case of :data:`CASES`, named by
the id the row's last column gives; the request goes over a real socket to a server on a real
etcd, must get the row's status and error code, and must write nothing (the keys under the
server's prefix, read from etcd itself, do not change). The second table (the fleet registry under
attack) names its tests in ``test_instance_guard.py``; a test below checks that each exists.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from etcd3aio import prefix_range_end

from configcenter.server.security import Principal
from configcenter.server.settings import Limits, WatchTuning
from helpers import READER, TEST_PRINCIPALS, RunningServer

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[2] / "docs" / "bad-input.md"
SCOPED = "payment-reader-token"  # a reader scoped to payment/
WATCH = WatchTuning(progress_interval=0.5, backoff_initial=0.05, backoff_max=0.5, etcd_timeout=2.0)


def report(**overrides: Any) -> dict[str, Any]:
    body = {"service": "svc", "labels": {"zone": "a"}, "selectors": ["payment/"], "mode": "live",
            "namespaces": {"payment/routes": {"applied": 5, "source": "live"}}}
    return {**body, **overrides}


def applied(value: Any) -> dict[str, Any]:
    return report(namespaces={"payment/routes": {"applied": value}})


def rejections(count: int) -> dict[str, Any]:
    """A report valid in every field, of about ``count`` KB: only its size is wrong."""
    return report(namespaces={f"payment/n{i}": {"applied": 1, "rejected": 2, "reason": "r" * 1000}
                              for i in range(count)})


@dataclass(frozen=True)
class Case:
    id: str
    body: Any  # bytes as they are, anything else as JSON
    status: int
    code: str
    iid: str = "ok-1"
    token: str | None = READER
    limits: dict[str, Any] = field(default_factory=dict)  # Limits(...) overrides for this case's server


CASES = [
    Case("report-over-max-body-bytes", rejections(70), 413, "payload_too_large"),  # max_body_bytes 64 KiB here
    Case("report-over-128-kib", rejections(140), 413, "payload_too_large", limits={"max_body_bytes": 1 << 20}),
    Case("report-not-json", b"{not json", 400, "invalid_body"),
    Case("report-not-an-object", [], 400, "invalid_body"),
    Case("report-unknown-field", report(extra=1), 400, "invalid_body"),
    Case("report-bad-service", report(service="bad name"), 400, "invalid_body"),
    Case("report-bad-mode", report(mode="asleep"), 400, "invalid_body"),
    Case("report-17-labels", report(labels={f"k{i}": "v" for i in range(17)}), 400, "invalid_body"),
    Case("report-bad-label-key", report(labels={"-k": "v"}), 400, "invalid_body"),
    Case("report-long-label-value", report(labels={"k": "v" * 257}), 400, "invalid_body"),
    Case("report-65-selectors", report(selectors=[f"payment/s{i}/" for i in range(65)]), 400, "invalid_body"),
    Case("report-bad-selector", report(selectors=["Payment/"]), 400, "invalid_body"),
    Case("report-501-namespaces", report(namespaces={f"payment/n{i}": {"applied": 1} for i in range(501)}),
         400, "invalid_body"),
    Case("report-invalid-namespace", report(namespaces={"payment/Bad Name": {"applied": 1}}), 400, "invalid_body"),
    Case("report-reserved-namespace", report(namespaces={"a/rollout": {"applied": 1}}), 400, "invalid_body"),
    Case("report-negative-revision", applied(-1), 400, "invalid_body"),
    Case("report-fractional-revision", applied(1.5), 400, "invalid_body"),
    Case("report-revision-as-string", applied("5"), 400, "invalid_body"),
    Case("report-long-reason", report(namespaces={"payment/routes": {"applied": 1, "rejected": 2,
                                                                      "reason": "x" * 1025}}), 400, "invalid_body"),
    Case("report-bad-id", report(), 400, "invalid_argument", iid="-bad"),
    Case("report-long-id", report(), 400, "invalid_argument", iid="x" * 129),
    Case("report-lease-not-hex", report(lease="not-hex"), 400, "invalid_argument"),
    Case("report-lease-upper-case", report(lease="ABCDEF"), 400, "invalid_argument"),
    Case("report-no-token", report(), 401, "unauthorized", token=None),
    Case("report-selector-outside-scope", report(selectors=["orders/"], namespaces={}), 403, "forbidden",
         token=SCOPED),
    Case("report-namespace-outside-scope", report(namespaces={"orders/config": {"applied": 1}}), 403, "forbidden",
         token=SCOPED),
]


async def keys_under_prefix(server: RunningServer) -> list[tuple[bytes, int]]:
    """Every key under the server's prefix with its mod revision, from etcd itself (other tests' writes
    on the shared etcd do not show here, unlike etcd's global revision)."""
    kv = server.runtime.client.kv
    assert kv is not None
    start = server.prefix.encode()
    resp = await kv.get(start, range_end=prefix_range_end(start), keys_only=True)
    return [(item.key, int(item.mod_revision)) for item in resp.kvs]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_reports_are_refused_and_write_nothing(make_server: Any, http: aiohttp.ClientSession,
                                                         case: Case) -> None:
    scoped = Principal.from_token("payment-reader", SCOPED, "reader", ["payment/"])
    server: RunningServer = await make_server(watch=WATCH, read_requires_token=True,
                                              tokens=(*TEST_PRINCIPALS, scoped),
                                              limits=Limits(**{"max_body_bytes": 64 * 1024, **case.limits}))
    before = await keys_under_prefix(server)
    headers = {"Authorization": f"Bearer {case.token}"} if case.token else {}
    data = case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
    async with http.post(f"{server.url}/v1/instances/{case.iid}/report", data=data, headers=headers) as resp:
        status, answer = resp.status, await resp.json()
    assert (status, answer["error"]["code"]) == (case.status, case.code), answer
    assert answer["error"]["message"]
    assert await keys_under_prefix(server) == before, f"{case.id}: a refused report changed etcd"


def section(title: str) -> list[str]:
    lines = DOC.read_text().splitlines()
    start = lines.index(f"## {title}")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    return lines[start + 1:end]


def tables(lines: list[str]) -> list[list[list[str]]]:
    """The markdown tables of ``lines``: rows of cells, header and separator left out."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif current:
            found.append(current[2:])
            current = []
    return found


def test_the_report_table_is_these_cases() -> None:
    """Each input of the doc's refused-report table is a case, in order; each row's answer is its cases'."""
    refused, _ = tables(section("Instance reports"))
    in_doc = [case for row in refused for case in re.findall(r"`([a-z0-9-]+)`", row[-1])]
    assert in_doc == [c.id for c in CASES]
    by_id = {c.id: c for c in CASES}
    for row in refused:
        for case_id in re.findall(r"`([a-z0-9-]+)`", row[-1]):
            case = by_id[case_id]
            assert f"{case.status} `{case.code}`" in row[1], (case_id, row[1])


def test_the_fleet_table_names_tests_that_exist() -> None:
    """Each row of the doc's fleet-registry table names a test (or "same": the row above's) that exists."""
    _, fleet = tables(section("Instance reports"))
    tests = {node.name for node in ast.walk(ast.parse((HERE / "test_instance_guard.py").read_text()))
             if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and node.name.startswith("test_")}
    named: list[str] = []
    for row in fleet:
        cell = row[-1]
        names = re.findall(r"`::(test_[a-z0-9_]+)`", cell)
        assert names or (cell == "same" and named), row
        named = names or named
        assert set(named) <= tests, (named, row[0])
        for other in re.findall(r"`(test_[a-z0-9_]+\.py)`", cell):
            assert (HERE / other).is_file(), other
