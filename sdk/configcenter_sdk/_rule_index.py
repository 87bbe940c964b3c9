"""Which rules of a route table can possibly match a request, from its header names and values.

A rule matches only if *all* its conditions hold, so one condition that needs a header to be
present (any non-inverted ``exact``/``prefix``/``suffix``/``regex``/``present: true`` matcher,
or the ``percent`` header) rules the rule out for every request without that header; an
``exact`` one rules it out unless the header has that value.  Each rule is filed under the
most selective such key (the one fewest rules share; ``exact`` before presence on ties), or
as *unconditional* when it has none (inverted and ``present: false`` matchers hold when the
header is missing).

Rules are bits of an ``int`` (bit i = rule i, the default is the last bit and unconditional),
so a lookup ORs a few masks and walks the set bits in table order: first-match semantics
are kept exactly, and a table of 50 ``x-release: vN`` rules costs one dict lookup per
request header instead of 50 rule evaluations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ._matchers import HeaderMatcher

# a key is (header name, exact value) or (header name, None) for "present"
_Key = tuple[str, str | None]


class _IndexedRule(Protocol):
    @property
    def headers(self) -> tuple[HeaderMatcher, ...]: ...
    @property
    def percent(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class RuleIndex:
    """``keyed``: header name -> (rules needing it present, {value: rules needing that value});
    ``everything``: all bits (then the table is simply walked in order)."""

    unconditional: int
    keyed: dict[str, tuple[int, dict[str, int]]]
    everything: int

    @classmethod
    def build(cls, rules: Sequence[_IndexedRule]) -> RuleIndex:
        """Index ``rules`` (their default route becomes bit ``len(rules)``, unconditional)."""
        options = [_keys(rule) for rule in rules]
        shared = Counter(key for keys in options for key in set(keys))
        unconditional = 1 << len(rules)
        keyed: dict[str, tuple[int, dict[str, int]]] = {}
        for i, keys in enumerate(options):
            if not keys:
                unconditional |= 1 << i
                continue
            name, value = min(keys, key=lambda k: (shared[k], k[1] is None))
            present, exact = keyed.get(name, (0, {}))
            if value is None:
                present |= 1 << i
            else:
                exact[value] = exact.get(value, 0) | 1 << i
            keyed[name] = (present, exact)
        return cls(unconditional, keyed, (1 << (len(rules) + 1)) - 1)


def _keys(rule: _IndexedRule) -> list[_Key]:
    """The keys any one of which a request must satisfy for ``rule`` to match."""
    keys: list[_Key] = []
    for m in rule.headers:
        if m.want and not m.on_absent:  # holds only when the header is there
            keys.append((m.name, m.value if m.kind == "exact" and isinstance(m.value, str) else None))
    if rule.percent is not None:
        keys.append((rule.percent.header, None))
    return keys
