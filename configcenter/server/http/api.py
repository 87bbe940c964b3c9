"""The admin HTTP API: routes, request parsing and the one error-to-response mapping.

Every handler either returns JSON or raises a ``ConfigCenterError``; the
error middleware turns those (and aiohttp's own 404/405/413) into
``{"error": {code, message, details}}`` with the status the exception class
carries.  Writes go to etcd through the store and return once the mirror has
applied them (bounded wait), so a read right after a write sees it.  Current
reads come from the mirror and keep working, marked stale, while etcd is down.
Every handler authorizes first (``auth.py``: 401/403 before anything is read
or written) and every write is stamped with the request's origin (``audit.py``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from configcenter import errors
from configcenter.codec import dump_json, parse_body
from configcenter.model import Release, validate_namespace, validate_prefix
from configcenter.server.cpu import Lane
from configcenter.server.cpu._read_worker import diff_body, route_headers
from configcenter.server.runtime import RUNTIME, Runtime
from configcenter.server.security import Action, Principal, request_info
from configcenter.server.watch import ResumePoint, parse_resume_id
from configcenter.validation import PushRequest, parse_envelope, validate_document
from configcenter_sdk.routing import RouteTable

log = logging.getLogger("configcenter.api")
NS = "{ns:.+}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INT64_MAX = 2**63 - 1
_ETCD_DOWN_ANONYMOUS = "etcd is unavailable or refuses the server; a caller with a token sees why (and /readyz does)"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dump_json(data), status=status, content_type="application/json", headers=headers)


def error_response(request: web.Request, exc: Exception) -> web.StreamResponse | None:
    """The JSON error answer for ``exc`` raised by a handler (called in its ``except`` block); None
    for what is not an error answer (an HTTP redirect: the caller re-raises it).  The one mapping
    of exceptions to HTTP statuses besides ``errors.ConfigCenterError.status``."""
    if isinstance(exc, errors.ConfigCenterError):
        body = exc.to_json()
        if isinstance(exc, errors.EtcdUnavailableError) and request_info(request).principal is None:
            body["error"]["message"] = _ETCD_DOWN_ANONYMOUS  # etcd's words name its users, prefixes, endpoints
        return json_response(body, exc.status, exc.headers() or None)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = rt(request).settings.limits.max_body_bytes
        err = errors.PayloadTooLargeError(f"request body is larger than the {limit}-byte limit")
        return json_response(err.to_json(), err.status)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = exc.reason.lower().replace(" ", "_")
        body = {"error": {"code": code, "message": f"{exc.reason}: {request.method} {request.path}", "details": {}}}
        allow = exc.headers.get("Allow")  # a 405 lists the path's methods (RFC 9110 §15.5.6)
        return json_response(body, exc.status, {"Allow": allow} if allow is not None else None)
    if isinstance(exc, ConnectionResetError):  # aiohttp's ClientConnectionResetError too: the client hung up
        rt(request).hub.client_left(request, "before the answer was written")
        return json_response(errors.ConfigCenterError("the client closed the connection").to_json(), 499)  # never sent
    log.exception("unhandled error on %s %s", request.method, request.path)
    return json_response(errors.ConfigCenterError("internal server error").to_json(), 500)


def rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def int_param(request: web.Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    # isdigit alone admits '²', int() refuses it; etcd revisions are int64 (and orjson cannot echo more)
    if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= _INT64_MAX:
        raise errors.InvalidArgumentError(f"{name} must be an integer from {minimum} to {_INT64_MAX}, "
                                          f"got {raw[:40]!r}", parameter=name)
    return int(raw)


def if_match(request: web.Request) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().strip('"')
    if not (value.isascii() and value.isdigit()) or len(value) > 19:  # revisions are int64: at most 19 digits
        raise errors.InvalidArgumentError(f"If-Match must be a revision number, got {raw[:40]!r}")
    return int(value)


# A JSON body up to this size is parsed and validated on the event loop: JSON has no aliases, so
# the document is no bigger than the body, and the work takes microseconds (a 50-rule route table,
# ~5 KB, compiles in ~1 ms), less than the two thread wakeups an offload costs (0.1 ms each on a
# busy machine, 1.5 ms after 0.2 s idle on these VMs: bench_fanout's 1-subscriber push -> event).
INLINE_JSON_BYTES = 4096


async def small_json_body(request: web.Request) -> bool:
    """Whether the (already size-checked) body is JSON of at most ``INLINE_JSON_BYTES``."""
    return request.content_type.endswith("json") and len(await request.read()) <= INLINE_JSON_BYTES


async def inline_body(request: web.Request) -> bytes | None:
    """The body if it is small JSON (parsed on the event loop), else None (not read yet: it goes to a
    lane); 413 from the declared length before anything is read."""
    limit = rt(request).settings.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise errors.PayloadTooLargeError(
            f"request body of {request.content_length} bytes exceeds the {limit}-byte limit")
    if request.content_type.endswith("json") and (request.content_length or 0) <= INLINE_JSON_BYTES:
        body = await request.read()
        if await small_json_body(request):
            return body
    return None


async def read_body(request: web.Request, lane: Lane = "write") -> Any:
    """The parsed body, size-checked before reading and parsed within the limits (off the event
    loop, on ``lane``'s threads, unless it is a small JSON body; 429 before reading when the lane is full)."""
    runtime = rt(request)
    small = await inline_body(request)
    if small is not None:
        return parse_body(small, request.content_type, runtime.parse_limits)
    async with runtime.admission.slot(lane) as slot:  # 429 before reading the body when the lane is full
        body = await request.read()
        return await slot.run(parse_body, body, request.content_type, runtime.parse_limits)


def release_response(release: Release, runtime: Runtime, status: int = 200) -> web.Response:
    """A release as JSON, with ``ETag`` (its revision: usable as ``If-Match``) and, for a 201, ``Location``."""
    headers = {**runtime.staleness_headers(), "ETag": f'"{release.revision}"'}
    if status == 201:
        headers["Location"] = f"/v1/namespaces/{release.ns}"
    return json_response(release.to_json(), status, headers)


def authorized(request: web.Request, action: Action) -> tuple[Principal | None, str]:
    """Authorize ``action`` on the ``{ns}`` of the path: role (401/403), name (400), scope (403)."""
    auth = rt(request).auth
    principal = auth.require(request, action)
    ns = validate_namespace(request.match_info["ns"])
    auth.check_scope(request, principal, action, ns)
    return principal, ns


async def published(request: web.Request, release: Release) -> None:
    """A write succeeded: note its revision for the audit log, wait until reads see it."""
    request_info(request).revision = release.revision
    await rt(request).visible(release.revision)


async def validated_envelope(request: web.Request, ns: str, body: Any) -> PushRequest:
    """The envelope of a document about to be written to ``ns`` (a push, a canary's candidate): parsed,
    naming ``ns`` if it names one, and its document valid for its kind (off the event loop when large).
    The namespace's own schema is checked by the write itself (``SchemaStore.check_push``)."""
    runtime = rt(request)
    envelope = parse_envelope(body)
    if envelope.namespace is not None and envelope.namespace != ns:
        raise errors.SchemaViolationError(
            f"the envelope is for namespace {envelope.namespace!r}, not {ns!r}",
            violations=[{"path": "$.namespace", "message": f"must be {ns!r} (the namespace written to)"}])
    regex_limit = runtime.settings.limits.max_regex_program_size
    if await small_json_body(request):
        validate_document(envelope.kind, envelope.doc, max_regex_program_size=regex_limit)
    else:
        await runtime.offload(validate_document, envelope.kind, envelope.doc, max_regex_program_size=regex_limit)
    return envelope


async def push(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "push")
    envelope = await validated_envelope(request, ns, await read_body(request))
    release = await runtime.store.push(
        ns, envelope.kind, envelope.doc, author=envelope.author, message=envelope.message, if_match=if_match(request),
        origin=request_info(request).origin(),
        check=runtime.schemas.check_push(ns, envelope.kind, envelope.doc, runtime.offload),  # its schema
    )
    await published(request, release)
    return release_response(release, runtime, 201 if release.version == 1 else 200)


async def get_namespace(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "get")
    revision = int_param(request, "revision", minimum=1)
    if revision is not None:
        return release_response(await runtime.store.get_at(ns, revision), runtime)
    return release_response(await runtime.current(ns), runtime)


async def list_namespaces(request: web.Request) -> web.Response:
    """Namespaces under ``?prefix=``; with ``read_requires_token`` only those in the token's scope."""
    runtime = rt(request)
    principal = runtime.auth.require(request, "list")
    prefix = validate_prefix(request.query.get("prefix", ""))
    revision, releases = await runtime.list(prefix)
    items = [r.to_json(with_doc=False) for r in releases if runtime.auth.visible(principal, r.ns)]
    return json_response({"revision": revision, "namespaces": items}, headers=runtime.staleness_headers())


async def delete_namespace(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "delete")
    release = await runtime.store.delete(ns, author=request.query.get("author", ""),
                                         message=request.query.get("message", ""), if_match=if_match(request),
                                         origin=request_info(request).origin())
    await published(request, release)
    return json_response(release.to_json(with_doc=False))


async def history(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "history")
    limit = int_param(request, "limit", 20, minimum=1) or 20
    page = await runtime.store.history(ns, min(limit, 1000), int_param(request, "before", minimum=1))
    entries = [r.to_json(with_doc=False) for r in page.entries]
    return json_response({"ns": ns, "entries": entries, "next_before": page.next_before})


async def diff(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "diff")
    from_rev, to_rev = int_param(request, "from", minimum=1), int_param(request, "to", minimum=1)
    if from_rev is None:
        raise errors.InvalidArgumentError("diff needs ?from=REVISION (and optionally &to=REVISION)")
    async with runtime.admission.slot("read") as slot:  # 429 before documents are fetched or sent
        current = await runtime.current(ns) if to_rev is None else None  # "to" defaults to what reads see
        to = current.revision if current is not None else to_rev
        assert to is not None
        key = (ns, from_rev, to)
        body = runtime.diffs.get(key)
        if body is None:  # computed in a read worker; it keeps the documents, so a repeat sends only keys
            old, new = runtime.document(ns, from_rev), runtime.document(ns, to, current)
            body = await slot.run(diff_body, ns, old, new, (from_rev, to))
            if len(body) <= DIFF_CACHE_BYTES:
                runtime.diffs[key] = body
    return web.Response(body=body, content_type="application/json")


DIFF_CACHE_BYTES = 256 * 1024  # larger diff answers are not cached: 16 of them must not pin much memory


async def rollback(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "rollback")
    body = await read_body(request)
    target = body.get("to_revision") if isinstance(body, dict) else None
    if not isinstance(target, int) or isinstance(target, bool) or target < 1:
        raise errors.InvalidBodyError("body must be {to_revision: <revision>, message?, author?}")
    release = await runtime.store.rollback(
        ns, target, author=str(body.get("author", "")), message=str(body.get("message", "")),
        if_match=if_match(request), origin=request_info(request).origin(),
    )
    await published(request, release)
    return release_response(release, runtime)


async def evaluate_route(request: web.Request) -> web.Response:
    runtime = rt(request)
    _, ns = authorized(request, "route")
    small = await inline_body(request)
    if small is not None:
        headers = route_headers(small, request.content_type, runtime.parse_limits, None)
        table = await runtime.route_table(ns)
    else:
        table, headers = await route_in_worker(request, runtime, ns)
    decision = table.route(headers)
    return json_response({"ns": ns, "cluster": decision.cluster, "rule_id": decision.rule_id,
                          "revision": decision.revision})


async def route_in_worker(request: web.Request, runtime: Runtime, ns: str) -> tuple[RouteTable, dict[str, str]]:
    """A large route-evaluation body, parsed in a read worker which sends back only the headers the
    table reads.  The table is looked up first for their names, but its error (404, 409) is raised
    after the body's (400), as for a small body."""
    async with runtime.admission.slot("read") as slot:  # 429 before the body is read
        try:
            table, problem = await runtime.route_table(ns, slot), None
        except errors.ConfigCenterError as exc:
            table, problem = None, exc
        names = table._read if table is not None else frozenset()  # lower-cased names its rules read
        body = await request.read()
        headers = await slot.run(route_headers, body, request.content_type, runtime.parse_limits, names)
    if table is None:
        assert problem is not None
        raise problem
    return table, headers


async def watch(request: web.Request) -> web.StreamResponse:
    runtime = rt(request)
    principal = runtime.auth.require(request, "watch")
    selectors = request.query.getall("ns", [])
    for sel in selectors:
        validate_prefix(sel) if sel.endswith("/") else validate_namespace(sel)
    selectors = runtime.auth.narrow(request, principal, selectors)  # to the token's scope (auth.py)
    return await runtime.hub.stream(request, selectors, resume_point(request))


def resume_point(request: web.Request) -> ResumePoint | None:
    """``Last-Event-ID`` (wins) or ``?since=``: ``<revision>`` or ``<cluster hex>:<revision>``; both are
    validated (400 ``invalid_argument``), empty means none."""
    since = request.query.get("since", "")
    point = parse_resume_id(since, "since") if since else None
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    return parse_resume_id(last_event_id, "Last-Event-ID") if last_event_id else point


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Status for anyone; details (etcd state, revision, problem naming etcd users and prefixes) only for a
    valid token of any role (``Runtime.readiness``).  A bad token is 401, like everywhere."""
    runtime = rt(request)
    status = runtime.readiness(details=runtime.auth.authenticate(request) is not None)
    return json_response(status, 200 if status["status"] == "ready" else 503)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text.  It names namespaces (label ``ns``), so it is read like ``list``: open unless
    ``auth.read_requires_token``; then a token is needed and a scoped one sees only its namespaces' series."""
    runtime = rt(request)
    principal = runtime.auth.require(request, "list")
    scoped = principal is not None and principal.namespaces is not None and runtime.auth.scoped(principal, "list")
    visible = functools.partial(runtime.auth.visible, principal) if scoped else None
    runtime.metrics.set("configcenter_stale_seconds", runtime.mirror.stale_seconds())
    admission = runtime.admission
    runtime.metrics.set_series("configcenter_admission_refused_total", "lane",
                               {lane: admission.refused(lane) for lane in ("write", "read")})
    runtime.metrics.set("configcenter_read_worker_restarts_total", admission.read_pool.restarts)
    return web.Response(text=runtime.metrics.render(visible).decode(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


def add_routes(app: web.Application) -> None:
    base = "/v1/namespaces"
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/watch", watch)
    app.router.add_get(base, list_namespaces)
    app.router.add_get(f"{base}/{NS}/history", history)
    app.router.add_get(f"{base}/{NS}/diff", diff)
    app.router.add_post(f"{base}/{NS}/rollback", rollback)
    app.router.add_post(f"{base}/{NS}/route", evaluate_route)
    app.router.add_get(f"{base}/{NS}", get_namespace)
    app.router.add_put(f"{base}/{NS}", push)
    app.router.add_delete(f"{base}/{NS}", delete_namespace)
