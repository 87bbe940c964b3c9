"""The listening socket: the connection guard (cap, header deadline, detaching event streams from aiohttp),
the listener (``GuardedSite``), the TLS listener (the one module on asyncio's SSL internals) and
``_aiohttp`` (the one module on aiohttp's internals: writing a body behind ``StreamResponse``, letting go
of a connection)."""

from ._aiohttp import open_raw_body
from .listener import ConnectionGuard, GuardedSite

__all__ = ["ConnectionGuard", "GuardedSite", "open_raw_body"]
