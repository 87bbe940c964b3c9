"""Fuzz every admin API operation against ``schemas/openapi.yaml`` (schemathesis) on a live server.

The server listens on a real socket and talks to its own etcd member (a fresh
one, so revisions, and with them this derandomized run, are the same every
time).  Both examples are pushed twice before fuzzing, and half of the
generated namespaces and revisions are drawn from those seeded releases, so
reads, diffs, rollbacks and route evaluation meet real data, not only 404s.

Each operation gets its schema examples, schemathesis' coverage cases and up
to ``MAX_EXAMPLES`` generated requests, valid and invalid (positive and
negative generation), all sent with the writer token (schemathesis drops it
in some cases: those exercise the 401s).  Every response must:

* not be a 5xx;
* conform to the spec: documented status code, content type, headers, body schema;
* accept what the spec allows (a schema-valid request gets 2xx, or an answer
  that depends on state: 401/403/404/409/412/413/422) and reject what it forbids;
* if it is a 4xx, leave etcd's revision (read from etcd itself, linearizably,
  before and after the call) where it was: a rejected request writes nothing.

``GET /v1/watch`` is excluded: its 200 is an endless SSE stream that the
blocking transport would wait on forever.  Its rejections (bad ``ns``,
``since``, ``Last-Event-ID``) are rows of ``test_bad_input.py``; its events are
covered by ``test_watch.py``.  Run with ``-s`` to see the statuses per operation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from configcenter.cli.embedded_etcd import EtcdCluster
from helpers import WRITER, RunningServer, server_settings, start_server

ROOT = Path(__file__).resolve().parents[3]
MAX_EXAMPLES = 50
T = TypeVar("T")

CONFIG = SchemathesisConfig.from_dict({
    "seed": 20240501,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
    "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "413", "422"]}},
})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, positive_data_acceptance, negative_data_rejection]
schema = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.yaml", config=CONFIG).exclude(
    path="/v1/watch")

# namespace -> (example file, and an edit that makes its second release differ from the first)
SEEDED = {
    "payment/routes": ("payment-routes.yaml", "value: 10", "value: 20"),
    "orders/config": ("orders-config.yaml", "log_level: info", "log_level: debug"),
}
# A fresh etcd starts at revision 1, so ``seed`` writes revisions 2-5 (checked there).  History keeps
# them whatever the fuzz does later: reads at, diffs between and rollbacks to them find a release.
SEEDED_REVISIONS = [2, 3, 4, 5]
OWN_REVISIONS = {"payment/routes": (2, 3), "orders/config": (4, 5)}
_revision = st.sampled_from(SEEDED_REVISIONS)
SEEDED_QUERIES = {
    "GET /v1/namespaces/{ns}": st.fixed_dictionaries({}, optional={"revision": _revision}),
    "GET /v1/namespaces/{ns}/diff": st.fixed_dictionaries({"from": _revision}, optional={"to": _revision}),
    "GET /v1/namespaces/{ns}/history": st.fixed_dictionaries({}, optional={"before": _revision}),
}
SEEDED_BODIES = {"POST /v1/namespaces/{ns}/rollback": st.fixed_dictionaries({"to_revision": _revision})}


def _label(context: Any) -> str:
    return str(context.operation.label) if context.operation is not None else ""


@schema.hook
def before_generate_path_parameters(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half of the generated namespaces are the seeded ones (operations on an ``{ns}`` path)."""
    if context.operation is None or "{ns}" not in str(context.operation.path):
        return strategy
    return st.one_of(strategy, st.sampled_from([{"ns": ns} for ns in SEEDED]))


