"""Running a server from the command line: ``configcenter serve`` and ``configcenter dev``.

``serve`` loads the settings (a bad file exits 2 with one line; so do etcd credentials over
plaintext gRPC without ``etcd.allow_plaintext_credentials``) and runs the app until SIGINT/SIGTERM,
logging to stderr; it warns at start about anonymous reads and bearer tokens in plain HTTP on a
non-loopback address (``settings.exposure_warnings``, shown by ``/readyz`` too).

``configcenter dev``: an embedded etcd, a server in front of it, the examples loaded, a token printed.

* etcd keeps its data in ``--data-dir`` (default ``./.run/etcd``), so a second
  ``configcenter dev`` (or ``make run``) finds what the first one published.
* A fresh admin token, principal ``dev``, is generated on every start (``secrets.token_urlsafe``).
* Every ``examples/*.yaml`` whose first line is ``# namespace: <ns>`` is pushed
  through the server's own API, so it is validated like any other push.  A
  namespace that already exists (kept data) is left alone; an example that
  fails is reported and the others still load.
* Runs until Ctrl-C or SIGTERM, then stops the server and etcd and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..codec import parse_yaml
from ..errors import ConfigCenterError
from ..server.http.app import serve
from ..server.runtime import Runtime, wait_ready
from ..server.security.auth import Principal
from ..server.security.tls import etcd_tls_material, server_ssl_context
from ..server.settings import Settings, exposure_warnings, load_settings, parse_listen
from ..server.workers import WorkersFailed, run_workers
from .client import EXIT_OK, EXIT_USAGE, Client, CliError, current_release
from .embedded_etcd import EtcdCluster

NAMESPACE_LINE = re.compile(r"^#\s*namespace:\s*(\S+)\s*$")
DEV_AUTHOR = "configcenter-dev"


@dataclass(frozen=True)
class DevOptions:
    listen: str = "127.0.0.1:8080"
    examples: Path | None = None
    data_dir: Path | None = None


@dataclass(frozen=True)
class Example:
    path: Path
    ns: str


def default_examples_dir() -> Path:
    """``./examples`` when it exists, else the repository's ``examples/`` next to the package."""
    local = Path.cwd() / "examples"
    return local if local.is_dir() else Path(__file__).resolve().parents[2] / "examples"


def find_examples(directory: Path) -> list[Example]:
    """The ``*.yaml`` files whose first line names their namespace, sorted by file name."""
    found = []
    for path in sorted(directory.glob("*.yaml")):
        with path.open(encoding="utf-8", errors="replace") as handle:
            match = NAMESPACE_LINE.match(handle.readline())
        if match:
            found.append(Example(path, match.group(1)))
    return found


def one_line_config_error(exc: ConfigCenterError) -> str:
    """Settings errors may embed a multi-line YAML error: keep its problem and position only."""
    cause = exc.__cause__
    mark = getattr(cause, "problem_mark", None)
    if mark is None:
        return " ".join(exc.message.split())
    head = exc.message.split(":", 1)[0]
    problem = getattr(cause, "problem", None) or "syntax error"
    return f"{head}: {problem} (line {mark.line + 1}, column {mark.column + 1})"


def run_serve(config: str | None, *, listen: str | None, etcd: str | None, prefix: str | None,
              tls_cert: str | None = None, tls_key: str | None = None, tls_client_ca: str | None = None,
              workers: int | None = None) -> int:
    """Run the server in the foreground until SIGINT/SIGTERM; a bad configuration exits 2.

    With ``workers`` > 1 (flag, ``CONFIGCENTER_WORKERS`` or the file) a supervisor runs that many
    server processes on the port (``server/workers.py``); workers that cannot be kept running exit 1
    (2 for a configuration or listen error).

    "Bad" includes TLS files that do not load (server certificate/key/client CA, etcd TLS):
    they are read before the listener starts, so the error is one line, not a traceback.
    """
    try:
        settings = load_settings(config, listen=listen, etcd=etcd, prefix=prefix, tls_cert=tls_cert,
                                 tls_key=tls_key, tls_client_ca=tls_client_ca, workers=workers)
        ssl_context = server_ssl_context(settings.tls) if settings.tls else None
        if settings.etcd_tls:
            etcd_tls_material(settings.etcd_tls, "")  # checked now; the etcd client reads it again
    except ConfigCenterError as exc:
        raise CliError(one_line_config_error(exc), EXIT_USAGE) from exc
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_log = logging.getLogger("configcenter.serve")
    scheme = "https" if ssl_context else "http"
    mtls = " (client certificates required)" if settings.tls and settings.tls.client_ca_file else ""
    serve_log.info("listening on %s://%s%s, etcd %s, prefix %s", scheme, settings.listen, mtls,
                   ",".join(settings.etcd_endpoints), settings.prefix)
    if not any(p.has_role("writer") for p in settings.tokens):
        serve_log.warning("no writer token configured (auth.tokens): every write will be refused")
    elif not any(p.has_role("admin") for p in settings.tokens):
        serve_log.warning("no admin token configured (auth.tokens): every delete will be refused")
    for warning in exposure_warnings(settings):  # also in /readyz's "warnings"
        serve_log.warning("%s", warning)
    try:
        if settings.workers > 1:
            return run_workers(settings)
        asyncio.run(serve(settings, ssl_context=ssl_context))
    except WorkersFailed as exc:
        raise CliError(str(exc), exc.code) from exc
    except KeyboardInterrupt:
        pass
    except ConfigCenterError as exc:
        raise CliError(one_line_config_error(exc), EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.listen}: {exc.strerror or exc}", EXIT_USAGE) from exc
    return EXIT_OK


