"""Blocking wrapper: a :class:`ConfigClient` on its own event loop in a daemon thread.

* ``start()`` / ``close()`` (or ``with SyncConfigClient(...) as client``) start
  and stop the background thread; ``start`` blocks like ``ConfigClient.start``
  (bounded by ``start_timeout``) and re-raises its errors.
* ``route()``, ``get()`` and ``mode`` never cross threads: they read the
  client's published route-table map (one reference, never mutated) and its
  locked cache directly from the calling thread.
* ``status()`` runs on the background loop (it walks mutable state) and
  blocks until it returns.
* Callbacks registered with ``on_change`` / ``on_mode_change`` / ``on_error``
  run **in the background thread**: keep them short and thread-safe, and do
  not call ``close()`` from them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from ._state import ChangeCallback, ErrorCallback
from .client import ClientStatus, ConfigClient, Mode, ModeCallback
from .routing import RouteDecision

__all__ = ["SyncConfigClient"]

T = TypeVar("T")
P = ParamSpec("P")


def _signature_of(source: Callable[Concatenate[Any, P], None],
                  ) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, P], None]]:
    """Give the decorated ``__init__`` the signature of ``source`` for type checkers (one list of
    parameters, ``ConfigClient``'s; the wrapper forwards them unchanged)."""
    def apply(init: Callable[..., None]) -> Callable[Concatenate[Any, P], None]:
        return init
    return apply


class SyncConfigClient:
    """Same constructor arguments as :class:`ConfigClient`; see the module docstring."""

    @_signature_of(ConfigClient.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: ConfigClient | None = None
        self._pending: list[tuple[str, Any, Any]] = []

    def __enter__(self) -> SyncConfigClient:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the background loop and the client; blocks until the client has started."""
        if self._thread is not None:
            raise RuntimeError("client already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._serve, args=(loop, ready), name="configcenter-sdk", daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread
        try:
            self._client = self._call(self._create())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        """Stop the client and the background thread; idempotent."""
        client, self._client = self._client, None
        if client is not None and self._loop is not None:
            self._call(client.close())
        self._stop_loop()

    @property
    def client(self) -> ConfigClient:
        """The wrapped asyncio client (use it only on its loop); ``RuntimeError`` before ``start``."""
        if self._client is None:
            raise RuntimeError("SyncConfigClient is not started")
        return self._client

    @property
    def mode(self) -> Mode:
        return self.client.mode

    def route(self, service: str, headers: Mapping[str, str]) -> RouteDecision:
        """Same as :meth:`ConfigClient.route`, evaluated in the calling thread."""
        return self.client.route(service, headers)

    def get(self, ns: str) -> Mapping[str, Any] | None:
        """Same as :meth:`ConfigClient.get`, in the calling thread."""
        return self.client.get(ns)

    def status(self) -> ClientStatus:
        return self._call(self._status())

    def on_change(self, ns: str | None, callback: ChangeCallback) -> None:
        """Register a change listener (runs in the background thread); allowed before ``start``."""
        self._register("change", ns, callback)

    def on_mode_change(self, callback: ModeCallback) -> None:
        self._register("mode", None, callback)

    def on_error(self, callback: ErrorCallback) -> None:
        self._register("error", None, callback)

    # ------------------------------------------------------------------ internals

    def _register(self, what: str, ns: str | None, callback: Any) -> None:
        """Listener tuples are replaced copy-on-write, so registering from this thread is safe."""
        if self._client is None:
            self._pending.append((what, ns, callback))
        else:
            _attach(self._client, what, ns, callback)

    async def _create(self) -> ConfigClient:
        client = ConfigClient(*self._args, **self._kwargs)
        for what, ns, callback in self._pending:
            _attach(client, what, ns, callback)
        await client.start()
        return client

    async def _status(self) -> ClientStatus:
        return self.client.status()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)


def _attach(client: ConfigClient, what: str, ns: str | None, callback: Any) -> None:
    if what == "change":
        client.on_change(ns, callback)
    elif what == "mode":
        client.on_mode_change(callback)
    else:
        client.on_error(callback)
