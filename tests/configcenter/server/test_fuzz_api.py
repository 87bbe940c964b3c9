"""Fuzz every admin API operation against ``schemas/openapi.yaml`` (schemathesis) on a live server.

The server listens on a real socket and talks to its own etcd member (a fresh
one, so revisions, and with them this derandomized run, stateful phase included,
are the same every time).  Both examples are pushed twice before fuzzing, and half of the
generated namespaces and revisions are drawn from those seeded releases, so
reads, diffs, rollbacks and route evaluation meet real data, not only 404s.

Each operation gets its schema examples, schemathesis' coverage cases and up to ``MAX_EXAMPLES``
generated requests, valid and invalid (positive and negative generation); then the stateful phase runs
``STATEFUL_SCENARIOS`` sequences of up to ``STATEFUL_STEPS`` calls along the spec's ``links`` (push ->
get / history / diff / rollback / rollout / delete by the pushed revision, report -> goodbye with its
lease, ...), each scenario in a namespace space of its own (``isolate``).  The writer token is
schemathesis' ``bearerAuth`` credential, so a negative case that drops ``Authorization`` goes without
it (those exercise the 401s).  Every response must pass every schemathesis check but those switched
off in ``CONFIG`` with the reason (docs/bad-input.md, "The API fuzz run"):

* not be a 5xx;
* conform to the spec: documented status code, content type, headers, body schema; an undeclared
  method is 405 with ``Allow``; missing ``Authorization`` is 401 where the spec requires a token;
* accept what the spec allows (a schema-valid request gets 2xx, or an answer
  that depends on state: 401/403/404/409/412/413/422/423) and reject what it forbids;

and, if it is a 4xx, leave etcd's revision (read from etcd itself, linearizably, before and after the
call) where it was: a rejected request writes nothing.

Release control is fuzzed too: policies and freezes (set, get, history, delete), proposals (list, get,
approve, reject) and ``?override_freeze=`` on every namespace write.  A policy or freeze set while one
operation is fuzzed would turn the next operations' pushes into 202 proposals or 423s, so ``reseed``
removes every freeze and policy and rejects every open proposal before each operation (each
operation's cases run together, and one operation cannot push into what it just froze).  In the
stateful phase a scenario may freeze or put under review its own namespace space (``isolate``) and then
write into it: 202 and 423 are declared answers of those writes.  Whether a freeze body is accepted
depends on the server's clock (``until`` in the future, at most 366 days away), which no schema can
state: ``clock_free_freeze`` keeps only freezes without ``from`` and with a duration of 1 h to 366 d, so
none expires during the run and the statuses stay the same every time.

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
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from configcenter import errors
from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.model import validate_namespace
from configcenter.schema_rules import validate_target
from configcenter.server.fleet import instance_id
from helpers import WRITER, RunningServer, server_settings, start_server

ROOT = Path(__file__).resolve().parents[3]
MAX_EXAMPLES = 30
STATEFUL_SCENARIOS, STATEFUL_STEPS = 30, 6
T = TypeVar("T")

CONFIG = SchemathesisConfig.from_dict({
    "seed": 20240501,
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
    # schemathesis adds the token itself (bearerAuth), so a negative case that drops Authorization
    # goes without it (a token added by the test would turn it into an accepted "invalid" request)
    "auth": {"openapi": {"bearerAuth": {"bearer": WRITER}}},
    # only the spec's links (inferred ones would carry namespaces listed from other scenarios: see isolate)
    "phases": {"stateful": {"enabled": True, "max-steps": STATEFUL_STEPS, "inference": {"algorithms": []}}},
    "checks": {
        "enabled": True,  # every check schemathesis has, except those switched off below with the reason
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "413", "422", "423"]},
        # 412 besides the defaults: ``?override_freeze=`` is checked by the release gate inside the write, after
        # its guard read compared ``If-Match``, so a stale ``If-Match`` is answered first (nothing is written)
        "negative_data_rejection": {
            "expected-statuses": ["400", "401", "403", "404", "405", "406", "409", "412", "415", "422", "428", "429",
                                  "5xx"]},
        # Off: a delete keeps the namespace's history (and its releases by revision, diffs and rollbacks)
        # readable by design (docs/bad-input.md, "The API fuzz run"); use_after_free would call
        # that a use after free.  test_api.py::test_delete pins that the current read is 404.
        "use_after_free": {"enabled": False},
        # max_response_time stays off (it runs only when given a limit): timings belong in benchmarks.
    },
})
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
SEEDED_BODIES = {
    "POST /v1/namespaces/{ns}/rollback": st.fixed_dictionaries({"to_revision": _revision}),
    # freezes the clock cannot refuse (random strings are rarely durations): see clock_free_freeze
    "PUT /v1/freezes/{target}": st.fixed_dictionaries({"reason": st.sampled_from(["incident 42", "release week"])},
                                                      optional={"until": st.sampled_from(["1h", "36h", "366d"])}),
}
FREEZE_WINDOW = (3600, 366 * 86400)  # seconds: outlasts the run; the server's limit
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


def carried_integers(value: Any) -> bool:
    """Whether every integer in ``value`` is one the server's parsers carry: [-2**63, 2**64 - 1] (else 400)."""
    if isinstance(value, dict):
        return all(carried_integers(v) for v in value.values())
    if isinstance(value, list):
        return all(carried_integers(v) for v in value)
    return not isinstance(value, int) or -(2**63) <= value <= 2**64 - 1


