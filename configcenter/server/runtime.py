"""The running server's parts wired together: etcd client, store, mirror, hub, auth, metrics.

``app.create_app`` builds an aiohttp application around a ``Runtime`` whose start-up connects to etcd
and starts the mirror without waiting for etcd: a server started while etcd
is down serves ``/healthz``, reports not ready, and catches up when etcd comes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web
from cachetools import LRUCache

from configcenter.codec import ParseLimits
from configcenter.errors import ConflictError, EtcdUnavailableError, NotFoundError
from configcenter.model import Origin, Release
from configcenter.server.cpu._read_pool import Doc, PoolLimits
from configcenter.server.cpu.admission import Admission, Slot
from configcenter.server.etcd import CanaryChange, Store
from configcenter.server.etcd import client as _etcd
from configcenter.server.fleet import CanaryGuard, InstanceRegistry
from configcenter.server.metrics import Metrics
from configcenter.server.net import ConnectionGuard
from configcenter.server.release import ReleaseControl
from configcenter.server.schemas import SchemaStore
from configcenter.server.security import TokenAuth
from configcenter.server.settings import Settings, exposure_warnings
from configcenter.server.watch import Hub, Mirror
from configcenter_sdk.errors import RouteTableError
from configcenter_sdk.routing import RouteTable, compile_table

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.auth = TokenAuth(settings.tokens, settings.read_requires_token, self.metrics)
        self.client = client_for(settings)
        layout = _etcd.KeyLayout(settings.prefix)
        self.schemas = SchemaStore(self.client, layout,
                                   timeout=settings.watch.etcd_timeout)  # checks every push (not a route's)
        self.store = Store(self.client, layout, timeout=settings.watch.etcd_timeout,
                           max_request_bytes=settings.etcd_max_request_bytes)
        # freezes, review policies, proposals: its gate checks every write in the write's transaction
        self.release = ReleaseControl(self.client, layout, self.store, timeout=settings.watch.etcd_timeout,
                                      max_request_bytes=settings.etcd_max_request_bytes)
        self.mirror = Mirror(self.client, layout, ring_size=settings.limits.history_ring,
                             tuning=settings.watch, metrics=self.metrics)
        self.connections = ConnectionGuard(settings.limits.max_connections, settings.limits.header_timeout,
                                           self.metrics)
        self.hub = Hub(self.mirror, self.metrics, queue_size=settings.limits.subscriber_queue,
                       progress_interval=settings.watch.progress_interval, detach=self.connections.detach,
                       limits=settings.limits)
        self._tables: dict[str, RouteTable] = {}
        self.parse_limits = ParseLimits(settings.limits.max_doc_bytes, settings.limits.max_depth)
        # (ns, from, to) -> encoded diff body (small ones only: api.DIFF_CACHE_BYTES): revisions are immutable
        self.diffs: LRUCache[tuple[str, int, int], bytes] = LRUCache(maxsize=16)
        # caches keyed by revision hold only while revisions are unique: a restored or another
        # etcd cluster reuses them for other content, so a mirror reset drops both
        self.mirror.reset_listeners.append(self._forget_revision_keyed_caches)
        limits = settings.limits
        pool = PoolLimits(workers=limits.read_cpu_workers, max_rss=limits.read_worker_max_rss,
                          job_timeout=limits.read_job_timeout, max_address_space=4 * limits.read_worker_max_rss)
        self.admission = Admission(limits.cpu_workers, limits.write_queue, limits.read_cpu_workers, limits.read_queue,
                                   read_pool=pool)
        self._doc_epoch = 0  # part of the read workers' document keys: a mirror reset invalidates them
        self.instances = InstanceRegistry(self.client, layout.prefix, settings.watch.instance_ttl, self.metrics,
                                          timeout=settings.watch.etcd_timeout, releases=lambda: self.mirror.state,
                                          caps=(settings.limits.max_instances,
                                                settings.limits.max_instances_per_client))
        self._instance_metrics: asyncio.Task[Any] | None = None
        # canaries: a push asks the mirror's copy whether one is active; members' rejections abort one
        self.store.cached = self.mirror.state.get
        self.canary_guard = CanaryGuard(lambda: self.mirror.state, self._abort_canary)
        self.instances.on_reports = self.canary_guard.reports

    def _forget_revision_keyed_caches(self, _reason: str) -> None:
        self._tables.clear()
        self.diffs.clear()
        self._doc_epoch += 1

    async def start(self) -> None:
        await self.client.connect()
        self.mirror.start()
        self._instance_metrics = asyncio.get_running_loop().create_task(self.instances.run_metrics())

    async def close(self) -> None:
        if self._instance_metrics is not None:
            self._instance_metrics.cancel()
        await self.instances.close()
        await self.canary_guard.close()
        await self.mirror.stop()
        await self.client.close()
        await self.admission.close()

    async def _abort_canary(self, ns: str, started: int, message: str) -> None:
        """Abort on reject (``fleet/canary_guard.py``): a ``canary_abort`` of that canary only."""
        origin = Origin(principal="configcenter", trace_id=f"abort-on-reject-{ns}-{started}")
        await self.store.canary.abort(ns, CanaryChange(origin, message), expect_started=started)

    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-heavy work of a write (parse, validate, schema checks) on the write lane's threads.

        The event loop keeps serving ``/healthz`` and SSE streams meanwhile.  Writes have their own
        threads and queue (``admission.py``): reads never delay them; past the queue, 429.
        """
        return await self.admission.run("write", fn, *args, **kwargs)

    async def offload_read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The same in the read lane's worker processes (``fn`` a function of ``_read_worker``): 429 when full."""
        return await self.admission.run("read", fn, *args, **kwargs)

    def document(self, ns: str, revision: int, release: Release | None = None) -> Doc:
        """``ns``'s document at ``revision`` as a read-worker argument: its JSON is loaded (from ``release``
        or history, on the event loop) only when the worker does not hold it already."""
        async def load() -> bytes:
            found = release if release is not None else await self.store.get_at(ns, revision)
            return orjson.dumps(found.doc)

        return Doc((self._doc_epoch, ns, revision), load)

    async def visible(self, revision: int) -> None:
        """Give the mirror a moment to apply our own write so a following read sees it."""
        await self.mirror.wait_for(revision, self.settings.watch.write_visibility_timeout)

    async def current(self, ns: str) -> Release:
        """Current release from the mirror (works while etcd is down), or from etcd before the first list."""
        if not self.mirror.ready.is_set():
            return await self.store.get(ns)
        release = self.mirror.state.get(ns)
        if release is None:
            raise NotFoundError(f"namespace {ns!r} does not exist", namespace=ns)
        return release

    async def route_table(self, ns: str, slot: Slot | None = None) -> RouteTable:
        """The compiled route table of ``ns``, compiled once per revision (not once per request), on the
        read lane's compile thread (in ``slot`` if given): the table lives here, in the server."""
        release = await self.current(ns)
        if release.kind != "routes" or release.doc is None:
            raise ConflictError(f"namespace {ns!r} holds a {release.kind} document, not a route table")
        cached = self._tables.get(ns)
        if cached is not None and cached.revision == release.revision:
            return cached
        try:
            compile_it = functools.partial(compile_table, release.doc, release.revision)
            table = await (slot.run_thread(compile_it) if slot else self.admission.run_thread("read", compile_it))
        except RouteTableError as exc:
            raise ConflictError(f"stored route table of {ns!r} does not compile: {exc}") from exc
        self._tables[ns] = table
        return table

    async def list(self, prefix: str) -> tuple[int, list[Release]]:
        if not self.mirror.ready.is_set():
            return await self.store.list_releases(prefix)
        revision, docs = self.mirror.snapshot(lambda ns: ns.startswith(prefix))
        return revision, [docs[ns] for ns in sorted(docs)]

    def staleness_headers(self) -> dict[str, str]:
        headers = {"X-Configcenter-Revision": str(self.mirror.applied_revision)}
        stale = self.mirror.stale_seconds()
        if stale > 0:
            headers["X-Configcenter-Stale"] = f"{stale:.3f}"
        return headers

    def readiness(self, *, details: bool = True) -> dict[str, Any]:
        """``/readyz``: ``status`` (ready / degraded / starting), ``stale`` and the configuration's exposure
        ``warnings`` (``settings.exposure_warnings``) for anyone; with ``details`` (a caller holding a token)
        also etcd's state, the revision and what is wrong, which may name etcd users and key prefixes."""
        ready = self.mirror.ready.is_set() and self.mirror.connected
        status = "ready" if ready else "degraded" if self.mirror.ready.is_set() else "starting"
        body: dict[str, Any] = {"status": status, "stale": self.mirror.stale_seconds() > 0,
                                "warnings": list(exposure_warnings(self.settings))}
        if not details:
            return body
        body.update(etcd="up" if ready else "down", revision=self.mirror.applied_revision)
        if not ready:
            body["stale_seconds"] = round(self.mirror.stale_seconds(), 3)
            body["message"] = (self.client.access_problem
                               or "etcd is unreachable: reads are served from the last view, writes are refused")
        return body


RUNTIME = web.AppKey("runtime", Runtime)


async def wait_ready(runtime: Runtime, timeout: float) -> None:
    """Block until the mirror has listed etcd once; ``EtcdUnavailableError`` after ``timeout``."""
    try:
        await asyncio.wait_for(runtime.mirror.ready.wait(), timeout)
    except TimeoutError as exc:
        raise EtcdUnavailableError(f"etcd did not answer within {timeout}s") from exc


def client_for(settings: Settings) -> _etcd.EtcdClient:
    """The server's etcd client as ``settings`` describe it (endpoints, TLS, user)."""
    return _etcd.connect(settings.etcd_endpoints, tls=settings.etcd_tls, credentials=settings.etcd_auth,
                   prefix=settings.prefix, timeout=settings.watch.etcd_timeout)
