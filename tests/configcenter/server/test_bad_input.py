"""Every bad input of ``docs/bad-input.md``, one row each: the answer, and that nothing was written.

``ROWS`` is the doc's request table (same ids, statuses and codes; a test
checks the two agree).  Each row is one HTTP request over a real socket to a
server on a real etcd; the answer must carry the row's status and error code
(and ``expect``, when given, somewhere in the error), and etcd's revision,
read from etcd itself, must not move.  Hostile inputs are built by functions
below so the table stays readable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from configcenter.server.settings import Limits
from helpers import READER, WRITER, RunningServer, SSEStream, envelope

DOC = Path(__file__).resolve().parents[3] / "docs" / "bad-input.md"
JSON = "application/json"
YAML = "application/yaml"


@dataclass(frozen=True)
class Row:
    id: str
    method: str
    path: str
    status: int
    code: str
    body: bytes = b""
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = WRITER
    expect: str = ""  # must appear in the JSON of the error (message or details)
    settings: dict[str, Any] = field(default_factory=dict)  # server settings other than the tests' defaults


def js(data: Any) -> bytes:
    return orjson.dumps(data)


def routes(*rules: dict[str, Any], default: dict[str, Any] | None = None) -> bytes:
    return js({"kind": "routes", "doc": {"service": "x", "rules": list(rules), "default": default or {"cluster": "c"}}})


def header_rule(**condition: Any) -> dict[str, Any]:
    return {"id": "r", "match": {"headers": [{"name": "x-a", **condition}]}, "route": {"cluster": "c"}}


def alias_bomb(levels: int = 9) -> bytes:
    """The "billion laughs" bomb: 9 levels of 9 aliases, ~600 bytes that expand to 9^9 strings."""
    lines = ["kind: config", "doc:", '  a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines).encode() + b"\n"


def nested_yaml(depth: int) -> bytes:
    return b"kind: config\ndoc:\n  x: " + b"[" * depth + b"]" * depth + b"\n"


def nested_json(depth: int) -> bytes:
    return b'{"kind": "config", "doc": {"x": ' + b"[" * depth + b"]" * depth + b"}}"


NS = "/v1/namespaces"
SCHEMAS = "/v1/schemas"
FREEZES = "/v1/freezes"
POLICIES = "/v1/policies"
ROWS = [
    # --- the body: syntax, envelope, document
    Row("invalid-yaml", "PUT", f"{NS}/a/cfg", 400, "invalid_body", b"kind: config\ndoc: [oops\n", YAML),
    Row("invalid-json", "PUT", f"{NS}/a/cfg", 400, "invalid_body", b'{"kind": '),
    Row("empty-body", "PUT", f"{NS}/a/cfg", 400, "invalid_body", b""),
    Row("not-utf8", "PUT", f"{NS}/a/cfg", 400, "invalid_body", b"kind: config\ndoc: {a: \xff}\n", YAML),
    Row("several-yaml-documents", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        b"kind: config\ndoc: {}\n---\nkind: config\n", YAML),
    Row("duplicate-yaml-key", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        b"kind: config\ndoc: {}\nkind: routes\n", YAML, expect="duplicate key"),
    Row("envelope-not-a-mapping", "PUT", f"{NS}/a/cfg", 400, "invalid_body", js([1, 2])),
    Row("envelope-unknown-field", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        js({**envelope({}), "extra": 1}), expect="extra"),
    Row("envelope-doc-not-a-mapping", "PUT", f"{NS}/a/cfg", 400, "invalid_body", js({"kind": "config", "doc": [1]})),
    Row("envelope-message-not-a-string", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        js({"kind": "config", "doc": {}, "message": 5})),
    Row("unknown-kind", "PUT", f"{NS}/a/cfg", 400, "invalid_body", js({"kind": "nope", "doc": {}})),
    Row("schema-violation", "PUT", f"{NS}/a/routes", 422, "schema_violation",
        routes({"id": "r", "route": {"cluster": 5}}), expect='"path":"$.rules[0].route'),
    Row("weights-not-100", "PUT", f"{NS}/a/routes", 422, "schema_violation",
        routes(default={"weighted": [{"cluster": "a", "weight": 50}, {"cluster": "b", "weight": 20}]}),
        expect="weights must sum to 100"),
    Row("integer-written-as-float", "PUT", f"{NS}/a/routes", 422, "schema_violation",
        routes(default={"weighted": [{"cluster": "a", "weight": 50.0}, {"cluster": "b", "weight": 50}]})),
    # --- names
    Row("bad-name", "PUT", f"{NS}/Bad_Name", 400, "invalid_namespace", js(envelope({}))),
    Row("too-many-segments", "PUT", f"{NS}/a/b/c/d/e", 400, "invalid_namespace", js(envelope({}))),
    Row("reserved-segment", "PUT", f"{NS}/history", 400, "invalid_namespace", js(envelope({}))),
    Row("reserved-segment-path", "PUT", f"{NS}/a/history", 405, "method_not_allowed", js(envelope({}))),
    Row("empty-segment", "GET", f"{NS}/a//b", 400, "invalid_namespace"),
    Row("bad-prefix", "GET", f"{NS}?prefix=payment", 400, "invalid_namespace"),
    # --- size
    Row("oversized-body", "PUT", f"{NS}/a/cfg", 413, "payload_too_large", js(envelope({"blob": "x" * 100_000}))),
    Row("oversized-release", "PUT", f"{NS}/a/cfg", 413, "payload_too_large",
        js({"kind": "config", "doc": {"blob": "x" * 700_000}, "message": "m" * 120_000}),
        settings={"limits": Limits()}, expect="etcd.max_request_bytes"),
    Row("oversized-route-body", "POST", f"{NS}/seed/routes/route", 413, "payload_too_large",
        js({"headers": {"x": "y" * 100_000}})),
    # --- If-Match
    Row("stale-if-match", "PUT", f"{NS}/seed/cfg", 412, "precondition_failed", js(envelope({})),
        headers={"If-Match": "1"}),
    Row("if-match-0-but-exists", "PUT", f"{NS}/seed/cfg", 412, "precondition_failed", js(envelope({})),
        headers={"If-Match": "0"}),
    Row("non-numeric-if-match", "PUT", f"{NS}/seed/cfg", 400, "invalid_argument", js(envelope({})),
        headers={"If-Match": "x"}),
    Row("unicode-digit-if-match", "PUT", f"{NS}/seed/cfg", 400, "invalid_argument", js(envelope({})),
        headers={"If-Match": "\u00b2"}),
    # --- revisions and query parameters
    Row("unknown-revision", "GET", f"{NS}/seed/cfg?revision=999999", 404, "not_found"),
    Row("non-numeric-query-int", "GET", f"{NS}/seed/cfg?revision=x", 400, "invalid_argument"),
    Row("negative-query-int", "GET", f"{NS}/seed/cfg/history?limit=-1", 400, "invalid_argument"),
    Row("zero-query-int", "GET", f"{NS}/seed/cfg/diff?from=0", 400, "invalid_argument"),
    Row("unicode-digit-query-int", "GET", f"{NS}/seed/cfg?revision=%C2%B2", 400, "invalid_argument"),
    Row("diff-without-from", "GET", f"{NS}/seed/cfg/diff", 400, "invalid_argument"),
    # --- rollback, route, delete
    Row("rollback-unknown-revision", "POST", f"{NS}/seed/cfg/rollback", 404, "not_found",
        js({"to_revision": 999999})),
    Row("rollback-to-a-deletion", "POST", f"{NS}/seed/gone/rollback", 409, "conflict",
        b'{"to_revision": {deleted}}'),
    Row("rollback-body-string", "POST", f"{NS}/seed/cfg/rollback", 400, "invalid_body", js({"to_revision": "3"})),
    Row("rollback-body-float", "POST", f"{NS}/seed/cfg/rollback", 400, "invalid_body", js({"to_revision": 3.0})),
    Row("rollback-body-missing", "POST", f"{NS}/seed/cfg/rollback", 400, "invalid_body", js({})),
    Row("route-body-not-strings", "POST", f"{NS}/seed/routes/route", 400, "invalid_body", js({"headers": {"x": 1}})),
    Row("route-on-a-config", "POST", f"{NS}/seed/cfg/route", 409, "conflict", js({"headers": {}})),
    Row("route-unknown-namespace", "POST", f"{NS}/never/pushed/route", 404, "not_found", js({"headers": {}})),
    Row("delete-unknown", "DELETE", f"{NS}/never/pushed", 404, "not_found"),
    # --- auth and routing of the request itself
    Row("unknown-token", "PUT", f"{NS}/a/cfg", 401, "unauthorized", js(envelope({})), token="no-such-token"),
    Row("write-without-token", "PUT", f"{NS}/a/cfg", 401, "unauthorized", js(envelope({})), token=None),
    Row("write-with-reader-token", "PUT", f"{NS}/a/cfg", 403, "forbidden", js(envelope({})), token=READER),
    Row("unknown-path", "GET", "/v1/nothing-here", 404, "not_found"),
    Row("wrong-method", "PATCH", f"{NS}/seed/cfg", 405, "method_not_allowed", js(envelope({}))),
    # --- hostile bodies
    Row("yaml-alias-bomb", "PUT", f"{NS}/a/cfg", 413, "payload_too_large", alias_bomb(), YAML,
        expect="limits.max_doc_bytes"),
    Row("yaml-nested-5000", "PUT", f"{NS}/a/cfg", 400, "invalid_body", nested_yaml(5000), YAML,
        expect="depth limit exceeded"),
    Row("json-nested-5000", "PUT", f"{NS}/a/cfg", 400, "invalid_body", nested_json(5000)),
    Row("yaml-nan-infinity", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        b"kind: config\ndoc: {x: .nan, y: .inf}\n", YAML, expect='"path":"$.doc.x"'),
    Row("json-nan", "PUT", f"{NS}/a/cfg", 400, "invalid_body", b'{"kind": "config", "doc": {"x": NaN}}'),
    Row("regex-re2-cannot-compile", "PUT", f"{NS}/a/routes", 422, "schema_violation",
        routes(header_rule(regex="(a)\\1")), expect='"path":"$.rules[0].match.headers[0].regex"'),
    Row("regex-program-too-large", "PUT", f"{NS}/a/routes", 422, "schema_violation",
        routes(header_rule(regex="x{500}")), expect='"path":"$.rules[0].match.headers[0].regex"'),
    # --- watch (rejected before the stream starts)
    Row("watch-bad-namespace", "GET", "/v1/watch?ns=Bad", 400, "invalid_namespace"),
    Row("watch-negative-since", "GET", "/v1/watch?since=-1", 400, "invalid_argument"),
    Row("last-event-id-garbage", "GET", "/v1/watch", 400, "invalid_argument", headers={"Last-Event-ID": "abc"}),
    Row("last-event-id-unicode-digit", "GET", "/v1/watch", 400, "invalid_argument",
        headers={"Last-Event-ID": "\u00b2"}),
    # --- envelopes as `configcenter get -o` writes them, and per-namespace schemas (seed: strict/ has one)
    Row("envelope-namespace-mismatch", "PUT", f"{NS}/a/cfg", 422, "schema_violation",
        js({"namespace": "b/cfg", "kind": "config", "doc": {}}), expect='"path":"$.namespace"'),
    Row("envelope-revision-not-a-number", "PUT", f"{NS}/a/cfg", 400, "invalid_body",
        js({"revision": "x", "kind": "config", "doc": {}})),
    Row("config-violates-namespace-schema", "PUT", f"{NS}/strict/cfg", 422, "schema_violation",
        js(envelope({"v": "x"})), expect='"path":"$.v"'),
    Row("schema-invalid-json-schema", "PUT", f"{SCHEMAS}/a/", 422, "schema_violation",
        js({"schema": {"type": "nope"}}), expect='"path":"$.type"'),
    Row("schema-external-ref", "PUT", f"{SCHEMAS}/a/", 422, "schema_violation",
        js({"schema": {"$ref": "https://example.com/s.json"}}), expect="only local refs"),
    Row("schema-dangling-ref", "PUT", f"{SCHEMAS}/a/", 422, "schema_violation",
        js({"schema": {"$ref": "#/$defs/nope"}}), expect="unresolvable reference"),
    Row("schema-self-reference", "PUT", f"{SCHEMAS}/a/", 422, "schema_violation",
        js({"schema": {"$ref": "#"}}), expect="cannot be evaluated"),
    Row("schema-regex-re2-cannot-compile", "PUT", f"{SCHEMAS}/a/", 422, "schema_violation",
        js({"schema": {"properties": {"x": {"pattern": "(a)\\1"}}}}), expect='"path":"$.properties.x.pattern"'),
    Row("schema-not-a-mapping", "PUT", f"{SCHEMAS}/a/", 400, "invalid_body", js({"schema": [1]})),
    Row("schema-unknown-field", "PUT", f"{SCHEMAS}/a/", 400, "invalid_body", js({"schema": {}, "extra": 1})),
    Row("schema-nested-5000", "PUT", f"{SCHEMAS}/a/", 400, "invalid_body",
        b'{"schema": ' + nested_json(5000) + b"}"),
    Row("schema-oversized", "PUT", f"{SCHEMAS}/a/", 413, "payload_too_large",
        js({"schema": {"description": "x" * 100_000}})),
    Row("schema-bad-target", "PUT", f"{SCHEMAS}/Bad_Name", 400, "invalid_namespace", js({"schema": {}})),
    Row("schema-bad-force", "PUT", f"{SCHEMAS}/a/?force=yes", 400, "invalid_argument", js({"schema": {}})),
    Row("schema-violated-by-current-documents", "PUT", f"{SCHEMAS}/seed/", 409, "conflict",
        js({"schema": {"required": ["nope"]}}), expect='"ns":"seed/cfg"'),
    Row("schema-write-with-reader-token", "PUT", f"{SCHEMAS}/a/", 403, "forbidden", js({"schema": {}}),
        token=READER),
    Row("schema-delete-unknown", "DELETE", f"{SCHEMAS}/never/", 404, "not_found"),
    # --- issue 16 row 3: a path per container made this 180 KB body cost +2.3 GB (test_hostile_memory.py)
    Row("route-body-long-key-many-containers", "POST", f"{NS}/seed/routes/route", 400, "invalid_body",
        js({"k" * 60_000: [[]] * 40_000}), token=None, settings={"limits": Limits()}),
    # --- release control (issue 18): freezes, review policies, proposals (seed: frozen/ has a freeze)
    Row("push-during-freeze", "PUT", f"{NS}/frozen/cfg", 423, "frozen", js(envelope({})),
        expect="incident 4711"),
    Row("freeze-override-without-reason", "PUT", f"{NS}/frozen/cfg?override_freeze=", 400, "invalid_argument",
        js(envelope({}))),
    Row("freeze-without-reason", "PUT", f"{FREEZES}/a/", 400, "invalid_body", js({"until": "2h"}), expect="reason"),
    Row("freeze-bad-time", "PUT", f"{FREEZES}/a/", 400, "invalid_body", js({"reason": "x", "until": "tomorrow"}),
        expect="RFC 3339"),
    Row("freeze-until-in-the-past", "PUT", f"{FREEZES}/a/", 400, "invalid_body",
        js({"reason": "x", "until": "2020-01-01T00:00:00Z"}), expect="already over"),
    Row("freeze-bad-target", "PUT", f"{FREEZES}/Bad_Name", 400, "invalid_namespace", js({"reason": "x"})),
    Row("freeze-with-reader-token", "PUT", f"{FREEZES}/a/", 403, "forbidden", js({"reason": "x"}), token=READER),
    Row("policy-require-review-not-a-boolean", "PUT", f"{POLICIES}/a/", 400, "invalid_body",
        js({"require_review": "yes"})),
    Row("proposal-bad-id", "POST", "/v1/proposals/not-an-id/approve", 400, "invalid_argument"),
    Row("proposal-unknown", "POST", "/v1/proposals/0123456789ab/approve", 404, "not_found"),
    # --- canaries (canary/cfg has one running: see seed)
    Row("canary-bad-target", "POST", f"{NS}/seed/cfg/canary", 400, "invalid_body",
        js({"doc": {"v": 2}, "target": {"percent": 200}}), expect="target.percent"),
    Row("canary-unknown-namespace", "POST", f"{NS}/no/such/canary", 404, "not_found",
        js({"doc": {"v": 2}, "target": {"percent": 10}})),
    Row("canary-none-active", "PATCH", f"{NS}/seed/cfg/canary", 409, "conflict", js({"target": {"percent": 10}}),
        expect="has no active canary"),
    Row("canary-bad-candidate", "POST", f"{NS}/seed/routes/canary", 422, "schema_violation",
        js({"doc": orjson.loads(routes(default={"weighted": [{"cluster": "a", "weight": 50},
                                                             {"cluster": "b", "weight": 20}]}))["doc"],
            "target": {"percent": 10}}), expect="weights must sum to 100"),
    Row("push-during-canary", "PUT", f"{NS}/canary/cfg", 409, "conflict", js(envelope({"v": 3})),
        expect="has an active canary"),
    Row("oversized-canary", "POST", f"{NS}/seed/cfg/canary", 413, "payload_too_large",
        js({"doc": {"blob": "x" * 700_000}, "target": {"percent": 10}, "message": "m" * 100_000}),
        settings={"limits": Limits()}, expect="4 documents"),
]


async def seed(server: RunningServer, http: aiohttp.ClientSession) -> int:
    """seed/cfg (two releases), seed/routes, seed/gone (pushed then deleted), a schema for strict/ (`v` an
    integer), a freeze of frozen/, canary/cfg with a canary running; returns the deletion's revision."""
    base, auth = f"{server.url}{NS}", server.auth()
    for path, body in [("seed/cfg", envelope({"v": 0})), ("seed/cfg", envelope({"v": 1})),
                       ("seed/routes", orjson.loads(routes())), ("seed/gone", envelope({"v": 0}))]:
        async with http.put(f"{base}/{path}", json=body, headers=auth) as resp:
            assert resp.status in (200, 201), await resp.text()
    strict = {"schema": {"properties": {"v": {"type": "integer"}}}}
    async with http.put(f"{server.url}{SCHEMAS}/strict/", json=strict, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    async with http.put(f"{server.url}{FREEZES}/frozen/", json={"reason": "incident 4711"}, headers=auth) as resp:
        assert resp.status == 201, await resp.text()
    for method, path, body in [("PUT", "canary/cfg", envelope({"v": 0})),
                               ("POST", "canary/cfg/canary", {"doc": {"v": 1}, "target": {"percent": 10}})]:
        async with http.request(method, f"{base}/{path}", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
    async with http.delete(f"{base}/seed/gone", headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["revision"])


def request_headers(row: Row) -> dict[str, str]:
    headers = {"Content-Type": row.content_type, **row.headers}
    if row.token is not None:
        headers["Authorization"] = f"Bearer {row.token}"
    return headers


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_bad_input_gets_its_status_and_code_and_writes_nothing(
    make_server: Any, http: aiohttp.ClientSession, row: Row,
) -> None:
    server: RunningServer = await make_server(**row.settings)
    deleted = await seed(server, http)
    body = row.body.replace(b"{deleted}", str(deleted).encode())
    before = await server.runtime.store.current_revision()
    async with http.request(row.method, server.url + row.path, data=body, headers=request_headers(row)) as resp:
        assert resp.content_type == JSON, f"{row.id}: {resp.status} {resp.content_type}"  # never read a stream
        status, answer = resp.status, await resp.json()
    error = answer.get("error", {}) if isinstance(answer, dict) else {}
    assert (status, error.get("code")) == (row.status, row.code), answer
    assert error["message"]
    assert row.expect in orjson.dumps(error).decode(), error
    assert await server.runtime.store.current_revision() == before, f"{row.id}: a rejected request changed etcd"


async def test_resume_id_ahead_of_the_cluster_gets_a_reset(server: RunningServer, http: aiohttp.ClientSession) -> None:
    """Row ``resume-id-ahead``: a Last-Event-ID the cluster has not reached is answered with a ``reset``."""
    await seed(server, http)
    current = await server.runtime.store.current_revision()
    headers = {"Last-Event-ID": str(current + 1_000_000)}
    async with http.get(f"{server.url}/v1/watch?ns=seed/", headers=headers) as resp:
        assert resp.status == 200
        event = await SSEStream(resp).next(timeout=5)
    assert event.event == "reset" and event.id is not None and event.id <= current
    assert sorted(event.data["namespaces"]) == ["seed/cfg", "seed/routes"]


DOC_ROW = re.compile(r"^\| `(?P<id>[a-z0-9-]+)` \|.*\| (?P<status>\d{3}) \| `(?P<code>[a-z_]+)` \|")


def test_the_doc_table_is_this_table() -> None:
    """docs/bad-input.md's request table lists exactly ROWS, with the same statuses and codes."""
    in_doc = [m.groups() for line in DOC.read_text().splitlines() if (m := DOC_ROW.match(line))]
    assert in_doc == [(r.id, str(r.status), r.code) for r in ROWS]
