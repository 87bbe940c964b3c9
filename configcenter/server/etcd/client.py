"""The etcd client: its channel, paged reads, the raw streams' plumbing and error mapping (the key
layout is ``keys.py``; every etcd3aio internal is in ``_etcd3aio.py``).

The rest of the server reaches it through this package (``etcd/__init__``) and speaks in namespaces
and releases, never in raw keys or gRPC status codes: ``etcd_errors`` turns every way a call fails for
lack of etcd into ``EtcdUnavailableError`` (503; a refusal by etcd's authentication says so), and
etcd's "request is too large" into ``PayloadTooLargeError``.

The client (``EtcdClient``, made by ``connect``) is etcd3aio's on a gRPC channel built here
(``_Channels``, installed as its channel factory; it refuses to connect on a channel it did not
build: ``_etcd3aio``): TLS from ``etcd.tls`` (or implied by https:// endpoints), and with
``etcd.username`` a ``TokenKeeper`` plus a channel interceptor that put etcd's auth token on every
call, the mirror's raw Watch stream included (``_auth``).  The raw bidirectional streams (the
mirror's Watch with progress requests, which etcd3aio's ``watch()`` does not send; the registry's
LeaseKeepAlive) are fed through ``RequestStream``.

Ranges that can be large (``docs/``, ``history/``) are read with ``read_range``: pages of
``LIST_PAGE`` keys, all at the revision of the first page, so the result is one consistent
snapshot however many pages it takes; ``read_range_since`` reads only what changed since a revision
(the mirror's window).  A page of big records can still exceed gRPC's default 4 MB receive limit, so
the channel lifts it (``MAX_RECEIVE_BYTES``, as etcd's own Go client does).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import grpc.aio
from etcd3aio import Etcd3Client, EtcdError
from etcd3aio.errors import EtcdPermissionDeniedError, EtcdUnauthenticatedError

from configcenter.errors import EtcdUnavailableError, PayloadTooLargeError
from configcenter.server.security import EtcdTLS, EtcdTLSMaterial, etcd_tls_material

from ._auth import EtcdAccessError, TokenKeeper, token_interceptors
from ._etcd3aio import (
    ConnectionManager,
    channel_of,
    install_channel_factory,
    raw_range,
    rpc_pb2,
    rpc_pb2_grpc,
    verify_channel,
)
from .credentials import EtcdCredentials
from .keys import KeyLayout as KeyLayout  # re-exported: callers build keys through it

WatchRequest = rpc_pb2.WatchRequest
WatchCreateRequest = rpc_pb2.WatchCreateRequest
WatchProgressRequest = rpc_pb2.WatchProgressRequest
WatchResponse = rpc_pb2.WatchResponse
EVENT_PUT = 0
EVENT_DELETE = 1
LIST_PAGE = 64  # key-values per range read of a listing (see read_range)
KEYS_PAGE = 1024  # keys per range read of a keys-only listing
# gRPC's reconnect delay grows to 120 s: after a long etcd outage the channel would stay down for
# minutes after etcd is back, while the mirror serves a stale view; 2 s keeps the return prompt
MAX_RECONNECT_BACKOFF_MS = 2000
MAX_RECEIVE_BYTES = 2**31 - 1  # gRPC's default is 4 MB: six 700 KB documents in one page would not fit
_LIST_ATTEMPTS = 5  # fresh lists restarted because etcd compacted the revision they were pinned to


class RevisionCompacted(EtcdError):
    """A read pinned to a revision found it compacted away (etcd's OUT_OF_RANGE)."""


class RequestStream:
    """The request stream of a bidirectional etcd call (Watch, LeaseKeepAlive) until ``close()``.

    An iterator object, not an async generator: grpc consumes the request iterator in a task of
    its own that nobody awaits.  When etcd breaks the stream that task stays suspended in the
    iterator; an async generator left there is garbage-collected with the task ("Task was
    destroyed but it is pending", then "aclose(): asynchronous generator is already running").
    ``close()`` ends the iteration instead, so grpc's task finishes whichever way the call ended.
    """

    _END = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False

    def put(self, request: Any) -> None:
        if not self._closed:
            self._queue.put_nowait(request)

    def close(self) -> None:
        """End the iteration: grpc's task consuming it finishes (idempotent)."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(self._END)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> Any:
        request = await self._queue.get()
        if request is self._END:
            self._queue.put_nowait(self._END)  # stays ended for any later caller
            raise StopAsyncIteration
        return request


class _Channels(ConnectionManager):
    """etcd3aio's channel factory (same target and options) with our TLS material and interceptors."""

    def __init__(self, endpoints: Sequence[str], tls: EtcdTLSMaterial | None,
                 interceptors: Sequence[grpc.aio.ClientInterceptor]) -> None:
        super().__init__(endpoints)
        self.grpc_options = [*self.grpc_options, ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                             ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        self._tls = tls
        self._interceptors = list(interceptors) or None
        self.built: grpc.aio.Channel | None = None  # the last channel made here (verify_channel checks it)

    def get_channel(self, ca_cert: bytes | None = None, cert_key: bytes | None = None,
                    cert_chain: bytes | None = None, tls_server_name: str | None = None) -> grpc.aio.Channel:
        """A new channel; the arguments of etcd3aio's signature are ignored (the material is ours)."""
        if self._tls is None:
            self.built = grpc.aio.insecure_channel(self.target, options=self.grpc_options,
                                                   interceptors=self._interceptors)
            return self.built
        credentials = grpc.ssl_channel_credentials(self._tls.ca_cert, self._tls.cert_key, self._tls.cert_chain)
        options = [*self.grpc_options, ("grpc.ssl_target_name_override", self._tls.server_name)]
        self.built = grpc.aio.secure_channel(self.target, credentials, options=options, interceptors=self._interceptors)
        return self.built


class EtcdClient(Etcd3Client):
    """etcd3aio's client on our channel; ``connect()`` also starts the token keeper (if any)."""

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTLSMaterial | None = None,
                 keeper: TokenKeeper | None = None) -> None:
        super().__init__(list(endpoints), rpc_max_attempts=2, watch_reconnect_backoff_seconds=0.1)
        self.keeper = keeper
        self._channels = _Channels(endpoints, tls, token_interceptors(keeper) if keeper else [])
        install_channel_factory(self, self._channels)  # refuses if etcd3aio moved its factory

    @property
    def access_problem(self) -> str | None:
        """Why etcd refuses our credentials or permissions right now (one line), or None."""
        return self.keeper.problem if self.keeper is not None else None

    async def connect(self) -> None:
        """Open the channel; ``EtcdInternalsChanged`` (and nothing connected) if it is not ours."""
        await super().connect()
        try:
            verify_channel(self, self._channels.built)
        except Exception:
            await super().close()
            raise
        if self.keeper is not None and self.auth is not None:
            self.keeper.start(self.auth)

    async def close(self) -> None:
        if self.keeper is not None:
            await self.keeper.stop()
        await super().close()


def connect(endpoints: Sequence[str], *, tls: EtcdTLS | None = None, credentials: EtcdCredentials | None = None,
            prefix: str = "/configcenter/", timeout: float = 5.0) -> EtcdClient:
    """An unconnected client; ``await client.connect()`` opens the channel lazily (no I/O).

    TLS when ``tls`` is given or an endpoint is https:// (then with the system CA store unless
    ``tls.ca_file``); ``ConfigError`` if its files are unusable.  With ``credentials`` every call
    carries an auth token of that user (``_auth``); ``prefix`` only serves error messages.
    """
    if tls is None and any(e.startswith("https://") for e in endpoints):
        tls = EtcdTLS()
    clean = [e.removeprefix("http://").removeprefix("https://") for e in endpoints]
    material = etcd_tls_material(tls, clean[0].rpartition(":")[0].strip("[]")) if tls is not None else None
    keeper = TokenKeeper(credentials, prefix, timeout=timeout) if credentials is not None else None
    return EtcdClient(clean, tls=material, keeper=keeper)


def watch_stub(client: Etcd3Client) -> rpc_pb2_grpc.WatchStub:
    """A raw Watch stub on the client's channel (the mirror sends progress requests, which etcd3aio's
    ``watch()`` does not); the channel's interceptor adds the auth token to its calls when an etcd user
    is configured."""
    return rpc_pb2_grpc.WatchStub(channel_of(client))


async def read_range(kv: Any, start: bytes, end: bytes, *, revision: int = 0, timeout: float | None,
                     keys_only: bool = False, page: int | None = None) -> tuple[Any, list[Any]]:
    """Every key in [``start``, ``end``) at one revision, in key order, read ``page`` keys at a time
    (default ``LIST_PAGE``, ``KEYS_PAGE`` for keys only): (the first page's response header, the key-values).

    ``revision`` 0: a linearizable read now; the first page's revision pins the others, and if
    etcd compacts it away meanwhile the list starts over at a fresh revision (a few times, then
    ``RevisionCompacted``).  An explicit ``revision`` that is or gets compacted: ``RevisionCompacted``.
    """
    for _ in range(_LIST_ATTEMPTS):
        try:
            return await _read_pages(kv, start, end, revision, timeout, keys_only,
                                     page or (KEYS_PAGE if keys_only else LIST_PAGE))
        except RevisionCompacted:
            if revision:
                raise
    raise RevisionCompacted(f"etcd compacted every revision a list of {start!r} was pinned to "
                            f"({_LIST_ATTEMPTS} attempts)")


async def _read_pages(kv: Any, start: bytes, end: bytes, revision: int, timeout: float | None, keys_only: bool,
                      page: int) -> tuple[Any, list[Any]]:
    header, items, key = None, [], start
    while True:
        try:
            resp = await kv.get(key, range_end=end, revision=revision, limit=page, keys_only=keys_only,
                                timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if compacted(exc):
                raise RevisionCompacted(f"revision {revision} of {start!r} is compacted") from exc
            raise
        if header is None:
            header, revision = resp.header, int(resp.header.revision)
        items.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return header, items
        key = resp.kvs[-1].key + b"\0"


async def read_range_since(kv: Any, start: bytes, end: bytes, *, since: int, revision: int, timeout: float | None,
                           max_items: int, page: int = LIST_PAGE) -> tuple[list[Any], bool]:
    """The keys in [``start``, ``end``) at ``revision`` whose ``mod_revision`` is >= ``since``, in key
    order, ``page`` at a time (etcd3aio's ``get`` has no ``min_mod_revision``): (key-values, complete).

    Stops after ``max_items`` key-values (``complete`` False).  ``revision`` must be given (every
    page reads the same snapshot); ``RevisionCompacted`` if etcd compacted it.  etcd filters by
    ``mod_revision`` after reading the range, so each page costs etcd the rest of the range.
    """
    items: list[Any] = []
    key = start
    while len(items) < max_items:
        request = rpc_pb2.RangeRequest(key=key, range_end=end, revision=revision, limit=page,
                                       min_mod_revision=since)
        try:
            resp = await raw_range(kv, request, timeout)
        except grpc.aio.AioRpcError as exc:
            if compacted(exc):
                raise RevisionCompacted(f"revision {revision} of {start!r} is compacted") from exc
            raise
        items.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return items, True
        key = resp.kvs[-1].key + b"\0"
    return items, False


def _too_large(exc: BaseException) -> str | None:
    """etcd's message when ``exc`` is its refusal of a request over ``--max-request-bytes``, else None."""
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        detail = exc.details() or ""
        return detail if "request is too large" in detail else None
    return None


def compacted(exc: BaseException) -> bool:
    """Whether ``exc`` is etcd's answer to a read at a compacted revision."""
    if isinstance(exc, RevisionCompacted):
        return True
    return (isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.OUT_OF_RANGE
            and "compacted" in (exc.details() or ""))


@contextlib.contextmanager
def etcd_errors(action: str) -> Iterator[None]:
    """Turn every way an etcd call can fail for lack of etcd into ``EtcdUnavailableError`` (503);
    refusals by etcd's authentication say so ("etcd refused access", ``details.reason = etcd_access``)."""
    try:
        yield
    except EtcdAccessError as exc:
        raise EtcdUnavailableError(f"etcd refused access, cannot {action}: {exc}", action=action,
                                   reason="etcd_access") from exc
    except (EtcdUnauthenticatedError, EtcdPermissionDeniedError) as exc:
        raise EtcdUnavailableError(
            f"etcd refused access, cannot {action}: {exc} (is authentication enabled in etcd? configure "
            "etcd.username and etcd.password_file for a user whose role covers the prefix)",
            action=action, reason="etcd_access",
        ) from exc
    except (EtcdError, grpc.aio.AioRpcError, TimeoutError, ConnectionError) as exc:
        too_large = _too_large(exc)
        if too_large:  # the store measures first: etcd's own limit is below etcd.max_request_bytes
            raise PayloadTooLargeError(
                f"etcd refused the request as too large, cannot {action} (is etcd.max_request_bytes above "
                f"etcd's --max-request-bytes?): {too_large}", action=action, reason="etcd_request_too_large",
            ) from exc
        raise EtcdUnavailableError(
            f"etcd is unavailable, cannot {action}: {exc.__class__.__name__}: {exc}".strip(),
            action=action,
        ) from exc
