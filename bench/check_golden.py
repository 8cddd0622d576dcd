"""Compare the package's outputs with the golden files recorded before the reshape (issue 12's guard).

By default reruns the slow cases that the test suite does not: e (the embedded default, ``scpo run``)
and f (GlobalOpinionQA, the paper's seven countries). Prints every difference and exits 1 if
there is any, 0 if everything is identical. Cases, exclusions and how to re-record:
``tests/golden/record.py``.

    export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python bench/check_golden.py                  # e, f  (about 3-4 min on 2 cores)
    python bench/check_golden.py --all            # a, b, c, d, e, f, g
    python bench/check_golden.py d                # one case, e.g. the grid-rule change of issue 12 item 2
    python bench/check_golden.py --rel-tol 1e-6   # also say which differences are within 1e-6 (relative)
    python bench/check_golden.py --goqa-path PATH # the GlobalOpinionQA csv (default: ../shared/data/goqa/...)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "golden_record", Path(__file__).resolve().parent.parent / "tests" / "golden" / "record.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="*", help="cases to check (default: e f)")
    ap.add_argument("--all", action="store_true", help="every case")
    ap.add_argument("--goqa-path", default=None, help="GlobalOpinionQA csv for case f")
    ap.add_argument("--rel-tol", type=float, default=0.0,
                    help="also report how many differences lie within this relative tolerance (exit status stays exact)")
    ap.add_argument("--cache-dir", default=None,
                    help="feature cache to use (default: a fresh one; a warm one is faster and must give the same results)")
    ap.add_argument("--portable", action="store_true", help="compare as the suite does (record.diff portable=True)")
    ap.add_argument("--work-dir", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args(argv)
    cases = list(golden.CASES) if args.all else (args.cases or ["e", "f"])
    unknown = [c for c in cases if c not in golden.CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(golden.CASES)}")
    with tempfile.TemporaryDirectory(prefix="scpo-golden-check-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        got = golden.produce(cases, work, args.goqa_path, args.cache_dir)
        print(f"ran {', '.join(cases)} in {time.time() - t0:.0f} s")
    bad = 0
    for c in cases:
        lines = golden.diff(golden.load(c), got[c], portable=args.portable)
        if not lines:
            print(f"case {c} ({golden.CASES[c]['file']}): identical")
            continue
        bad += 1
        print(f"case {c} ({golden.CASES[c]['file']}): {len(lines)} difference(s)"
              + (" (first 200)" if len(lines) >= 200 else ""))
        for line in lines:
            print("   ", line)
        if args.rel_tol > 0:
            left = golden.diff(golden.load(c), got[c], rel_tol=args.rel_tol)
            print(f"    ... of which {len(lines) - len(left)} within rel_tol {args.rel_tol:g}; {len(left)} beyond it")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
