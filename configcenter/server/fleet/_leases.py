"""etcd plumbing for instance reports: one shared lease keep-alive stream, and batched puts.

* :class:`KeepAlives` renews leases over a single ``LeaseKeepAlive`` stream per replica (opened
  on first use, reopened after an error) instead of one gRPC stream per heartbeat; responses
  are matched to waiters by lease id, in order.
* :class:`PutBatcher` puts the keys of concurrent reports (a push acknowledged by a whole fleet)
  in one transaction of at most :data:`MAX_TXN_OPS` puts. Each put carries its guard (the key is
  still attached to the reporter's lease, or does not exist yet): the transaction's compares are
  all of its puts' guards. If a batch fails or a guard does not hold, its puts are retried one by
  one, so one bad put (an expired lease: :class:`LeaseGone`; a record that changed hands:
  :class:`RecordChanged`) never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import grpc.aio
from etcd3aio import Etcd3Client

from configcenter.errors import EtcdUnavailableError
from configcenter.server.etcd import RequestStream, etcd_errors
from configcenter.server.etcd._etcd3aio import Compare, channel_of, rpc_pb2, rpc_pb2_grpc

log = logging.getLogger("configcenter.instances")
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops


class LeaseGone(Exception):
    """The lease a put named has expired (etcd: requested lease not found)."""


class RecordChanged(Exception):
    """A put's guard did not hold: the key is not (or no longer) attached to the lease, or exists already."""


def attached_to(key: bytes, lease: int) -> Compare:
    """Guard: ``key`` exists and is attached to ``lease``."""
    return Compare(result=Compare.EQUAL, target=Compare.LEASE, key=key, lease=lease)


def absent(key: bytes) -> Compare:
    """Guard: ``key`` does not exist."""
    return Compare(result=Compare.EQUAL, target=Compare.CREATE, key=key, create_revision=0)


class KeepAlives:
    """Lease renewals over one shared stream; see the module docstring."""

    def __init__(self, client: Etcd3Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._requests = RequestStream()
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def renew(self, lease: int) -> int:
        """Renew ``lease``: its new TTL, ≤ 0 if it expired; ``EtcdUnavailableError`` if etcd does not answer."""
        if self._task is None or self._task.done():
            self._requests = RequestStream()
            self._task = asyncio.get_running_loop().create_task(self._run(self._requests), name="lease-keepalives")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(lease, []).append(future)
        self._requests.put(rpc_pb2.LeaseKeepAliveRequest(ID=lease))
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            raise EtcdUnavailableError("etcd did not renew an instance lease in time",
                                       action="renew an instance lease") from None
        finally:
            waiting = self._waiters.get(lease)
            if waiting is not None and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del self._waiters[lease]

    async def close(self) -> None:
        self._requests.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, requests: RequestStream) -> None:
        try:
            channel = channel_of(self._client)
        except RuntimeError as exc:
            self._fail_all(str(exc))
            return
        stream = rpc_pb2_grpc.LeaseStub(channel).LeaseKeepAlive(requests)
        try:
            async for response in stream:
                waiting = self._waiters.get(response.ID)
                if waiting:
                    future = waiting.pop(0)
                    if not waiting:
                        del self._waiters[response.ID]
                    if not future.done():
                        future.set_result(int(response.TTL))
        except grpc.aio.AioRpcError as exc:
            log.warning("lease keep-alive stream failed: %s", exc.code().name)
        except Exception as exc:  # e.g. etcd refused our credentials (interceptor)
            log.warning("lease keep-alive stream failed: %s", exc)
        finally:
            requests.close()
            stream.cancel()
            self._fail_all("the lease keep-alive stream to etcd ended")

    def _fail_all(self, message: str) -> None:
        for waiting in self._waiters.values():
            for future in waiting:
                if not future.done():
                    future.set_exception(EtcdUnavailableError(message, action="renew an instance lease"))
        self._waiters.clear()


_Put = tuple[bytes, bytes, int, Compare, "asyncio.Future[None]"]


class PutBatcher:
    """Concurrent puts share transactions; see the module docstring."""

    def __init__(self, client: Etcd3Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._pending: list[_Put] = []
        self._task: asyncio.Task[None] | None = None
        self.transactions = 0

    async def put(self, key: bytes, value: bytes, lease: int, guard: Compare) -> None:
        """Put ``key`` attached to ``lease`` if ``guard`` holds: ``RecordChanged`` if it does not,
        ``LeaseGone`` if the lease expired, 503 if etcd is away."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((key, value, lease, guard, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush(), name="instance-puts")
        await future

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # reports being handled right now join this batch
            while self._pending:
                batch, self._pending = self._pending[:MAX_TXN_OPS], self._pending[MAX_TXN_OPS:]
                try:
                    await self._commit(batch)
                except Exception:
                    for item in batch:
                        await self._commit([item])
        finally:
            self._task = None

    async def _commit(self, batch: list[_Put]) -> None:
        """One transaction; with a single put its error goes to its waiter instead of being raised."""
        kv = self._client.kv
        try:
            if kv is None:
                raise EtcdUnavailableError("etcd client is not connected")
            ops = [kv.txn_op_put(key, value, lease=lease) for key, value, lease, _, _ in batch]
            with etcd_errors("store instance reports"):
                try:
                    response = await kv.txn([guard for *_, guard, _ in batch], ops, timeout=self._timeout)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (exc.details() or ""):
                        raise LeaseGone(exc.details()) from exc
                    raise
            self.transactions += 1
            if not response.succeeded:
                raise RecordChanged("the instance record changed hands")
        except Exception as exc:
            if len(batch) > 1:
                raise
            if not batch[0][4].done():
                batch[0][4].set_exception(exc)
            return
        for *_, future in batch:
            if not future.done():
                future.set_result(None)
