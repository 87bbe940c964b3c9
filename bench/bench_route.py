"""Route evaluation and table swap cost, compared with a baseline in the same run.

* ``route()`` on the payment example table (header rule, 10 % percent rule,
  default) for three typical requests, against the baseline of merely
  lower-casing the request's header names into a dict — the least any
  case-insensitive header router has to do per request.
* Lookups per second on 50-rule tables: header rules only (exact / prefix /
  suffix / present, mixed), percent rules, regex rules (RE2); each for a request
  matched by the last rule (all 50 rules evaluated) and one that falls to the default.
  Then the whole 50-rule plan evaluated by generated code against the baseline of
  walking the same steps (``_evaluator``), on the same lower-cased headers.
* Compiling a 50-rule table and publishing it (the double buffer's back side),
  against a plain ``copy.deepcopy`` of the same document.
* Adversarial regex: ``route()`` with the rule ``^(a+)+$`` and a header
  ``a…a!`` of 1, 10, 50, 100 KB under RE2 (time per KB must stay flat: linear),
  against the baseline of Python's backtracking ``re`` on 16..22 characters of the
  same input (time doubles per character: exponential; 28 characters take ~6 s).

    python bench/bench_route.py
"""

from __future__ import annotations

import copy
import re
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from configcenter_sdk._evaluator import generated, walk
from configcenter_sdk.routing import compile_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "payment-routes.yaml"
REQUESTS = {
    "header rule hits": {"X-Release": "v2-beta", "X-User-Id": "u-1", "Accept": "*/*", "User-Agent": "curl/8"},
    "percent rule": {"X-User-Id": "user-42", "Accept": "*/*", "User-Agent": "curl/8", "Host": "pay"},
    "falls to default": {"Accept": "*/*", "User-Agent": "curl/8", "Host": "pay", "X-Trace": "abc"},
}
EVIL_PATTERN = "^(a+)+$"


