"""The aiohttp application factory: the one place that wires routes, middleware and the runtime.

Owning route registration here (not in ``runtime``) keeps the import arrows one-way:
``app`` -> ``api`` -> ``runtime``.  Start-up connects to etcd and starts the mirror
without waiting for etcd; a server started while etcd is down serves ``/healthz``,
reports not ready, and catches up when etcd comes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import add_routes, error_middleware
from .runtime import RUNTIME, Runtime
from .settings import Settings


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=settings.limits.max_body_bytes)
    runtime = Runtime(settings)
    app[RUNTIME] = runtime
    add_routes(app)

    async def lifecycle(app: web.Application) -> Any:
        await runtime.start()
        yield
        await runtime.close()

    app.cleanup_ctx.append(lifecycle)
    return app
