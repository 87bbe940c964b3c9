"""HTTP semantics the spec promises beyond our own error codes (RFC 9110), on a real server and etcd.

* A 405 carries ``Allow`` listing the methods the path supports (RFC 9110 §15.5.6), as a JSON error.
* A path whose last namespace segment is a reserved word (``…/history``, ``…/diff``, ``…/rollback``,
  ``…/route``, ``…/rollout``) is that sub-resource, for every method: a method it does not support is
  405 with its ``Allow``, not a 400 ``invalid_namespace`` from the ``{ns}`` route that also matches
  the path (the namespace schema forbids such a name, so the spec calls that path the sub-resource).
* A 401 carries ``WWW-Authenticate: Bearer`` (RFC 9110 §15.5.2).
* A release answer carries ``ETag`` (its revision, usable as ``If-Match``); a 201 also ``Location``.
* Every integer in a YAML body lies in [-2**63, 2**64 - 1] (what the parsers carry): beyond, 400 ``invalid_body``.
  (A JSON body's is read by orjson as a float today, losing precision: not pinned here, reported.)

Every refusal writes nothing: etcd's revision stays where it was.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from helpers import RunningServer

NS = "/v1/namespaces"

WRONG_METHODS = [
    # (method, path, methods the path supports, as Allow lists them)
    ("PATCH", f"{NS}/app/cfg", {"DELETE", "GET", "HEAD", "PUT"}),
    ("POST", f"{NS}/app/cfg", {"DELETE", "GET", "HEAD", "PUT"}),
    ("DELETE", "/healthz", {"GET", "HEAD"}),
    ("PUT", f"{NS}", {"GET", "HEAD"}),
    ("GET", f"{NS}/app/cfg/rollback", {"POST"}),
    ("GET", "/v1/instances/web-1/report", {"POST"}),
    ("PUT", "/v1/schema-history/app/", {"GET", "HEAD"}),
    ("PATCH", "/v1/schemas/app/", {"DELETE", "GET", "HEAD", "PUT"}),
    # the {ns} route matches these paths too (ns = "app/cfg/history"): the sub-resource owns them
    ("PUT", f"{NS}/app/cfg/history", {"GET", "HEAD"}),
    ("DELETE", f"{NS}/app/cfg/diff", {"GET", "HEAD"}),
    ("PUT", f"{NS}/app/cfg/rollout", {"GET", "HEAD"}),
    ("GET", f"{NS}/app/cfg/route", {"POST"}),
    ("DELETE", f"{NS}/app/cfg/rollback", {"POST"}),
    # no resource takes these methods: aiohttp's own 405 listed the methods of both matching resources
    ("OPTIONS", f"{NS}/app/cfg/rollout", {"GET", "HEAD"}),
    ("PATCH", f"{NS}/app/cfg/history", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m} {p}" for m, p, _ in WRONG_METHODS])
@pytest.mark.parametrize("token", [True, False], ids=["token", "anonymous"])
async def test_405_carries_allow_and_writes_nothing(server: RunningServer, http: aiohttp.ClientSession, method: str,
                                                    path: str, allowed: set[str], token: bool) -> None:
    before = await server.runtime.store.current_revision()
    headers = server.auth() if token else {}
    async with http.request(method, server.url + path, headers=headers, json={"kind": "config", "doc": {}}) as resp:
        body = await resp.json()
        assert resp.status == 405, body
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
        assert body["error"]["code"] == "method_not_allowed"
        assert resp.headers["X-Request-ID"]
    assert await server.runtime.store.current_revision() == before


async def test_supported_methods_still_reach_their_handlers(server: RunningServer,
                                                            http: aiohttp.ClientSession) -> None:
    """The reserved-word rule changes nothing for a method the path supports, nor for a plain namespace."""
    async with http.get(f"{server.url}{NS}/app/cfg/history") as resp:
        assert resp.status == 404  # the history of a namespace that does not exist
    async with http.put(f"{server.url}{NS}/app/cfg", json={"kind": "config", "doc": {"a": 1}},
                        headers=server.auth()) as resp:
        assert resp.status == 201
    async with http.get(f"{server.url}{NS}/app/cfg/history") as resp:
        assert resp.status == 200
    async with http.put(f"{server.url}{NS}/history", json={"kind": "config", "doc": {}},
                        headers=server.auth()) as resp:  # no sub-resource has this path: the {ns} route's 400
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_namespace")


async def test_401_carries_www_authenticate(server: RunningServer, http: aiohttp.ClientSession) -> None:
    before = await server.runtime.store.current_revision()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic eDp5"}):
        async with http.put(f"{server.url}{NS}/app/cfg", json={"kind": "config", "doc": {}}, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["error"]["code"] == "unauthorized"
    assert await server.runtime.store.current_revision() == before


def etag(release: dict[str, Any]) -> str:
    return f'"{release["revision"]}"'


async def test_release_answers_carry_etag_and_location(server: RunningServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.url}{NS}/app/cfg"
    async with http.put(url, json={"kind": "config", "doc": {"a": 1}}, headers=server.auth()) as resp:
        created = await resp.json()
        assert resp.status == 201
        assert resp.headers["Location"] == "/v1/namespaces/app/cfg"
        assert resp.headers["ETag"] == etag(created)
    async with http.get(url) as resp:
        assert resp.headers["ETag"] == etag(created) and "Location" not in resp.headers
    headers = {**server.auth(), "If-Match": etag(created)}  # the ETag, as it came
    async with http.put(url, json={"kind": "config", "doc": {"a": 2}}, headers=headers) as resp:
        replaced = await resp.json()
        assert resp.status == 200 and "Location" not in resp.headers
        assert resp.headers["ETag"] == etag(replaced)
    async with http.post(f"{url}/rollback", json={"to_revision": created["revision"]}, headers=server.auth()) as resp:
        assert resp.headers["ETag"] == etag(await resp.json())


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
async def test_integer_beyond_64_bits_is_refused(server: RunningServer, http: aiohttp.ClientSession,
                                                 value: int) -> None:
    before = await server.runtime.store.current_revision()
    body = f'{{"kind": "config", "doc": {{"big": {value}}}}}'.encode()
    async with http.put(f"{server.url}{NS}/app/cfg", data=body,
                        headers={**server.auth(), "Content-Type": "application/yaml"}) as resp:
        assert (resp.status, (await resp.json())["error"]["code"]) == (400, "invalid_body")
    assert await server.runtime.store.current_revision() == before


@pytest.mark.parametrize("value", [2**64 - 1, -(2**63)])
@pytest.mark.parametrize("content_type", ["application/json", "application/yaml"])
async def test_integer_at_the_64_bit_bounds_is_kept(server: RunningServer, http: aiohttp.ClientSession,
                                                    value: int, content_type: str) -> None:
    url = f"{server.url}{NS}/app/cfg"
    async with http.put(url, data=f'{{"kind": "config", "doc": {{"big": {value}}}}}'.encode(),
                        headers={**server.auth(), "Content-Type": content_type}) as resp:
        assert resp.status == 201
    async with http.get(url) as resp:
        assert (await resp.json())["doc"] == {"big": value}
