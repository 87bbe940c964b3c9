"""The fleet's view of a canary: which instances are on its track, and which one rejected it.

Membership is :func:`configcenter_sdk.canary.is_member` with the instance's id and the labels of its
report: the same function an SDK uses to pick its track (``docs/architecture.md``, "Canary releases"),
so the server's split and the instances' own choice agree.

* :func:`split` (the rollout view of a namespace with an active canary): every row gets its ``track``
  (``canary`` for members, else ``base``) and the summary is counted per track as well.  A member
  that reports the record's revision but not the ``canary`` track (``reported_track``; absent: the
  base, as an SDK that knows no canaries runs) has not taken the candidate: it is ``pending``, not
  ``applied``; a non-member reporting the ``canary`` track likewise.
* :func:`rejection` (abort on reject): the abort message if a *member* of a canary that asked for it
  rejected a revision of that canary (``rejected >= started``: every record since the start carries
  the candidate), else None.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from configcenter.model import Release
from configcenter_sdk.canary import CanaryTarget, is_member, parse_target

__all__ = ["member", "rejection", "split", "target_of"]


def target_of(release: Release) -> CanaryTarget | None:
    """The parsed target of ``release``'s active canary (None without one, or if it does not parse)."""
    if release.canary is None:
        return None
    try:
        return parse_target(release.canary.get("target"))
    except ValueError:
        return None


def member(target: CanaryTarget, instance: Mapping[str, Any]) -> bool:
    labels = instance.get("labels")
    return is_member(target, str(instance.get("id")), labels if isinstance(labels, Mapping) else {})


def split(rows: list[dict[str, Any]], release: Release,
          count: Callable[[Iterable[dict[str, Any]]], dict[str, int]]) -> dict[str, Any]:
    """The ``canary`` and ``base`` parts of ``release.ns``'s rollout body, each with its ``summary``
    (``count``: ``registry.summarize``) and ``complete``; every ``registry.classify`` row gets its
    ``track`` and its status corrected as the module docstring says."""
    canary, target = release.canary, target_of(release)
    if canary is None or target is None:  # no canary (or a record this server cannot read): no split
        return {}
    for row in rows:
        row["track"] = "canary" if member(target, row) else "base"
        if row["status"] == "applied" and row.get("reported_track", "base") != row["track"]:
            row["status"] = "pending" if row.get("mode") == "live" else "fallback"
    parts: dict[str, Any] = {"canary": {"started": canary.get("started"), "target": canary.get("target"),
                                        "abort_on_reject": bool(canary.get("abort_on_reject"))}, "base": {}}
    for track, part in parts.items():
        part["summary"] = summary = count(row for row in rows if row["track"] == track)
        part["complete"] = summary["pending"] == 0 and summary["rejected"] == 0
    return parts


def rejection(instance: Mapping[str, Any], release: Release) -> str | None:
    """Why ``instance``'s report aborts ``release``'s canary, or None (see the module docstring)."""
    canary = release.canary
    if canary is None or not canary.get("abort_on_reject"):
        return None
    namespaces = instance.get("namespaces")
    entry = namespaces.get(release.ns) if isinstance(namespaces, Mapping) else None
    rejected = entry.get("rejected") if isinstance(entry, Mapping) else None
    started = canary.get("started")
    if not isinstance(rejected, int) or not isinstance(started, int) or rejected < started:
        return None
    target = target_of(release)
    if target is None or not member(target, instance):
        return None
    reason = " ".join(str(entry.get("reason", "")).split())[:300] if isinstance(entry, Mapping) else ""
    return f"aborted: instance {instance.get('id')} rejected revision {rejected}: {reason}"
