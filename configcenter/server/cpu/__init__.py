"""CPU-heavy request work off the event loop: per-class admission lanes (writes on threads, reads in a
low-priority worker process), 429 when a lane is full."""

from .admission import Admission, Lane

__all__ = ["Admission", "Lane"]