@schema.hook
def filter_body(context: Any, body: Any) -> bool:
    """No ``to_revision: 4.0`` (JSON Schema counts it an integer, the server wants a JSON integer) and no
    integer beyond 64 bits in a document: constraints the spec states in prose (JSON Schema would need a
    recursive schema over every document), rows of ``test_bad_input.py``."""
    if isinstance(body, dict) and isinstance(body.get("to_revision"), float):
        return False
    return carried_integers(body)


def clock_free_freeze(body: Any) -> bool:
    """Whether a freeze body's acceptance does not depend on the server's clock: no RFC 3339 ``from``
    (a time may lie in the past or the future of the run), and ``until`` absent, null, not a string of
    at most 40 characters (then the body is invalid anyway: 400 whatever the time) or a duration of 1 h
    to 366 d (an RFC 3339 ``until`` may be past; a shorter freeze could end mid-run)."""
    if not isinstance(body, dict):
        return True
    start, until = body.get("from"), body.get("until")
    if isinstance(start, str) and len(start) <= 40:
        return False
    if not isinstance(until, str) or len(until) > 40:
        return True
    digits, unit = until[:-1], until[-1:]
    if unit not in _UNITS or not (digits.isascii() and digits.isdigit()) or digits.startswith("0") or len(digits) > 7:
        return False
    return FREEZE_WINDOW[0] <= int(digits) * _UNITS[unit] <= FREEZE_WINDOW[1]


@schema.hook
def filter_case(context: Any, case: Any) -> bool:
    """Freeze bodies whose acceptance depends on the clock are not sent (``clock_free_freeze``)."""
    return _label(context) != "PUT /v1/freezes/{target}" or clock_free_freeze(case.body)


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
    """Before each operation's run, drop fuzzed freezes and review policies (they would make the next
    operations' writes 423 or 202) and reject open proposals, drop fuzzed schemas (one could refuse the
    seeded documents), then put the seeded namespaces back (an earlier DELETE may have removed them; a
    canary left running is aborted first, or the push would be 409)."""
    headers = {"Authorization": f"Bearer {WRITER}"}
    for family in ("freezes", "policies"):
        for item in requests.get(f"{live.url}/v1/{family}", headers=headers, timeout=10).json()[family]:
            requests.delete(f"{live.url}/v1/{family}/{item['target']}", headers=headers, timeout=10).raise_for_status()
    for item in requests.get(f"{live.url}/v1/proposals", headers=headers, timeout=10).json()["proposals"]:
        requests.post(f"{live.url}/v1/proposals/{item['id']}/reject", headers=headers, timeout=10).raise_for_status()
    for ns in SEEDED:
        requests.delete(f"{live.url}/v1/namespaces/{ns}/canary", headers=headers, timeout=10)  # 409/404: none
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


def checked_call(case: Any, live: ThreadedServer, session: requests.Session, stats: Stats, phase: str = "") -> Any:
    """Send ``case``; a 4xx must leave etcd's revision where it was."""
    before = live.etcd_revision()
    response = case.call(base_url=live.url, session=session, timeout=10)
    after = live.etcd_revision()
    stats.statuses[phase + case.operation.label][response.status_code] += 1
    if 400 <= response.status_code < 500:
        assert after == before, (f"{case.operation.label} answered {response.status_code} but etcd moved "
                                 f"from revision {before} to {after}: {response.text[:300]}")
    return response


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_spec_and_rejections_write_nothing(
    case: Any, live: ThreadedServer, session: requests.Session, stats: Stats,
) -> None:
    response = checked_call(case, live, session, stats)
    case.validate_response(response, transport_kwargs={"base_url": live.url, "timeout": 10})