def run_dev(options: DevOptions) -> int:
    """Start etcd, serve until a signal, stop etcd; exit code as documented in ``docs/cli.md``."""
    try:
        host, port = parse_listen(options.listen)
    except ConfigCenterError as exc:
        raise CliError(exc.message, EXIT_USAGE) from exc
    data_dir = (options.data_dir or Path.cwd() / ".run" / "etcd").resolve()
    examples = options.examples or default_examples_dir()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _interrupt)  # until the event loop takes over
    try:
        cluster = EtcdCluster(1, workdir=data_dir, avoid_ports={port})
        try:
            cluster.start()
            token = secrets.token_urlsafe(24)
            settings = Settings(host=host, port=port, etcd_endpoints=tuple(cluster.endpoints),
                                tokens=(Principal.from_token("dev", token, "admin"),))
            asyncio.run(_serve(settings, token, examples, data_dir))
        finally:
            cluster.stop()
    except (ConfigCenterError, RuntimeError) as exc:
        raise CliError(f"dev: {getattr(exc, 'message', exc)}") from exc
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("configcenter dev stopped (etcd stopped, data kept in " + str(data_dir) + ")", file=sys.stderr)
    return EXIT_OK


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


async def _serve(settings: Settings, token: str, examples: Path, data_dir: Path) -> None:
    async def announce(runtime: Runtime) -> None:
        await wait_ready(runtime, 30)
        url = f"http://{settings.listen}"
        loaded = await load_examples(url, token, find_examples(examples))
        print(banner(url, token, settings, data_dir, loaded), flush=True)

    try:
        await serve(settings, on_ready=announce)
    except OSError as exc:
        raise CliError(f"cannot listen on {settings.listen}: {exc.strerror or exc}", EXIT_USAGE) from exc


async def load_examples(url: str, token: str, examples: list[Example]) -> list[str]:
    """Push each example through the API; return one report line per example (errors included)."""
    lines = []
    async with Client(url, token, timeout=10) as client:
        for example in examples:
            lines.append(f"  {example.ns:<16} {await _load_one(client, example)}  ({example.path.name})")
    return lines


async def _load_one(client: Client, example: Example) -> str:
    try:
        current = await current_release(client, example.ns)
        if current is not None:
            return f"kept revision {current['revision']} (version {current['version']}, already present)"
        body = parse_yaml(example.path.read_bytes())
        if isinstance(body, dict):
            body.setdefault("author", DEV_AUTHOR)
            for key in ("namespace", "revision"):  # the envelope's identity (apply / get -o), not the push body's
                body.pop(key, None)
        release = await client.call("PUT", f"/v1/namespaces/{example.ns}", body=body)
    except CliError as exc:
        print(f"error: example {example.path}: {exc.message}", file=sys.stderr, flush=True)
        return f"FAILED: {exc.message}"
    except (ConfigCenterError, OSError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        print(f"error: example {example.path}: {message}", file=sys.stderr, flush=True)
        return f"FAILED: {message}"
    return f"loaded revision {release['revision']} (version {release['version']})"


def banner(url: str, token: str, settings: Settings, data_dir: Path, loaded: list[str]) -> str:
    route_body = '{"headers": {"x-release": "v2-beta"}}'
    return "\n".join([
        f"configcenter dev is running at {url}",
        f"  etcd:   {','.join(settings.etcd_endpoints)} (data in {data_dir})",
        f"  token:  {token} (principal dev, role admin, new on every start)",
        f"  console: {url}/ui/ (sign in with the token)",
        "examples:",
        *(loaded or ["  (none found)"]),
        "",
        "try:",
        f"  export CONFIGCENTER_SERVER={url}",
        f"  export CONFIGCENTER_TOKEN={token}",
        "  configcenter list",
        "  configcenter get payment/routes",
        "  configcenter route payment/routes --header x-release=v2-beta",
        "  configcenter history orders/config",
        "  configcenter watch --verbose",
        f"  curl -s {url}/v1/namespaces",
        f"  curl -s -X POST -H 'Content-Type: application/json' -d '{route_body}' "
        f"{url}/v1/namespaces/payment/routes/route",
        "",
        "press Ctrl-C to stop",
    ])
