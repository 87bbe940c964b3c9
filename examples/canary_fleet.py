"""A pretend fleet for trying canary releases: N ConfigClients in one process, one line per track change.

Run a config center (``configcenter dev`` loads ``examples/``), then::

    python examples/canary_fleet.py --server http://127.0.0.1:8080 --instances 20 --strict-every 3

Instances are ``payment-1`` … ``payment-N`` (service ``payment``, label ``zone=az1`` or ``az2``
alternately), each subscribed to ``payment/routes`` and reporting like a real service, so ``configcenter
rollout payment/routes`` lists them.  Every ``--strict-every``-th instance runs with
``max_regex_program_size=20``: it rejects (NACKs) a route table with a larger regex, as an older SDK
build might.  Every change of what an instance runs is printed:
``payment-9 canary rev 1043 -> cluster payment-v2``.  Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from contextlib import AsyncExitStack

from configcenter_sdk import ConfigClient, UnknownServiceError

NS = "payment/routes"


def describe(client: ConfigClient) -> str:
    ns = client.status().namespaces.get(NS)
    try:
        cluster = client.route("payment", {}).cluster
    except UnknownServiceError:
        cluster = "-"
    if ns is None:
        return f"- rev - -> cluster {cluster}"
    return f"{ns.track} rev {ns.revision} -> cluster {cluster}"


async def main(server: str, count: int, strict_every: int, token: str | None) -> None:
    async with AsyncExitStack() as stack:
        clients = {}
        for i in range(1, count + 1):
            limit = {"max_regex_program_size": 20} if strict_every and i % strict_every == 0 else {}
            clients[f"payment-{i}"] = await stack.enter_async_context(ConfigClient(
                [server], [NS], service="payment", instance_id=f"payment-{i}", token=token,
                labels={"zone": "az1" if i % 2 else "az2"}, **limit))  # type: ignore[arg-type]
        shown: dict[str, str] = {}
        while True:
            for iid, client in clients.items():
                now = describe(client)
                if shown.get(iid) != now:
                    print(f"{iid} {now}", flush=True)
                    shown[iid] = now
            await asyncio.sleep(0.2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", default=os.environ.get("CONFIGCENTER_SERVER", "http://127.0.0.1:8080"),
                        help="default $CONFIGCENTER_SERVER or http://127.0.0.1:8080")
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--strict-every", type=int, default=0, metavar="K",
                        help="every K-th instance rejects regexes over RE2 program size 20")
    parser.add_argument("--token", help="a reader token, if the server requires one to read")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.server, args.instances, args.strict_every, args.token))
