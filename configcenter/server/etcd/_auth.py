"""etcd authentication for the server's etcd channel: one auth token, on every call.

Why an interceptor: the mirror drives its own Watch stream with raw stubs on the
client's channel (``etcd.watch_stub``), which etcd3aio's ``set_token`` never reaches.
The interceptors (``token_interceptors``) sit on the channel itself and put ``token: <t>``
into the metadata of every unary and stream-stream call, whoever built the stub.

Contract
--------
* ``TokenKeeper.start`` authenticates in the background at once, then again every
  ``refresh`` seconds (etcd's simple tokens expire after ``--auth-token-ttl``, 300 s by
  default, of inactivity; JWT tokens after their ttl).  ``password_file`` is read again
  at every authentication (a trailing newline is not part of the password), so a rotated
  password needs no restart.  Authenticate itself
  goes without a token (etcd 3.4 refuses it with a stale one).
* A unary call refused for its token (``UNAUTHENTICATED``) gets a fresh token and is
  retried once.  A Watch that etcd cancels at creation for lack of permission (etcd 3.5
  says "permission denied" for an expired token, 3.4 "invalid auth token") renews the
  token as well; the mirror's next attempt uses the new one.  A watch already running is
  not affected by its token expiring (etcd checks the token at creation only).
* Calls wait for the first token (at most their timeout, 5 s for streams).  While etcd
  rejects the credentials they fail at once with ``EtcdAccessError`` naming the problem,
  without a request to etcd.  A refused call (``PERMISSION_DENIED``) fails with
  ``EtcdAccessError`` naming the user, the call and the role it needs.
* ``problem`` is the current access problem in one line (credentials rejected, password
  file unreadable, permission denied), for ``/readyz``; each new problem is logged once
  at ERROR, and its end at INFO.  It clears on the next successful authentication or call.
* etcd with authentication disabled: the user is not used (WARNING once), calls go
  without a token; the keeper asks again at every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from etcd3aio import EtcdError
from etcd3aio.auth import AuthService
from etcd3aio.errors import EtcdConnectionError, EtcdPermissionDeniedError, EtcdUnauthenticatedError

from .credentials import EtcdCredentials

log = logging.getLogger("configcenter.etcd")

AUTHENTICATE = "/etcdserverpb.Auth/Authenticate"
WATCH = "/etcdserverpb.Watch/Watch"
TOKEN_REFRESH = 60.0  # seconds between re-authentications (etcd's default token TTL is 300 s)
FIRST_TOKEN_WAIT = 5.0  # a call waits at most this long (or its own timeout) for the first token
RENEW_MIN_AGE = 1.0  # a token younger than this is not blamed for a refusal (no renewal storm)
RETRY_MAX = 5.0  # cap of the backoff between failed authentications


class EtcdAccessError(EtcdError):
    """etcd refused configcenter's credentials or permissions; the message says which and what to check."""


