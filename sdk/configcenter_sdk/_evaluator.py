"""Evaluating a compiled route table's rules against one request's (lower-cased) headers.

A *step* is one rule (its header matchers, its percent condition, its target) and the last
step of a plan is the default route.  First match wins.  Two evaluators give the same answers:

* :func:`generated` emits straight-line Python for a plan: each condition inlined as one
  comparison or method call (``v == 'prod'``, ``v.startswith('v2')``; a regex is one call),
  joined with ``and``, each percent header's bucket computed at most once into a local.
  About 3x as fast as walking the steps (``bench/bench_route.py``).  The table's content
  never becomes source text: header names, values, compiled patterns, hashers and decisions
  are passed in the function's namespace as ``k<i>`` constants, so the source holds only our
  identifiers, operators and integers, and a crafted table cannot inject code.  Compiling the
  source costs about 10 µs per step: plans longer than :data:`MAX_GENERATED_STEPS` are walked.
* :func:`walk` interprets the steps: for long plans and for header shapes past the table's
  memo of generated evaluators (``routing.RouteTable``), so no request can make ``route()``
  compile code without bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from configcenter_sdk._matchers import HeaderMatcher

# (header, limit, hasher): the request is in when the header's stable bucket is below limit
Percent = tuple[str, int, Any]
# a pre-built RouteDecision, or a weighted route's pick(headers)
Target = Any
Step = tuple[tuple[HeaderMatcher, ...], Percent | None, Target]
Evaluator = Callable[[dict[str, str]], Any]
MAX_GENERATED_STEPS = 128
_from_bytes = int.from_bytes
_MISSING = 100  # the bucket of a missing percent header: never below a limit (0..100)


def hasher(seed: str) -> Any:
    return hashlib.blake2b(digest_size=8, key=seed.encode())


def bucket(proto: Any, value: str) -> int:
    """``value``'s stable bucket in 0..99 under the keyed hash ``proto`` (see ``stable_bucket``)."""
    h = proto.copy()
    try:
        h.update(value.encode())
    except UnicodeEncodeError:  # lone surrogates: hash their raw code units instead of failing
        h.update(value.encode("utf-8", "surrogatepass"))
    return _from_bytes(h.digest(), "big") % 100


def _bucket_or_missing(proto: Any, value: str | None) -> int:
    return _MISSING if value is None else bucket(proto, value)


# --------------------------------------------------------------------------- generated code


def generated(steps: Sequence[Step]) -> Evaluator:
    """A function ``evaluate(h) -> decision`` equivalent to ``walk(steps, h)``."""
    namespace: dict[str, Any] = {"bucket_or_missing": _bucket_or_missing}

    def const(value: object) -> str:
        key = f"k{len(namespace)}"
        namespace[key] = value
        return key

    buckets: dict[str, str] = {}  # percent header -> local holding its bucket
    lines: list[str] = []
    for matchers, percent, target in steps:
        tests = [_condition(m, const) for m in matchers]
        if percent is not None:
            name, limit, proto = percent
            local = buckets.setdefault(name, f"b{len(buckets)}")
            tests.append(f"({local} if {local} is not None else ({local} := bucket_or_missing("
                         f"{const(proto)}, get({const(name)})))) < {int(limit)}")
        result = f"{const(target)}(h)" if callable(target) else const(target)
        if not tests:
            lines.append(f"    return {result}")
            break  # an unconditional step: nothing after it is reachable
        lines.append(f"    if {' and '.join(tests)}:\n        return {result}")
    else:
        lines.append("    raise AssertionError('no default step')")
    head = ["def evaluate(h):", "    get = h.get", *(f"    {local} = None" for local in buckets.values())]
    exec(compile("\n".join([*head, *lines]) + "\n", "<route table>", "exec"), namespace)
    evaluate: Evaluator = namespace["evaluate"]
    return evaluate


def _condition(m: HeaderMatcher, const: Callable[[object], str]) -> str:
    """The expression for one matcher: true when it holds (``invert`` included)."""
    read = f"get({const(m.name)})"
    if m.kind == "present":  # holds when the header's presence is what it asks for, inverted or not
        return f"{read} {'is not' if (m.value is True) == m.want else 'is'} None"
    if m.kind == "exact":
        inline = f"v == {const(m.value)}"
    elif m.kind == "prefix":
        inline = f"v.startswith({const(m.value)})"
    elif m.kind == "suffix":
        inline = f"v.endswith({const(m.value)})"
    else:
        inline = f"{const(m.test)}(v)"
    if m.want:  # an absent header fails every non-inverted matcher but ``present``
        return f"((v := {read}) is not None and {inline})"
    return f"((v := {read}) is None or not {inline})"


# --------------------------------------------------------------------------- interpreter


def walk(steps: Sequence[Step], h: Mapping[str, str]) -> Any:
    """The first step whose conditions all hold, evaluated on the steps as data."""
    get = h.get
    buckets: dict[str, int] = {}
    for matchers, percent, target in steps:
        for m in matchers:
            v = get(m.name)
            # the (possibly inverted) raw result must equal ``want``
            if (not (m.on_absent if v is None else m.test(v))) is m.want:
                break
        else:
            if percent is not None:
                name, limit, proto = percent
                found = buckets.get(name)
                if found is None:
                    found = buckets[name] = _bucket_or_missing(proto, get(name))
                if found >= limit:
                    continue
            return target(h) if callable(target) else target
    raise AssertionError("unreachable: the default route is always a candidate")
