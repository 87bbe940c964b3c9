"""Namespace selectors, shared by the server's hub and the SDK so both filter identically.

A selector is an exact namespace (``payment/routes``) or a prefix ending in
``/`` (``orders/``); no selectors at all means every namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def namespace_matcher(selectors: Iterable[str]) -> Callable[[str], bool]:
    """A predicate that is true for namespaces the selectors subscribe to."""
    selectors = tuple(selectors)
    exact = frozenset(s for s in selectors if not s.endswith("/"))
    prefixes = tuple(s for s in selectors if s.endswith("/"))
    if not exact and not prefixes:
        return lambda ns: True
    return lambda ns: ns in exact or ns.startswith(prefixes)