@schema.hook
def before_generate_query(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half of the generated revisions (``revision``, ``from``, ``to``, ``before``) are seeded ones."""
    seeded = SEEDED_QUERIES.get(_label(context))
    return strategy if seeded is None else st.one_of(strategy, seeded)


@schema.hook
def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half of the generated rollbacks go to a seeded revision."""
    seeded = SEEDED_BODIES.get(_label(context))
    return strategy if seeded is None else st.one_of(strategy, seeded)


@schema.hook
def map_case(context: Any, case: Any) -> Any:
    """A seeded revision sent to a seeded namespace becomes one of that namespace's own (else it is a 404)."""
    own = OWN_REVISIONS.get(unquote(str((case.path_parameters or {}).get("ns"))))  # arrives URL-encoded
    if own is None:
        return case
    for params in (case.query, case.body):
        if isinstance(params, dict):
            for key, value in params.items():
                if value in SEEDED_REVISIONS and not isinstance(value, bool):
                    params[key] = own[value % 2]
    return case


@schema.hook
def filter_body(context: Any, body: Any) -> bool:
    """No ``to_revision: 4.0``: JSON Schema counts it an integer, the server wants a JSON integer (see the spec)."""
    return not (isinstance(body, dict) and isinstance(body.get("to_revision"), float))


class ThreadedServer:
    """A configcenter server on its own event loop in a background thread (the fuzz calls are blocking)."""

    def __init__(self, cluster: EtcdCluster) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server", daemon=True)
        self.thread.start()
        settings = server_settings(cluster)  # instance leases outlive the run: an expiry would move etcd's revision
        settings = replace(settings, watch=replace(settings.watch, instance_ttl=3600.0))
        self.server: RunningServer = self.run(start_server(settings, cluster))
        self.url = self.server.url

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def etcd_revision(self) -> int:
        """etcd's current revision, read from etcd (not the server's mirror)."""
        return self.run(self.server.runtime.store.current_revision())

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Stats:
    """Requests and statuses per operation, printed when the module ends."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)

    def summary(self) -> str:
        total = sum(sum(c.values()) for c in self.statuses.values())
        lines = [f"fuzz: {len(self.statuses)} operations, {total} requests, {time.monotonic() - self.started:.1f} s"]
        lines += [f"  {op}: {dict(sorted(c.items()))}" for op, c in sorted(self.statuses.items())]
        return "\n".join(lines)


def seed(url: str) -> list[int]:
    """Push each example, then an edited second release (for history, diff, rollback); return the revisions."""
    headers = {"Authorization": f"Bearer {WRITER}", "Content-Type": "application/yaml"}
    revisions = []
    for ns, (name, old, new) in SEEDED.items():
        text = (ROOT / "examples" / name).read_text()
        for body in (text, text.replace(old, new)):
            response = requests.put(f"{url}/v1/namespaces/{ns}", data=body.encode(), headers=headers, timeout=10)
            response.raise_for_status()
            revisions.append(response.json()["revision"])
    return revisions


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadedServer]:
    with EtcdCluster(1) as cluster:
        server = ThreadedServer(cluster)
        try:
            assert seed(server.url) == SEEDED_REVISIONS
            yield server
        finally:
            server.close()


@pytest.fixture(autouse=True)
def reseed(live: ThreadedServer) -> None:
    """Before each operation's run, drop fuzzed schemas (one could refuse the seeded documents), then put the
    seeded namespaces back (an earlier DELETE may have removed them)."""
    headers = {"Authorization": f"Bearer {WRITER}"}
    for item in requests.get(f"{live.url}/v1/schemas", timeout=10).json()["schemas"]:
        requests.delete(f"{live.url}/v1/schemas/{item['target']}", headers=headers, timeout=10).raise_for_status()
    seed(live.url)


@pytest.fixture(scope="module")
def stats() -> Iterator[Stats]:
    collected = Stats()
    yield collected
    print("\n" + collected.summary())


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_spec_and_rejections_write_nothing(
    case: Any, live: ThreadedServer, session: requests.Session, stats: Stats,
) -> None:
    before = live.etcd_revision()
    response = case.call(base_url=live.url, session=session, headers={"Authorization": f"Bearer {WRITER}"},
                         timeout=10)
    after = live.etcd_revision()
    stats.statuses[case.operation.label][response.status_code] += 1
    if 400 <= response.status_code < 500:
        assert after == before, (f"{case.operation.label} answered {response.status_code} but etcd moved "
                                 f"from revision {before} to {after}: {response.text[:300]}")
    case.validate_response(response, checks=CHECKS)
