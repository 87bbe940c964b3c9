"""Prometheus text exposition for a handful of counters, gauges and one latency histogram.

A few dozen lines do the job here; the official client library would add a
dependency and a registry model the server does not need.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

_HELP = {
    "configcenter_applied_revision": ("gauge", "etcd revision up to which the mirror has applied every change"),
    "configcenter_watch_reconnects_total": ("counter", "times the mirror lost its etcd watch and reconnected"),
    "configcenter_mirror_resyncs_total": ("counter", "full re-lists after etcd compacted the resume point"),
    "configcenter_mirror_diverged_total": ("counter", "etcd went back (restore) or changed cluster: state replaced"),
    "configcenter_mirror_deduped_total": ("counter", "replayed watch events dropped (revision <= applied)"),
    "configcenter_progress_unverified_total": ("counter", "etcd progress notifications not trusted (events pending)"),
    "configcenter_invalid_records_total": ("counter", "records in etcd that are not valid configcenter records"),
    "configcenter_subscribers": ("gauge", "open SSE subscriptions"),
    "configcenter_subscriber_overflows_total": ("counter", "subscriber queues dropped for overflow (sent a reset)"),
    "configcenter_changes_sent_total": ("counter", "change events written to subscribers"),
    "configcenter_stale_seconds": ("gauge", "seconds since etcd last answered (0 while connected)"),
    "configcenter_open_connections": ("gauge", "open client connections (SSE streams included)"),
    "configcenter_connections_refused_total": ("counter", "connections refused at limits.max_connections"),
    "configcenter_header_timeouts_total": ("counter", "connections closed: request headers incomplete in time"),
    "configcenter_auth_failures_total": ("counter", "requests refused 401: bad Authorization, unknown or no token"),
    "configcenter_auth_denied_total": ("counter", "requests refused 403: the token's role or scope does not allow it"),
    "configcenter_propagation_seconds": ("histogram", "commit (server clock) to change event written to a subscriber"),
    "configcenter_instances": ("gauge", "SDK instances with a live lease (as of the last rollout refresh)"),
    "configcenter_instance_writes_total": ("counter", "instance reports written to etcd (new or changed state)"),
    "configcenter_instance_keepalives_total": ("counter", "unchanged instance reports: lease renewed, nothing written"),
    "configcenter_rollout_pending_instances": ("gauge", "live subscribed instances not yet at the current revision"),
    "configcenter_rollout_rejected_instances": ("gauge", "subscribed instances that rejected the namespace's revision"),
    "configcenter_rollout_ack_seconds": ("histogram", "commit (server clock) to an instance reporting it applied"),
}
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters and gauges by name, one histogram; ``render()`` gives Prometheus text format 0.0.4."""

    def __init__(self, *, _nested: bool = False) -> None:
        self.values: dict[str, float] = defaultdict(float)
        self._bucket_counts = [0] * (len(_BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0
        self.series: dict[str, dict[str, float]] = {}  # labelled gauges: name -> {'ns="a/b"': value}
        # the ack histogram is a second Metrics whose own histogram state is used (nested: no further one)
        self._ack: Metrics = self if _nested else Metrics(_nested=True)

    def inc(self, name: str, by: float = 1.0) -> None:
        self.values[name] += by

    def set(self, name: str, value: float) -> None:
        self.values[name] = value

    def observe_propagation(self, seconds: float, count: int = 1) -> None:
        """``count`` observations of ``seconds`` (one change written to ``count`` subscribers)."""
        self._bucket_counts[bisect.bisect_left(_BUCKETS, seconds)] += count
        self._sum += seconds * count
        self._count += count

    def set_series(self, name: str, label: str, values: dict[str, float]) -> None:
        """Replace the whole family ``name{label="..."}`` (label values must not need escaping)."""
        self.series[name] = {f'{label}="{key}"': value for key, value in values.items()}

    def observe_ack(self, seconds: float) -> None:
        self._ack.observe_propagation(seconds)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "histogram":
                lines += (self._ack if name == "configcenter_rollout_ack_seconds" else self)._histogram_lines(name)
            elif name in self.series:
                lines += [f"{name}{{{labels}}} {value:g}" for labels, value in sorted(self.series[name].items())]
            else:
                lines.append(f"{name} {self.values.get(name, 0):g}")
        return "\n".join(lines) + "\n"

    def _histogram_lines(self, name: str) -> list[str]:
        lines, running = [], 0
        for bound, count in zip((*_BUCKETS, float("inf")), self._bucket_counts, strict=True):
            running += count
            label = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{label}"}} {running}')
        return [*lines, f"{name}_sum {self._sum:g}", f"{name}_count {self._count}"]
