"""Route evaluation and table swap cost, compared with a baseline in the same run.

* ``route()`` on the payment example table (header rule, 10 % percent rule,
  default) for three typical requests, against the baseline of merely
  lower-casing the request's header names into a dict — the least any
  case-insensitive header router has to do per request.
* Compiling a 50-rule table and publishing it (the double buffer's back side),
  against a plain ``copy.deepcopy`` of the same document.

    python bench/bench_route.py
"""

from __future__ import annotations

import copy
import timeit
from pathlib import Path

from ruamel.yaml import YAML

from configcenter_sdk.routing import compile_table

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "payment-routes.yaml"
REQUESTS = {
    "header rule hits": {"X-Release": "v2-beta", "X-User-Id": "u-1", "Accept": "*/*", "User-Agent": "curl/8"},
    "percent rule": {"X-User-Id": "user-42", "Accept": "*/*", "User-Agent": "curl/8", "Host": "pay"},
    "falls to default": {"Accept": "*/*", "User-Agent": "curl/8", "Host": "pay", "X-Trace": "abc"},
}


def best_ns(stmt: object, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9  # type: ignore[arg-type]


def big_table(rules: int) -> dict[str, object]:
    return {
        "service": "big",
        "rules": [{"id": f"r{i}", "match": {"headers": [{"name": f"x-h{i}", "prefix": f"v{i}"}],
                                              "percent": {"header": "x-user-id", "value": 50}},
                   "route": {"weighted": [{"cluster": "a", "weight": 70}, {"cluster": "b", "weight": 30}],
                             "hash_on": "x-user-id"}} for i in range(rules)],
        "default": {"cluster": "stable"},
    }


def main() -> None:
    doc = YAML(typ="safe").load(EXAMPLE.read_text())["doc"]
    table = compile_table(doc, 1)
    print("route() per call (ns), best of 5; baseline = lower-casing header names into a dict")
    for name, headers in REQUESTS.items():
        route_ns = best_ns(lambda h=headers: table.route(h), 100_000)
        base_ns = best_ns(lambda h=headers: {k.lower(): v for k, v in h.items()}, 100_000)
        decision = table.route(headers)
        print(f"  {name:18s} route {route_ns:7.0f}  baseline {base_ns:6.0f}  ratio {route_ns / base_ns:4.1f}x"
              f"  -> {decision.cluster} ({decision.rule_id})")
    big = big_table(50)
    compile_us = best_ns(lambda: compile_table(big, 2), 200) / 1000
    copy_us = best_ns(lambda: copy.deepcopy(big), 200) / 1000
    print(f"compile 50-rule table {compile_us:8.1f} us  baseline deepcopy {copy_us:8.1f} us  "
          f"ratio {compile_us / copy_us:4.1f}x (publishing is one reference assignment)")


if __name__ == "__main__":
    main()
