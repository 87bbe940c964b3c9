"""Who may do what: roles by scopes by endpoints on a real server, and the ``auth.tokens`` config rules.

Every refusal (401/403) is checked to leave etcd's revision where it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from configcenter.errors import ConfigError
from configcenter.server.security import Principal
from configcenter.server.settings import load_settings
from helpers import RunningServer, SSEStream, envelope

ROOT = "root-token"  # unscoped admin: seeds the namespaces
TOKENS = {"reader": "reader-token", "writer": "writer-token", "admin": "admin-token", "unknown": "no-such-token"}
SCOPED = tuple(Principal.from_token(role, TOKENS[role], role, ["in/"]) for role in ("reader", "writer", "admin"))
PRINCIPALS = (Principal.from_token("root", ROOT, "admin"), *SCOPED)
NAMESPACES = {"in": "in/routes", "out": "out/routes"}


def table(cluster: str) -> dict[str, Any]:
    return {"service": "svc", "rules": [], "default": {"cluster": cluster}}


ROLES = ["reader", "writer", "admin", "unknown", "none"]
ENDPOINTS = ["get", "list", "history", "diff", "route", "watch", "instances", "rollout",
             "push", "rollback", "delete"]  # writes last
NEEDS = {"push": "writer", "rollback": "writer", "delete": "admin"}
RANK = ["reader", "writer", "admin"]
SCOPED_ROLES = ("reader", "writer", "admin")  # the roles whose tokens are scoped to in/


def expected(role: str, scope: str, endpoint: str, reads_need_token: bool) -> int:
    """The status the access rules of docs/access-and-audit.md predict."""
    read = endpoint not in NEEDS
    if role == "unknown":
        return 401  # bad credentials are refused even where reads are open
    if role == "none":
        return 200 if read and not reads_need_token else 401
    if RANK.index(role) < RANK.index(NEEDS.get(endpoint, "reader")):
        return 403
    if scope == "out" and endpoint != "list" and (reads_need_token or not read):
        return 403  # a list is never refused for its scope: it shows only what the token may read
    return 200


async def seed(server: RunningServer, http: aiohttp.ClientSession) -> dict[str, list[int]]:
    """Two releases of each namespace; their revisions by scope."""
    revisions: dict[str, list[int]] = {}
    for scope, ns in NAMESPACES.items():
        for cluster in ("a", "b"):
            async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope(table(cluster), "routes"),
                                headers=server.auth(ROOT)) as resp:
                assert resp.status in (200, 201), await resp.text()
                revisions.setdefault(scope, []).append((await resp.json())["revision"])
    return revisions


async def attempt(http: aiohttp.ClientSession, server: RunningServer, endpoint: str, ns: str,
                  revisions: list[int], headers: dict[str, str]) -> tuple[int, Any]:
    """Send ``endpoint`` for ``ns``; return (status, JSON body, or the first SSE event's data for a watch)."""
    base = f"{server.url}/v1/namespaces"
    requests: dict[str, tuple[str, str, dict[str, Any]]] = {
        "get": ("GET", f"{base}/{ns}", {}),
        "list": ("GET", f"{base}?prefix={ns.split('/')[0]}/", {}),
        "history": ("GET", f"{base}/{ns}/history", {}),
        "diff": ("GET", f"{base}/{ns}/diff?from={revisions[0]}&to={revisions[1]}", {}),
        "route": ("POST", f"{base}/{ns}/route", {"json": {"headers": {}}}),
        "watch": ("GET", f"{server.url}/v1/watch?ns={ns}", {}),
        "instances": ("GET", f"{server.url}/v1/instances?ns={ns}", {}),  # ns is scope-checked like a read
        "rollout": ("GET", f"{base}/{ns}/rollout", {}),
        "push": ("PUT", f"{base}/{ns}", {"json": envelope(table("c"), "routes")}),
        "rollback": ("POST", f"{base}/{ns}/rollback", {"json": {"to_revision": revisions[0]}}),
        "delete": ("DELETE", f"{base}/{ns}", {}),
    }
    method, url, kwargs = requests[endpoint]
    async with http.request(method, url, headers=headers, **kwargs) as resp:
        if endpoint == "watch" and resp.status == 200:
            return resp.status, (await SSEStream(resp).next()).data
        return resp.status, await resp.json()


@pytest.mark.parametrize("reads_need_token", [False, True], ids=["reads-open", "reads-need-token"])
@pytest.mark.parametrize("role", ROLES)
async def test_access_matrix(make_server: Any, http: aiohttp.ClientSession, role: str, reads_need_token: bool) -> None:
    server = await make_server(tokens=PRINCIPALS, read_requires_token=reads_need_token)
    revisions = await seed(server, http)
    headers = {"Authorization": f"Bearer {TOKENS[role]}"} if role in TOKENS else {}
    wrong = []
    for endpoint in ENDPOINTS:
        for scope, ns in NAMESPACES.items():
            before = await server.runtime.store.current_revision()
            status, body = await attempt(http, server, endpoint, ns, revisions[scope], headers)
            want = expected(role, scope, endpoint, reads_need_token)
            if status != want:
                wrong.append(f"{endpoint} {scope}: got {status}, want {want}: {body}")
            if status in (401, 403) and await server.runtime.store.current_revision() != before:
                wrong.append(f"{endpoint} {scope}: refused with {status} but etcd's revision moved")
            if endpoint == "list" and status == 200:
                hidden = role in SCOPED_ROLES and reads_need_token and scope == "out"
                if [n["ns"] for n in body["namespaces"]] != ([] if hidden else [ns]):
                    wrong.append(f"list {scope}: shows {body['namespaces']}")
    assert wrong == []


async def test_refusal_names_principal_and_namespace(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(tokens=PRINCIPALS)
    url = f"{server.url}/v1/namespaces/out/cfg"
    async with http.put(url, json=envelope({}), headers=server.auth(TOKENS["writer"])) as resp:
        body = await resp.json()
    assert resp.status == 403
    assert "'writer'" in body["error"]["message"] and "'out/cfg'" in body["error"]["message"]
    assert body["error"]["details"] == {"principal": "writer", "namespace": "out/cfg"}
    async with http.delete(f"{server.url}/v1/namespaces/in/cfg", headers=server.auth(TOKENS["writer"])) as resp:
        body = await resp.json()
    assert resp.status == 403 and "needs the admin role" in body["error"]["message"]


async def test_watch_is_narrowed_to_the_scope(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(tokens=PRINCIPALS, read_requires_token=True)
    await seed(server, http)
    auth = server.auth(TOKENS["reader"])
    for query in ("", "?ns=in/", "?ns=in/routes"):  # everything, and a selector inside the scope
        async with http.get(f"{server.url}/v1/watch{query}", headers=auth) as resp:
            assert resp.status == 200
            reset = await SSEStream(resp).next()
        assert sorted(reset.data["namespaces"]) == ["in/routes"], query
    before = await server.runtime.store.current_revision()
    for query in ("?ns=out/", "?ns=in/&ns=out/routes"):  # a selector entirely outside the scope
        async with http.get(f"{server.url}/v1/watch{query}", headers=auth) as resp:
            body = await resp.json()
        assert resp.status == 403 and "out/" in body["error"]["message"], query
    assert await server.runtime.store.current_revision() == before


async def test_wide_prefix_is_narrowed_to_an_exact_scope(make_server: Any, http: aiohttp.ClientSession) -> None:
    narrow = Principal.from_token("one", "one-token", "reader", ["in/routes"])
    server = await make_server(tokens=(*PRINCIPALS, narrow), read_requires_token=True)
    await seed(server, http)
    async with http.put(f"{server.url}/v1/namespaces/in/other", json=envelope({}), headers=server.auth(ROOT)):
        pass
    async with http.get(f"{server.url}/v1/watch?ns=in/", headers=server.auth("one-token")) as resp:
        reset = await SSEStream(resp).next()
    assert sorted(reset.data["namespaces"]) == ["in/routes"]


async def test_failures_and_denials_are_counted(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(tokens=PRINCIPALS, read_requires_token=True)
    url = f"{server.url}/v1/namespaces/in/cfg"
    for headers in ({}, {"Authorization": "Basic x"}, {"Authorization": "Bearer nope"}):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 401
    async with http.put(url, json=envelope({}), headers=server.auth(TOKENS["reader"])) as resp:
        assert resp.status == 403
    async with http.get(f"{server.url}/metrics", headers=server.auth(ROOT)) as resp:  # reads need a token here
        metrics = dict(line.split(" ") for line in (await resp.text()).splitlines() if not line.startswith("#"))
    assert float(metrics["configcenter_auth_failures_total"]) == 3
    assert float(metrics["configcenter_auth_denied_total"]) == 1


async def test_no_admin_means_deletes_disabled(make_server: Any, http: aiohttp.ClientSession) -> None:
    server = await make_server(tokens=(Principal.from_token("ci", "ci-token", "writer"),))
    url = f"{server.url}/v1/namespaces/a/cfg"
    async with http.put(url, json=envelope({}), headers=server.auth("ci-token")) as resp:
        assert resp.status == 201
    async with http.delete(url) as resp:
        assert resp.status == 403 and "no admin token" in (await resp.json())["error"]["message"]


# --------------------------------------------------------------------------- configuration


def config_file(tmp_path: Path, tokens_yaml: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(f"auth:\n  tokens:\n{tokens_yaml}")
    return path


async def test_token_sha256_and_token_file(tmp_path: Path, make_server: Any, http: aiohttp.ClientSession) -> None:
    secret = tmp_path / "ops-token"
    secret.write_text("  ops-secret\n")
    digest = hashlib.sha256(b"ci-secret").hexdigest()
    path = config_file(tmp_path, f"    - {{name: ci-payment, token_sha256: {digest.upper()}, role: writer, "
                                 "namespaces: [payment/]}\n"
                                 f"    - {{name: ops, token_file: {secret}, role: admin}}\n"
                                 "    - {token: legacy-secret, role: reader}\n")
    settings = load_settings(path, env={})
    assert [(p.name, p.role, p.namespaces) for p in settings.tokens] == [
        ("ci-payment", "writer", ("payment/",)), ("ops", "admin", None), ("token-3", "reader", None)]
    server = await make_server(tokens=settings.tokens)
    for token, ns, status in (("ci-secret", "payment/routes", 201), ("ci-secret", "orders/cfg", 403),
                              ("ops-secret", "orders/cfg", 201), ("legacy-secret", "orders/cfg", 403)):
        async with http.put(f"{server.url}/v1/namespaces/{ns}", json=envelope({}),
                            headers=server.auth(token)) as resp:
            assert resp.status == status, (token, ns, await resp.text())
    async with http.get(f"{server.url}/v1/namespaces/orders/cfg") as resp:
        assert (await resp.json())["principal"] == "ops"


BAD_CONFIGS = [
    ("two secrets", "    - {name: a, token: x, token_sha256: " + "0" * 64 + ", role: reader}\n",
     "exactly one of token, token_sha256, token_file"),
    ("no secret", "    - {name: a, role: reader}\n", "exactly one of token, token_sha256, token_file"),
    ("unknown role", "    - {name: a, token: x, role: root}\n", "role must be one of reader, writer, admin"),
    ("duplicate name", "    - {name: a, token: x, role: reader}\n    - {name: a, token: y, role: writer}\n",
     "duplicate name 'a'"),
    ("same token twice", "    - {name: a, token: x, role: reader}\n    - {name: b, token: x, role: writer}\n",
     "the same token is configured twice"),
    ("unreadable file", "    - {name: a, token_file: /nonexistent/secret, role: reader}\n",
     "token_file /nonexistent/secret: cannot read"),
    ("missing name", "    - {token: x, role: reader, namespaces: [a/]}\n", "name is required"),
    ("bad digest", "    - {name: a, token_sha256: abc, role: reader}\n", "64 hex digits"),
    ("bad scope", "    - {name: a, token: x, role: reader, namespaces: [Bad/]}\n", "namespaces:"),
    ("empty scope", "    - {name: a, token: x, role: reader, namespaces: []}\n", "non-empty list"),
    ("unknown key", "    - {name: a, token: x, role: reader, scope: [a/]}\n", "unknown key(s) scope"),
]


@pytest.mark.parametrize(("case", "tokens_yaml", "message"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_token_config_is_one_clear_line(tmp_path: Path, case: str, tokens_yaml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file(tmp_path, tokens_yaml), env={})
    assert message in info.value.message and "\n" not in info.value.message
    assert info.value.message.startswith("auth.tokens[")


def test_empty_token_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "empty"
    secret.write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        load_settings(config_file(tmp_path, f"    - {{name: a, token_file: {secret}, role: reader}}\n"), env={})


def test_the_digest_is_what_sha256sum_prints() -> None:
    principal = Principal.from_token("a", "s3cret", "reader")
    assert principal.token_sha256.hex() == hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in repr(principal) and principal.token_sha256.hex() not in repr(principal)


def test_bad_trusted_proxy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server.yaml"
    path.write_text("auth: {trusted_proxies: [10.0.0.0/8, not-an-address]}\n")
    with pytest.raises(ConfigError, match=r"^auth\.trusted_proxies: 'not-an-address' does not appear"):
        load_settings(path, env={})