class TokenKeeper:
    """Holds the etcd auth token of one user; see the module docstring for the contract."""

    def __init__(self, credentials: EtcdCredentials, prefix: str, *, refresh: float = TOKEN_REFRESH,
                 timeout: float = 5.0) -> None:
        self.credentials = credentials
        self.prefix = prefix
        self.token: str | None = None
        self._refresh = refresh
        self._timeout = timeout
        self._issued = 0.0
        self._auth_disabled = False
        self._auth_problem: str | None = None
        self._access_problem: str | None = None
        self._logged: str | None = None
        self._last_error = "no answer from etcd yet"
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def problem(self) -> str | None:
        """One line naming why etcd refuses configcenter right now, or None."""
        return self._auth_problem or self._access_problem

    def start(self, auth: AuthService) -> None:
        self._task = asyncio.create_task(self._run(auth), name="configcenter-etcd-auth")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    # -- what the interceptor asks -------------------------------------------
    async def token_for(self, timeout: float | None) -> str | None:
        """The token to send (None: etcd has authentication disabled); waits for the first one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout or FIRST_TOKEN_WAIT, FIRST_TOKEN_WAIT)
        while True:
            if self._auth_disabled:
                return None
            if self.token:
                return self.token
            if self._auth_problem:
                raise EtcdAccessError(self._auth_problem)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise EtcdConnectionError(f"not authenticated to etcd as {self.credentials.username!r} yet: "
                                          f"{self._last_error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def renew(self, stale: str | None, timeout: float | None) -> str | None:
        """A token newer than ``stale`` (re-authenticating now if nobody did); ``stale`` itself when it is
        too young to blame or no new one came in time."""
        if stale is not None and stale == self.token and time.monotonic() - self._issued >= RENEW_MIN_AGE:
            changed = self._changed
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(timeout or FIRST_TOKEN_WAIT, FIRST_TOKEN_WAIT))
        return await self.token_for(timeout)

    def watch_refused(self, token: str | None, reason: str) -> None:
        """etcd cancelled a Watch at creation.  Sent with a token renewed since: nothing to do (the next
        attempt takes the new one).  With the current token: renew it if it is old enough to have
        expired, else report a permission problem."""
        if token != self.token:
            return
        if token is not None and time.monotonic() - self._issued >= RENEW_MIN_AGE:
            log.info("etcd refused a watch (%s); renewing the auth token", reason)
            self._wake.set()
            return
        self.denied("Watch", reason)

    def denied(self, call: str, detail: str) -> EtcdAccessError:
        """Record (and return, to raise) a refusal of ``call`` by etcd's permission checks."""
        user, prefix = self.credentials.username, self.prefix
        self._access_problem = (
            f"etcd user {user!r} is not permitted to {call}: {detail}; its role needs readwrite on the key prefix "
            f"{prefix!r} (etcdctl role grant-permission --prefix=true ROLE readwrite {prefix})")
        self._report()
        return EtcdAccessError(self._access_problem)

    def succeeded(self) -> None:
        """A call went through: a permission problem (if any) is over."""
        if self._access_problem is not None:
            self._access_problem = None
            self._report()

    # -- the background loop ----------------------------------------------------
    async def _run(self, auth: AuthService) -> None:
        failures = 0
        while True:
            self._wake.clear()
            ok = await self._authenticate(auth)
            failures = 0 if ok else failures + 1
            delay = self._refresh if ok else min(RETRY_MAX, 0.1 * 2 ** min(failures, 8))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _authenticate(self, auth: AuthService) -> bool:
        user = self.credentials.username
        try:
            password = self._password()
        except OSError as exc:
            return self._rejected(f"cannot read etcd.password_file {self.credentials.password_file}: "
                                  f"{exc.strerror or exc}")
        try:
            resp = await auth.authenticate(user, password, timeout=self._timeout, max_attempts=1)
        except grpc.aio.AioRpcError as exc:  # etcd3aio passes codes it does not map through as they are
            return self._refused(exc.code(), exc.details() or str(exc.code()))
        except (EtcdUnauthenticatedError, EtcdPermissionDeniedError) as exc:
            return self._rejected(f"etcd rejected the credentials of user {user!r}: {exc}")
        except (EtcdError, TimeoutError, ConnectionError) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._notify()
            return False
        self._got(str(resp.token))
        return True

    def _refused(self, code: grpc.StatusCode, detail: str) -> bool:
        if code == grpc.StatusCode.FAILED_PRECONDITION and "not enabled" in detail:
            if not self._auth_disabled:
                log.warning("etcd has authentication disabled; etcd.username %r is not used",
                            self.credentials.username)
            self._auth_disabled, self._auth_problem = True, None
            self._notify()
            return True
        if code == grpc.StatusCode.INVALID_ARGUMENT and "authentication failed" in detail:
            return self._rejected(f"etcd rejected the credentials of user {self.credentials.username!r} "
                                  f"(etcd.username / etcd.password or password_file): {detail}")
        self._last_error = f"{code.name}: {detail}"
        self._notify()
        return False

    def _password(self) -> str:
        if self.credentials.password_file:
            return Path(self.credentials.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        return self.credentials.password or ""

    def _rejected(self, problem: str) -> bool:
        self.token, self._auth_disabled, self._auth_problem = None, False, problem
        self._report()
        self._notify()
        return False

    def _got(self, token: str) -> None:
        if self.token is None:
            log.info("authenticated to etcd as %r", self.credentials.username)
        self.token, self._issued = token, time.monotonic()
        self._auth_disabled, self._auth_problem = False, None
        self._report()
        self._notify()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _report(self) -> None:
        problem = self.problem
        if problem == self._logged:
            return
        if problem is None:
            log.info("etcd accepts configcenter's credentials again")
        else:
            log.error("%s", problem)
        self._logged = problem


Continuation = Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]]


