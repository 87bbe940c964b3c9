"""The watch pipeline, in the order data flows: ``mirror`` (list + watch of etcd, resume, divergence,
compaction windows, the ring's backfill from history) -> ``changes`` (the change, the catch-up ring,
event ids) -> ``hub`` (fan-out, resume, overflow -> reset, per-client stream caps) -> the SSE channel
(chunks straight to the socket, detached streams, wakeup).  ``subscription`` is the leaf the hub and the
detached streams share."""

from .changes import Change, ChangeRing, ResumePoint, event_id, parse_resume_id, sse_frames
from .hub import Hub
from .mirror import CLUSTER_CHANGED, REVISION_WENT_BACK, Mirror
from .subscription import Subscription

__all__ = ["CLUSTER_CHANGED", "REVISION_WENT_BACK", "Change", "ChangeRing", "Hub", "Mirror", "ResumePoint",
           "Subscription", "event_id", "parse_resume_id", "sse_frames"]
