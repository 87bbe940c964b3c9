"""The server's metrics: plain numbers on the hot path, exposed through ``prometheus-client``.

Why two layers: the hub counts every delivered change and observes its latency once per
change *per selection* (``observe_propagation(seconds, count)``); a float add and a bisect
are all that path can afford.  ``prometheus-client`` is used where it does a real job: at
scrape time a custom collector turns these numbers into standard metric families (counter,
gauge, histogram, labelled gauges), the library adds the process metrics (CPU, memory, open
files) and renders the exposition format.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_HELP = {
    "configcenter_applied_revision": ("gauge", "etcd revision up to which the mirror has applied every change"),
    "configcenter_watch_reconnects_total": ("counter", "times the mirror lost its etcd watch and reconnected"),
    "configcenter_mirror_resyncs_total": ("counter", "full re-lists after etcd compacted the resume point"),
    "configcenter_mirror_diverged_total": ("counter", "etcd went back (restore) or changed cluster: state replaced"),
    "configcenter_mirror_drift_total": ("counter", "state differed from etcd at the applied revision: re-listed"),
    "configcenter_mirror_ring_truncated_total": ("counter", "re-lists whose missed window could not be replayed "
                                                 "from history: ring floor raised, older resume points reset"),
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
    "configcenter_streams_refused_total": ("counter", "watch streams refused 429: the client's address or token "
                                           "at limits.max_streams_per_address / max_streams_per_principal"),
    "configcenter_streams_stalled_total": ("counter", "watch streams closed: the client left what was written to "
                                           "it (a catch-up included) unread for limits.drain_timeout"),
    "configcenter_client_disconnects_total": ("counter", "requests whose client hung up before the answer was "
                                              "written (a normal event, logged at info)"),
    "configcenter_admission_refused_total": ("counter", "requests refused 429 because their admission lane "
                                             "(label lane: write or read) had no free worker or queue place"),
    "configcenter_read_worker_restarts_total": ("counter", "read worker processes replaced: died, crashed, ran "
                                                "past limits.read_job_timeout or past limits.read_worker_max_rss"),
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
_UNSCOPED = frozenset({"configcenter_admission_refused_total"})  # labelled, but not by namespace
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """Counters and gauges by name, one histogram; ``render()`` gives the Prometheus text format."""

    def __init__(self, *, _nested: bool = False) -> None:
        self.values: dict[str, float] = defaultdict(float)
        self._bucket_counts = [0] * (len(_BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0
        self.series: dict[str, tuple[str, dict[str, float]]] = {}  # labelled gauges: name -> (label, {value: n})
        # the ack histogram is a second Metrics whose own histogram state is used (nested: no further one)
        self._ack: Metrics = self if _nested else Metrics(_nested=True)
        self._registry: CollectorRegistry | None = None

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
        """Replace the whole family ``name{label="..."}``."""
        self.series[name] = (label, dict(values))

    def observe_ack(self, seconds: float) -> None:
        self._ack.observe_propagation(seconds)

    def render(self, visible: Callable[[str], bool] | None = None) -> bytes:
        """The exposition text of these metrics and the process's (``generate_latest``).

        ``visible``: which label values of the labelled families (all named by namespace) to include,
        for a caller whose token is scoped (``api.metrics``); None: all.
        """
        if visible is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Families(self, visible))
            ProcessCollector(registry=registry)
            return generate_latest(registry)
        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Families(self))
            ProcessCollector(registry=self._registry)
        return generate_latest(self._registry)

    def families(self, visible: Callable[[str], bool] | None = None) -> Iterator[Metric]:
        for name, (kind, text) in _HELP.items():
            if kind == "histogram":
                source = self._ack if name == "configcenter_rollout_ack_seconds" else self
                yield source._histogram(name, text)
            elif name in self.series:
                label, values = self.series[name]
                family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, text, labels=[label])
                for key, value in sorted(values.items()):
                    if visible is None or visible(key) or name in _UNSCOPED:
                        family.add_metric([key], value)
                yield family
            elif kind == "counter":
                yield CounterMetricFamily(name, text, value=self.values.get(name, 0))
            else:
                yield GaugeMetricFamily(name, text, value=self.values.get(name, 0))

    def _histogram(self, name: str, text: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip((*_BUCKETS, float("inf")), self._bucket_counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return HistogramMetricFamily(name, text, buckets=buckets, sum_value=self._sum)


class _Families(Collector):
    """What a scrape reads from a ``Metrics`` (registered in its own registry)."""

    def __init__(self, metrics: Metrics, visible: Callable[[str], bool] | None = None) -> None:
        self._metrics = metrics
        self._visible = visible

    def collect(self) -> Iterator[Metric]:
        return self._metrics.families(self._visible)
