"""The console's server side without a browser: ``/ui/`` static files (headers, no traversal) and ``/v1/whoami``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import READER, WRITER, RunningServer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
async def srv(make_server: Any) -> RunningServer:
    server: RunningServer = await make_server(read_requires_token=True)
    return server


async def get(http: aiohttp.ClientSession, srv: RunningServer, path: str, token: str = WRITER) -> Any:
    async with http.get(f"{srv.url}{path}", headers=srv.auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_static_files_headers_and_no_traversal(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{srv.url}/ui", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "/ui/"
    for path, ctype in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        async with http.get(f"{srv.url}{path}") as resp:  # no token, although reads need one here
            assert resp.status == 200, path
            assert resp.headers["Content-Type"].startswith(ctype)
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
    for file in (ROOT / "configcenter/server/http/ui").iterdir():  # offline, and no markup built from strings
        text = file.read_text()
        assert "http://" not in text and "https://" not in text and "innerHTML" not in text, file.name
        async with http.get(f"{srv.url}/ui/{file.name}") as resp:
            assert resp.status == 200 and await resp.read() == file.read_bytes(), file.name
            assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'"), file.name
            assert resp.headers["X-Content-Type-Options"] == "nosniff", file.name
    for path in ("/ui/../api.py", "/ui/%2e%2e/api.py", "/ui/..%2fapi.py", "/ui/nope.js", "/ui/.hidden",
                 "/ui/%2e%2e%2f%2e%2e%2fsettings.py"):
        async with http.get(f"{srv.url}{path}") as resp:
            text = await resp.text()
            assert resp.status == 404, (path, resp.status)
            assert "import" not in text


async def test_whoami(srv: RunningServer, http: aiohttp.ClientSession) -> None:
    assert await get(http, srv, "/v1/whoami", READER) == {
        "principal": "test-reader", "role": "reader", "namespaces": None, "read_requires_token": True}
    assert (await get(http, srv, "/v1/whoami", WRITER))["role"] == "admin"
    async with http.get(f"{srv.url}/v1/whoami") as resp:
        assert resp.status == 200
        assert await resp.json() == {"principal": None, "role": None, "namespaces": None, "read_requires_token": True}
    async with http.get(f"{srv.url}/v1/whoami", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
