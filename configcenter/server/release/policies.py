"""Review policies ("four eyes"): which namespaces need a second principal's approval before a release.

* A policy is set by an admin for a target (a namespace or ``prefix/``): ``{require_review,
  allow_rollback}``.  The policy governing a namespace is the one of the namespace itself, else the
  one of its longest prefix (``schema_rules.governing``, as for schemas), so ``require_review:
  false`` on ``team/sandbox`` exempts it from a ``team/`` policy.
* Under a policy that requires review, a push, delete or rollback becomes a proposal
  (``proposals.py``) that a principal other than its author approves; a rollback goes through
  without review when the policy says ``allow_rollback: true`` (incidents must not wait).
"""

from __future__ import annotations

from typing import Any

from configcenter.errors import InvalidBodyError

from .freezes import text_field

POLICY_KEYS = frozenset({"require_review", "allow_rollback", "message"})


def parse_policy(body: Any) -> tuple[dict[str, Any], str]:
    """``{require_review, allow_rollback?, message?}`` -> (fields, message); ``InvalidBodyError`` (400) when off."""
    if not isinstance(body, dict):
        raise InvalidBodyError("body must be a mapping {require_review, allow_rollback?, message?}")
    unknown = sorted(set(map(str, body)) - POLICY_KEYS)
    if unknown:
        raise InvalidBodyError(f"unknown field(s) in body: {', '.join(unknown)}", fields=unknown)
    if not isinstance(body.get("require_review"), bool):
        raise InvalidBodyError("require_review is required: true (changes need a second principal's approval) "
                               "or false (exempt from a broader policy)", field="require_review")
    if not isinstance(body.get("allow_rollback", False), bool):
        raise InvalidBodyError("allow_rollback must be true or false", field="allow_rollback")
    fields = {"require_review": body["require_review"], "allow_rollback": body.get("allow_rollback", False)}
    return fields, text_field(body, "message", required=False)
