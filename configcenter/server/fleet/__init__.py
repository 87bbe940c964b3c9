"""The fleet: SDK instances' reports on etcd leases (capabilities, caps), the registry and rollouts."""

from .canary_guard import CanaryGuard
from .registry import InstanceRegistry, classify, rollout
from .report import MAX_REPORT_BYTES, Capability, Report, capability, instance_id, parse_report

__all__ = ["MAX_REPORT_BYTES", "CanaryGuard", "Capability", "InstanceRegistry", "Report", "capability", "classify",
           "instance_id", "parse_report", "rollout"]
