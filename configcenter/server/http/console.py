"""The operator console: static files under ``/ui/`` and ``GET /v1/whoami`` (who a token is).

Contract
--------
* ``/ui/`` serves the single-page console shipped in ``configcenter/server/http/ui/`` (package data).
  The files are listed and read once, when the routes are registered; only those names are
  served (``/ui/<name>`` for a file directly in that folder), so there is no path to traverse and
  no symlink to follow. ``/ui`` redirects to ``/ui/``; ``/ui/`` is ``index.html``.
* No token is needed to load the console: the token is typed into it and sent by its ``fetch()``
  calls to the admin API. Every console response carries a strict ``Content-Security-Policy``
  (``default-src 'self'``: no inline script, nothing from another origin), ``nosniff``,
  ``no-referrer`` and ``Cache-Control: no-cache``.
* ``GET /v1/whoami`` answers ``{principal, role, namespaces, read_requires_token}`` for the request's
  bearer token (``principal``/``role`` null without one; a bad or unknown token is 401 as anywhere).
  The console uses it to decide between a read-only and an editing console; the server still
  checks every request.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from .api import json_response, rt

UI_PACKAGE = "configcenter.server.http"
UI_FOLDER = "ui"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
UI_FILES: web.AppKey[dict[str, tuple[bytes, str]]] = web.AppKey("configcenter_ui_files")


def load_ui_files() -> dict[str, tuple[bytes, str]]:
    """``name -> (content, content type)`` for every regular file of a known type in the ui folder."""
    folder = resources.files(UI_PACKAGE).joinpath(UI_FOLDER)
    files: dict[str, tuple[bytes, str]] = {}
    if not folder.is_dir():
        return files
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2] if "." in entry.name else ""
        if entry.is_file() and suffix in CONTENT_TYPES and not entry.name.startswith("."):
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


def _file_response(request: web.Request, name: str) -> web.Response:
    found = request.app[UI_FILES].get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, content_type = found
    response = web.Response(body=body, headers=SECURITY_HEADERS)
    response.headers["Content-Type"] = content_type
    return response


async def ui_index(request: web.Request) -> web.Response:
    return _file_response(request, "index.html")


async def ui_file(request: web.Request) -> web.Response:
    return _file_response(request, request.match_info["name"])


async def ui_redirect(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/ui/")


async def whoami(request: web.Request) -> web.Response:
    """The principal of the request's token (see module contract)."""
    auth = rt(request).auth
    principal = auth.authenticate(request)
    body: dict[str, Any] = {"principal": None, "role": None, "namespaces": None,
                            "read_requires_token": auth.read_requires_token}
    if principal is not None:
        body.update(principal=principal.name, role=principal.role,
                    namespaces=None if principal.namespaces is None else list(principal.namespaces))
    return json_response(body)


def add_console_routes(app: web.Application) -> None:
    """``/ui``, ``/ui/``, ``/ui/<file>`` and ``/v1/whoami``."""
    app[UI_FILES] = load_ui_files()
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/ui", ui_redirect)
    app.router.add_get("/ui/", ui_index)
    app.router.add_get("/ui/{name:[A-Za-z0-9][A-Za-z0-9._-]*}", ui_file)
