"""Long mode without pytest: ``PYTHONPATH=tests python -m chaos --seeds 1,2,3 --faults 100``.

Prints one summary per seed and writes each full report to ``<workdir>/seed-N/report.json``;
exits 1 if any run found a violation that is not a known bug (``chaos.runner.KNOWN_BUGS``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from chaos.runner import FAULT_KINDS, run_chaos, summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--faults", type=int, default=100, help="faults per seed (default 100)")
    parser.add_argument("--workdir", type=Path, help="where logs, records and reports go (default: a temp dir)")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS),
                        help="comma-separated fault kinds to draw from (default: all)")
    parser.add_argument("--quiet", action="store_true", help="no per-fault progress lines")
    args = parser.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(kinds) - set(FAULT_KINDS):
        parser.error(f"unknown fault kinds: {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="configcenter-chaos-"))
    failed = False
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        report = asyncio.run(run_chaos(seed, args.faults, workdir / f"seed-{seed}", verbose=not args.quiet,
                                     kinds=kinds))
        print(summary(report, examples=3), flush=True)
        failed = failed or bool(report["unexplained"])
    print(f"reports in {workdir}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