def best_ns(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9


def big_table(rules: int) -> dict[str, object]:
    return {
        "service": "big",
        "rules": [{"id": f"r{i}", "match": {"headers": [{"name": f"x-h{i}", "prefix": f"v{i}"}],
                                              "percent": {"header": "x-user-id", "value": 50}},
                   "route": {"weighted": [{"cluster": "a", "weight": 70}, {"cluster": "b", "weight": 30}],
                             "hash_on": "x-user-id"}} for i in range(rules)],
        "default": {"cluster": "stable"},
    }


def _header_matcher(i: int) -> dict[str, object]:
    kind = ("exact", "prefix", "suffix", "present")[i % 4]
    return {"name": f"x-h{i}", kind: True if kind == "present" else f"v{i}"}


def mixed_table(kind: str, rules: int = 50) -> tuple[dict[str, Any], dict[str, str]]:
    """A ``rules``-rule table of one kind and a request that only its last rule matches."""
    def match(i: int) -> dict[str, object]:
        if kind == "header":
            return {"headers": [{"name": "x-env", "exact": "prod"}, _header_matcher(i)]}
        if kind == "percent":  # each rule hashes the user id; only the last one admits everybody
            return {"percent": {"header": "x-user-id", "value": 100 if i == rules - 1 else 0}}
        return {"headers": [{"name": "user-agent", "regex": f"^Mozilla/[0-9]+ .*rule{i}( |$)"}]}

    doc = {"service": "mixed", "rules": [{"id": f"r{i}", "match": match(i), "route": {"cluster": f"c{i}"}}
                                         for i in range(rules)], "default": {"cluster": "stable"}}
    last = rules - 1
    request = {"Accept": "*/*", "X-Env": "prod", "X-User-Id": "user-42", "X-Trace": "abc"}
    request |= {"header": {f"X-H{last}": f"v{last}"}, "percent": {},
                "regex": {"User-Agent": f"Mozilla/5 (X11) rule{last}"}}[kind]
    return doc, request


def bench_example(compile_: Callable[..., Any]) -> None:
    doc = YAML(typ="safe").load(EXAMPLE.read_text())["doc"]
    table = compile_(doc, 1)
    print("route() per call (ns), best of 5; baseline = lower-casing header names into a dict")
    for name, headers in REQUESTS.items():
        route_ns = best_ns(lambda h=headers: table.route(h), 100_000)
        base_ns = best_ns(lambda h=headers: {k.lower(): v for k, v in h.items()}, 100_000)
        decision = table.route(headers)
        print(f"  {name:18s} route {route_ns:7.0f}  baseline {base_ns:6.0f}  ratio {route_ns / base_ns:4.1f}x"
              f"  -> {decision.cluster} ({decision.rule_id})")


def bench_lookups(compile_: Callable[..., Any]) -> None:
    print("lookups/s on 50-rule tables, one core (best of 5); 'last rule' = all 50 rules evaluated")
    for kind in ("header", "percent", "regex"):
        doc, request = mixed_table(kind)
        table = compile_(doc, 1)
        assert table.route(request).rule_id == "r49", table.route(request)
        miss = {k: v for k, v in request.items() if k.lower() not in ("x-env", "x-user-id", "user-agent")}
        hit_ns = best_ns(lambda t=table, r=request: t.route(r), 20_000)
        miss_ns = best_ns(lambda t=table, r=miss: t.route(r), 20_000)
        print(f"  {kind:7s} rules: last rule {1e9 / hit_ns:11,.0f}/s ({hit_ns:6.0f} ns)"
              f"   default {1e9 / miss_ns:11,.0f}/s ({miss_ns:6.0f} ns)")
        bench_evaluators(table, request)


def bench_evaluators(table: Any, request: dict[str, str]) -> None:
    """All 50 rules and the default on the lower-cased headers, no index: generated code vs the
    same steps walked (the evaluator before code generation; still used for long plans)."""
    lowered = {k.lower(): v for k, v in request.items()}
    plan = table._plan
    evaluate = generated(plan)
    assert evaluate(lowered) is walk(plan, lowered)
    gen_ns = best_ns(lambda: evaluate(lowered), 20_000)
    walk_ns = best_ns(lambda: walk(plan, lowered), 20_000)
    print(f"           whole plan, no index: generated {gen_ns:7.0f} ns  walked (baseline) {walk_ns:7.0f} ns"
          f"  ratio {walk_ns / gen_ns:4.1f}x faster")


def bench_compile(compile_: Callable[..., Any]) -> None:
    big = big_table(50)
    compile_us = best_ns(lambda: compile_(big, 2), 200) / 1000
    copy_us = best_ns(lambda: copy.deepcopy(big), 200) / 1000
    print(f"compile 50-rule table {compile_us:8.1f} us  baseline deepcopy {copy_us:8.1f} us  "
          f"ratio {compile_us / copy_us:4.1f}x (publishing is one reference assignment)")


def _best_s(fn: Callable[[], object], repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - started)
    return min(runs)


def bench_adversarial(compile_: Callable[..., Any]) -> None:
    doc = {"service": "evil", "rules": [{"id": "evil", "match": {"headers": [{"name": "x-a", "regex": EVIL_PATTERN}]},
                                         "route": {"cluster": "hit"}}], "default": {"cluster": "stable"}}
    table = compile_(doc, 1, max_regex_program_size=100)
    print(f"adversarial header 'a…a!' against {EVIL_PATTERN} (no match), best of 3")
    seconds = {}
    for kb in (1, 10, 50, 100):
        headers = {"x-a": "a" * (kb * 1000) + "!"}
        assert table.route(headers).cluster == "stable"
        seconds[kb] = _best_s(lambda h=headers: table.route(h))
    for kb, s in seconds.items():
        ratio = (s / kb) / (seconds[10] / 10)
        print(f"  RE2 {kb:4d} KB  route {s * 1e3:8.3f} ms  {s / kb * 1e6:6.2f} us/KB"
              f"  (per-KB cost vs 10 KB {ratio:4.2f}x)")
    evil = re.compile(EVIL_PATTERN)
    times = {}
    for n in (16, 18, 20, 22):
        value = "a" * n + "!"
        times[n] = _best_s(lambda v=value: evil.search(v))
        growth = f"  x{times[n] / times[n - 2]:5.1f} per +2 chars" if n - 2 in times else ""
        print(f"  Python re (baseline) {n:3d} chars  search {times[n] * 1e3:9.3f} ms{growth}")
    print(f"  Python re on 22 characters takes {times[22] / seconds[100]:,.0f}x as long as RE2 on 100 KB; "
          f"at this growth 28 characters would take ~{times[22] * (times[22] / times[20]) ** 3:.0f} s")


def main() -> None:
    bench_example(compile_table)
    bench_lookups(compile_table)
    bench_compile(compile_table)
    bench_adversarial(compile_table)


if __name__ == "__main__":
    main()
