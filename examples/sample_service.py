"""A tiny aiohttp service that routes every request with the configcenter SDK.

Run a config center (``configcenter dev`` loads ``examples/`` including
``payment/routes``), then::

    python examples/sample_service.py --server http://127.0.0.1:8080 --port 8081
    curl -s localhost:8081/pay -H 'x-release: v2-beta'
    # {"cluster": "payment-canary", "rule_id": "beta-header", "revision": 12, "mode": "live", "track": "base"}

Each request is answered with the routing decision for the ``payment``
service; a real service would forward the request to that cluster. Mode
changes (live <-> fallback) are logged. With ``--cache-dir`` the service can
start and keep routing while every config center is down.

Canary releases: give each instance an identity (``--instance-id web-1 --label zone=az1``); a
``configcenter push payment/routes NEW.yaml --canary zone=az1`` then reaches only the instances it
selects. Every answer and ``/_status`` say which track the table came from (``base`` or ``canary``,
with the candidate's revision), and the log says when the track changes (``docs/sdk.md``, "Canary
releases").
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from configcenter_sdk import ConfigClient, UnknownServiceError

CLIENT = web.AppKey("client", ConfigClient)
NS = "payment/routes"
log = logging.getLogger("sample_service")


async def handle(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        decision = client.route("payment", request.headers)
    except UnknownServiceError:
        return web.json_response({"error": "no route table for payment yet"}, status=503)
    ns = client.status().namespaces.get(NS)
    return web.json_response({"cluster": decision.cluster, "rule_id": decision.rule_id,
                              "revision": decision.revision, "mode": client.mode,
                              "track": ns.track if ns is not None else None})


async def status(request: web.Request) -> web.Response:
    st = request.app[CLIENT].status()
    return web.json_response({
        "mode": st.mode, "server": st.server, "revision": st.revision, "reconnects": st.reconnects,
        "instance_id": request.app[CLIENT].identity.instance_id,
        "namespaces": {ns: {"revision": n.revision, "source": n.source, "age_seconds": n.age_seconds,
                            "stale": n.stale, "track": n.track, "candidate_revision": n.candidate_revision}
                       for ns, n in st.namespaces.items()},
    })


def make_app(servers: list[str], cache_dir: str | None, token: str | None, instance_id: str | None = None,
             labels: dict[str, str] | None = None) -> web.Application:
    app = web.Application()

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        client = ConfigClient(servers, [NS], cache_dir=cache_dir, token=token, service="payment",
                              instance_id=instance_id, labels=labels,
                              on_mode_change=lambda old, new: log.warning("config mode %s -> %s", old, new))
        tracks: dict[str, str] = {}

        def log_track(ns: str, doc: object, revision: int) -> None:
            held = client.status().namespaces.get(ns)
            track = held.track if held is not None else "base"
            if tracks.get(ns, "base") != track:
                log.warning("%s is now on the %s track (revision %d)", ns, track, revision)
            tracks[ns] = track

        client.on_change(NS, log_track)
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
    parser.add_argument("--instance-id", help="this instance's id (canary membership by id or percent)")
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE label (repeatable), e.g. zone=az1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    labels = dict(label.split("=", 1) for label in args.label)
    app = make_app(args.server or ["http://127.0.0.1:8080"], args.cache_dir, args.token, args.instance_id, labels)
    web.run_app(app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
