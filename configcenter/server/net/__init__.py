"""The listening socket: the connection guard (cap, header deadline, detaching event streams from aiohttp)
and the TLS listener (the one module on asyncio's SSL internals)."""

from .listener import ConnectionGuard

__all__ = ["ConnectionGuard"]
