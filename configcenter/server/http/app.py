"""The aiohttp application factory: the one place that wires routes, middleware and the runtime.

Owning route registration here (not in ``runtime``) keeps the import arrows one-way:
``app`` -> ``api`` -> ``runtime``.  Start-up connects to etcd and starts the mirror
without waiting for etcd; a server started while etcd is down serves ``/healthz``,
reports not ready, and catches up when etcd comes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import signal
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from configcenter.server.net import GuardedSite
from configcenter.server.runtime import RUNTIME, Runtime
from configcenter.server.security import server_ssl_context
from configcenter.server.security.audit import add_request_id, begin_request, log_outcome
from configcenter.server.settings import Settings

from .api import Handler, add_routes, error_response
from .canary import add_canary_routes
from .console import add_console_routes
from .instances import add_instance_routes
from .release_control import add_release_control_routes
from .schemas import add_schema_routes

log = logging.getLogger("configcenter.serve")


def make_request_middleware(settings: Settings) -> Middleware:
    """Every request's wrapping, in this order: tell the connection guard its headers are complete
    (lifts its deadline), assign its request id and audit info, map errors to JSON answers
    (``api.error_response``), write the audit line with the final status.

    One middleware, not three: a streaming request keeps its middleware frames (and aiohttp's
    wrapper of each) for its whole life, about 0.6 KiB per middleware per idle subscriber.
    """
    trusted = tuple(settings.trusted_proxies)

    @web.middleware
    async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = request.app[RUNTIME].connections
        guard.request_started(request.transport)
        try:
            info = begin_request(request, trusted)
            try:
                await refuse_shadowed_method(request)
                response = await handler(request)
            except Exception as exc:
                mapped = error_response(request, exc)
                if mapped is None:
                    raise
                response = mapped
            log_outcome(request, info, response.status)
            return response
        finally:
            guard.request_finished(request.transport)

    return request_middleware


async def refuse_shadowed_method(request: web.Request) -> None:
    """405 whose ``Allow`` lists the methods of the resource that owns the path (RFC 9110 §15.5.6).

    aiohttp routes a request to the first resource matching both path and method, so with
    ``/v1/namespaces/{ns:.+}`` registered after ``…/{ns:.+}/history``, ``PUT …/app/cfg/history`` fell
    through to the push route (a 400 ``invalid_namespace``, or 401/403 first) instead of the history
    resource's 405, and an ``OPTIONS`` there listed both resources' methods.  Resources are registered
    most specific first, so the first resource whose path matches owns it.  Only requests routed to
    a dynamic resource, or refused with 405, are checked (a few regex matches).
    """
    matched, refused = request.match_info.route.resource, request.match_info.http_exception
    if not isinstance(refused, web.HTTPMethodNotAllowed) and not isinstance(matched, web.DynamicResource):
        return
    for candidate in request.app.router.resources():
        if candidate is matched:
            return
        found, allowed = await candidate.resolve(request)
        if found is None and allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)


def create_app(settings: Settings) -> web.Application:
    """The application: one middleware (``make_request_middleware``), routes, the runtime."""
    app = web.Application(middlewares=[make_request_middleware(settings)],
                          client_max_size=settings.limits.max_body_bytes)
    app.on_response_prepare.append(add_request_id)
    runtime = Runtime(settings)
    app[RUNTIME] = runtime
    add_instance_routes(app)  # first: /v1/namespaces/{ns}/rollout before /v1/namespaces/{ns}
    add_canary_routes(app)  # …/{ns}/canary and …/{ns}/promote too
    add_routes(app)
    add_schema_routes(app)
    add_release_control_routes(app)  # /v1/policies, /v1/freezes, /v1/proposals
    add_console_routes(app)  # /ui/ (the operator console) and /v1/whoami

    async def lifecycle(app: web.Application) -> Any:
        await runtime.start()
        yield
        await runtime.close()

    async def end_streams(app: web.Application) -> None:
        await runtime.hub.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_streams)  # before aiohttp waits for (and cancels) open handlers
    return app


async def start_site(runner: web.AppRunner, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                     reuse_port: bool | None = None) -> GuardedSite:
    """Listen for ``runner``'s app (set up already) through its runtime's connection guard; ``OSError`` if the
    address cannot be bound.  ``site.port`` is the bound port (``port`` 0: one the kernel chose)."""
    guard = runner.app[RUNTIME].connections
    site = GuardedSite(runner, host, port, guard, ssl_context=ssl_context, reuse_port=reuse_port)
    await site.start()
    return site


async def serve(settings: Settings, *, ssl_context: ssl.SSLContext | None = None,
                on_ready: Callable[[Runtime], Awaitable[None]] | None = None,
                reuse_port: bool | None = None, configure: Callable[[web.Application], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop cleanly.  ``OSError`` if the address cannot be bound.

    ``on_ready`` runs once the listener is up (it may wait for etcd itself).  Without ``ssl_context``
    the listener uses ``settings.tls`` (``tls.server_ssl_context``); plain HTTP only when neither is set.
    ``reuse_port`` / ``configure`` are for the worker processes of ``--workers N`` (``workers.py``):
    share the port with SO_REUSEPORT, and adjust the app (headers, metrics) before it starts.
    """
    if ssl_context is None and settings.tls is not None:
        ssl_context = server_ssl_context(settings.tls)
    raise_fd_limit(settings.limits.max_connections + 256)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    if configure is not None:
        configure(app)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await start_site(runner, settings.host, settings.port, ssl_context=ssl_context, reuse_port=reuse_port)
        # everything allocated to start (modules, the app, the runtime) lives as long as the process: move
        # it out of the collector's sight, so a full collection scans what requests allocate, not ~100k
        # start-up objects (30-45 ms pauses that every request, a refused one included, could trigger)
        gc.freeze()
        if on_ready is not None:
            await on_ready(runner.app[RUNTIME])
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit towards ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("open-files limit %d is below limits.max_connections + 256 = %d", target, wanted)