def isolate(case: Any, scenario: int) -> None:
    """Move the case's namespace, schema target or instance id into the scenario's own space (the first
    segment becomes ``sNNNN``; an id gets the prefix ``sNNNN-``); invalid ones are left as generated.

    Why: Hypothesis replays the first draws of earlier scenarios and requires every draw to behave as
    before; which rules it may draw next depends on the statuses seen (a push is 201 only for a new
    namespace, a report 409 for an id another live record holds).  In a space of its own, a scenario's
    statuses depend only on its own steps, so the run is deterministic.  Idempotent (links carry
    values already moved)."""
    params = case.path_parameters
    if not params:
        return
    if str(case.operation.path).startswith("/v1/proposals/"):
        return  # a proposal id is global (a moved one would only be a 400); random ids are 404 in any scenario
    tag = f"s{scenario:04d}"
    moves = (("ns", validate_namespace, lambda raw: "/".join([tag, *raw.split("/")[1:]])),
             ("target", validate_target, lambda raw: "/".join([tag, *raw.split("/")[1:]])),
             ("id", instance_id, lambda raw: raw if raw.startswith(f"{tag}-") else f"{tag}-{raw}"[:128]))
    for key, validate, move in moves:
        if isinstance(params.get(key), str):
            raw = unquote(params[key])
            try:
                validate(raw)
            except errors.ConfigCenterError:
                continue  # left invalid: the server answers 400 whatever the state
            params[key] = move(raw)


def test_stateful_sequences_follow_the_links(live: ThreadedServer, session: requests.Session, stats: Stats) -> None:
    """The stateful phase: sequences along the spec's links (push -> get / history / diff / rollback /
    rollout / delete by the revision pushed, schema set -> get / history / delete, report -> goodbye
    with its lease), every response under every check, every 4xx writing nothing."""
    scenarios = iter(range(1, 10**6))

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            self.scenario = next(scenarios)

        def before_call(self, case: Any) -> None:
            isolate(case, self.scenario)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": live.url, "session": session, "timeout": 10}

        def call(self, case: Any, **kwargs: Any) -> Any:
            return checked_call(case, live, session, stats, "stateful ")

    Workflow.run(settings=settings(max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS,
                                   derandomize=True, deadline=None, database=None, phases=[Phase.generate],
                                   suppress_health_check=list(HealthCheck)))


def test_release_control_answers_conform_to_the_spec(live: ThreadedServer, session: requests.Session) -> None:
    """The answers the fuzz run cannot reach (``reseed`` clears freezes and policies between operations):
    a push and a delete under a freeze (423 ``frozen``), a push under a review policy (202, the proposal),
    the proposal read and rejected, each declared and valid against its operation in the spec."""
    headers = {"Authorization": f"Bearer {WRITER}"}

    def checked(method: str, path: str, template: str, status: int, **kwargs: Any) -> Any:
        response = session.request(method, f"{live.url}{path}", headers=headers, timeout=10, **kwargs)
        assert response.status_code == status, response.text
        operation = schema[template][method]
        assert str(status) in operation.definition.raw["responses"], f"{method} {template} does not declare {status}"
        operation.validate_response(response)
        return response.json()

    push = {"kind": "config", "doc": {"a": 1}}
    checked("PUT", "/v1/namespaces/rc/frozen", "/v1/namespaces/{ns}", 201, json=push)
    checked("PUT", "/v1/freezes/rc/", "/v1/freezes/{target}", 201, json={"reason": "incident 42", "until": "2h"})
    refused = checked("PUT", "/v1/namespaces/rc/frozen", "/v1/namespaces/{ns}", 423, json=push)
    assert refused["error"]["details"]["reason"] == "incident 42"
    checked("DELETE", "/v1/namespaces/rc/frozen", "/v1/namespaces/{ns}", 423)
    checked("DELETE", "/v1/freezes/rc/", "/v1/freezes/{target}", 200)
    checked("PUT", "/v1/policies/rc/held", "/v1/policies/{target}", 201, json={"require_review": True})
    held = checked("PUT", "/v1/namespaces/rc/held", "/v1/namespaces/{ns}", 202, json=push)
    proposal = held["proposal"]["id"]
    checked("GET", f"/v1/proposals/{proposal}", "/v1/proposals/{id}", 200)
    checked("POST", f"/v1/proposals/{proposal}/approve", "/v1/proposals/{id}/approve", 403)  # its own author
    checked("POST", f"/v1/proposals/{proposal}/reject", "/v1/proposals/{id}/reject", 200)
    checked("DELETE", "/v1/policies/rc/held", "/v1/policies/{target}", 200)