def token_interceptors(keeper: TokenKeeper) -> list[grpc.aio.ClientInterceptor]:
    """The channel's interceptors for ``keeper``'s token.  Two objects: grpc.aio files an interceptor
    under the first call kind it implements only, so one class for both would miss every stream."""
    return [UnaryTokenInterceptor(keeper), StreamTokenInterceptor(keeper)]


class UnaryTokenInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Puts the keeper's token on every unary call; retries once with a renewed token."""

    def __init__(self, keeper: TokenKeeper) -> None:
        self._keeper = keeper

    async def intercept_unary_unary(self, continuation: Continuation, client_call_details: grpc.aio.ClientCallDetails,
                                    request: Any) -> Any:
        details, method = client_call_details, _method(client_call_details)
        if method == AUTHENTICATE:
            return await continuation(_with_token(details, None), request)
        token = await self._keeper.token_for(details.timeout)
        try:
            response = await (await continuation(_with_token(details, token), request))
        except grpc.aio.AioRpcError as exc:
            response = await self._retry(exc, continuation, details, request, token)
        self._keeper.succeeded()
        return response

    async def _retry(self, exc: grpc.aio.AioRpcError, continuation: Continuation,
                     details: grpc.aio.ClientCallDetails, request: Any, token: str | None) -> Any:
        """The answer of one retry after a token-related refusal; other errors are raised as they are."""
        call = _call_name(_method(details))
        if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            raise self._keeper.denied(call, exc.details() or "permission denied") from exc
        detail = exc.details() or ""
        stale_auth_store = exc.code() == grpc.StatusCode.INVALID_ARGUMENT and "auth store is old" in detail
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED and not stale_auth_store:
            raise exc
        fresh = token if stale_auth_store else await self._keeper.renew(token, details.timeout)
        try:
            return await (await continuation(_with_token(details, fresh), request))
        except grpc.aio.AioRpcError as again:
            if again.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise self._keeper.denied(call, again.details() or "permission denied") from again
            if again.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise EtcdAccessError(f"etcd rejects the auth token of user {self._keeper.credentials.username!r} "
                                      f"for {call} even after renewing it: {again.details()}") from again
            raise


class StreamTokenInterceptor(grpc.aio.StreamStreamClientInterceptor):
    """Puts the keeper's token on every stream (the mirror's Watch); a refused watch renews it."""

    def __init__(self, keeper: TokenKeeper) -> None:
        self._keeper = keeper

    async def intercept_stream_stream(self, continuation: Continuation,
                                      client_call_details: grpc.aio.ClientCallDetails, request_iterator: Any) -> Any:
        details = client_call_details
        token = await self._keeper.token_for(details.timeout)
        call = await continuation(_with_token(details, token), request_iterator)
        if _method(details) != WATCH:
            return call
        return self._watch_responses(call, token)

    async def _watch_responses(self, call: Any, token: str | None) -> AsyncIterator[Any]:
        async for response in call:
            if response.canceled and _refusal(response.cancel_reason):
                self._keeper.watch_refused(token, response.cancel_reason)
            elif response.created:
                self._keeper.succeeded()
            yield response


def _refusal(reason: str) -> bool:
    return "permission denied" in reason or "auth token" in reason


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method: Any = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


def _call_name(method: str) -> str:
    """``/etcdserverpb.KV/Range`` -> ``KV.Range``."""
    return method.rsplit(".", 1)[-1].replace("/", ".")


def _with_token(details: grpc.aio.ClientCallDetails, token: str | None) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*[(k, v) for k, v in (details.metadata or ()) if k != "token"])
    if token:
        metadata.add("token", token)
    return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials,
                                      details.wait_for_ready)
