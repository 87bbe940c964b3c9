"""A tiny aiohttp service that routes every request with the configcenter SDK.

Run a config center (``configcenter dev`` loads ``examples/`` including
``payment/routes``), then::

    python examples/sample_service.py --server http://127.0.0.1:8080 --port 8081
    curl -s localhost:8081/pay -H 'x-release: v2-beta'
    # {"cluster": "payment-canary", "rule_id": "beta-header", "revision": 12, "mode": "live"}

Each request is answered with the routing decision for the ``payment``
service; a real service would forward the request to that cluster. Mode
changes (live <-> fallback) are logged. With ``--cache-dir`` the service can
start and keep routing while every config center is down.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from configcenter_sdk import ConfigClient, UnknownServiceError

CLIENT = web.AppKey("client", ConfigClient)
log = logging.getLogger("sample_service")


async def handle(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        decision = client.route("payment", request.headers)
    except UnknownServiceError:
        return web.json_response({"error": "no route table for payment yet"}, status=503)
    return web.json_response({"cluster": decision.cluster, "rule_id": decision.rule_id,
                              "revision": decision.revision, "mode": client.mode})


async def status(request: web.Request) -> web.Response:
    st = request.app[CLIENT].status()
    return web.json_response({
        "mode": st.mode, "server": st.server, "revision": st.revision, "reconnects": st.reconnects,
        "namespaces": {ns: {"revision": n.revision, "source": n.source, "age_seconds": n.age_seconds,
                            "stale": n.stale} for ns, n in st.namespaces.items()},
    })


def make_app(servers: list[str], cache_dir: str | None, token: str | None) -> web.Application:
    app = web.Application()

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        client = ConfigClient(servers, ["payment/routes"], cache_dir=cache_dir, token=token,
                              on_mode_change=lambda old, new: log.warning("config mode %s -> %s", old, new))
        async with client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(client_ctx)
    app.router.add_get("/_status", status)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", action="append", help="config center URL (repeatable)")
    parser.add_argument("--cache-dir", help="directory for last-known-good snapshots")
    parser.add_argument("--token", help="reader token, if the config center requires one")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_app(args.server or ["http://127.0.0.1:8080"], args.cache_dir, args.token)
    web.run_app(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
