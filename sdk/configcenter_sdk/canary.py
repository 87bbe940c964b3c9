"""Canary membership: which instances take a namespace's candidate instead of its current release.

Decided in the SDK, from the target the change event carries (``docs/architecture.md``, "Canary
releases"): every subscriber gets the same encoded event (fan-out stays one encoding per change), a
resume replays exactly what was missed, and an instance restarted from its disk snapshot recomputes its
track from the same record.  The server uses the same function to split a rollout view.

A target is ``{"labels": {k: v}, "instances": [id, ...], "percent": N}`` (every field optional):

* ``labels`` — every given label must equal the instance's (empty: any instance);
* among those, an instance is a member if its id is listed in ``instances``, or if
  ``stable_bucket(instance id, seed CANARY_SEED) < percent`` — the hash route tables use for
  hash-mod-100, so growing 5 → 25 → 50 % only adds instances, never swaps one out;
* with neither ``instances`` nor ``percent``, every instance matching ``labels`` is a member.

Bounds (hostile input from the API): at most :data:`MAX_LABELS` labels and :data:`MAX_INSTANCES` ids,
short strings; ``percent`` an integer 0..100.  :func:`parse_target` raises ``ValueError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .routing import stable_bucket

__all__ = ["CANARY_SEED", "MAX_INSTANCES", "MAX_LABELS", "CanaryTarget", "is_member", "parse_target"]

CANARY_SEED = "configcenter-canary"  # fixed: membership must not change between versions or processes
MAX_LABELS = 16
MAX_INSTANCES = 1000
_MAX_TEXT = 128


@dataclass(frozen=True, slots=True)
class CanaryTarget:
    labels: tuple[tuple[str, str], ...] = ()
    instances: frozenset[str] = frozenset()
    percent: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.instances:
            out["instances"] = sorted(self.instances)
        if self.percent is not None:
            out["percent"] = self.percent
        return out


def parse_target(raw: object) -> CanaryTarget:
    """A target from its JSON form (see the module docstring); ``ValueError`` naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise ValueError("target must be a mapping of labels, instances and percent")
    unknown = sorted(set(raw) - {"labels", "instances", "percent"})
    if unknown:
        raise ValueError(f"target has unknown fields {unknown}")
    labels = _labels(raw.get("labels", {}))
    instances = _instances(raw.get("instances", []))
    percent = raw.get("percent")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100):
        raise ValueError("target.percent must be an integer from 0 to 100")
    return CanaryTarget(labels, instances, percent)


def is_member(target: CanaryTarget, instance_id: str, labels: Mapping[str, str]) -> bool:
    """Whether the instance ``instance_id`` with ``labels`` takes the candidate."""
    if any(labels.get(key) != value for key, value in target.labels):
        return False
    if not target.instances and target.percent is None:
        return True
    if instance_id in target.instances:
        return True
    return target.percent is not None and stable_bucket(instance_id, CANARY_SEED) < target.percent


def _labels(raw: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, Mapping) or len(raw) > MAX_LABELS:
        raise ValueError(f"target.labels must be a mapping of at most {MAX_LABELS} labels")
    for key, value in raw.items():
        if not _short_text(key) or not _short_text(value):
            raise ValueError(f"target.labels: keys and values must be strings of 1 to {_MAX_TEXT} characters")
    return tuple(sorted(raw.items()))


def _instances(raw: object) -> frozenset[str]:
    if not isinstance(raw, list) or len(raw) > MAX_INSTANCES or not all(_short_text(i) for i in raw):
        raise ValueError(f"target.instances must be a list of at most {MAX_INSTANCES} instance ids "
                         f"(strings of 1 to {_MAX_TEXT} characters)")
    return frozenset(raw)


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT
