"""The head-solver comparison of docs/results.md: one markdown table from finished run directories.

    .venv/bin/python bench/head_solver_table.py adam=runs/goqa-adam newton=runs/goqa-newton
    .venv/bin/python bench/head_solver_table.py --group-set minority_groups adam=runs/syn-adam newton=runs/syn-newton

Each ``LABEL=RUN_DIR`` is a finished ``scpo run`` (same data, splits and seeds, another head solver
or grid). Reads only their ``results.json``: per method the mean test accuracy on ``all`` over the
group set with its 95% CI, the share of the global→oracle gap closed (synthetic data), the share of
training pairs the filter keeps and their mean weight (mean over groups, split seed 0), and the
paired differences SCPO − full and SCPO − global with CI and p, and the run's training time
(``timing_s.train``: the choice on folds and the refits, not the scoring). Nothing is recomputed: the numbers
are the run's own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METHODS = ("global", "full", "scpo", "filter-only", "weight-only")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(lo_hi: list[float]) -> str:
    return f"[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]"


def _diff(t: dict[str, Any]) -> str:
    p = t["p_value"]
    ps = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    return f"{100 * t['diff']:+.1f} [{100 * t['ci95'][0]:+.1f}, {100 * t['ci95'][1]:+.1f}], {ps}"


def rows(label: str, res: dict[str, Any], group_set: str) -> list[str]:
    """The table's rows of one run."""
    summary = res["summary"][group_set]
    tests = res["tests"]["group_sets"]
    groups = list(res["selection"])
    kept = sum(res["selection"][g]["kept_share"] for g in groups) / len(groups)
    weight = sum(res["selection"][g]["mean_weight_kept"] for g in groups) / len(groups)
    out = []
    for m in METHODS:
        if m not in summary:
            continue
        s = summary[m]
        gap = s.get("gap_closed")
        gap_s = "–" if gap is None else f"{100 * gap:.0f}%"
        vs = ""
        if m in ("full", "global") and f"scpo vs {m}" in tests:
            vs = _diff(tests[f"scpo vs {m}"][group_set]["all"])
        elif m in ("filter-only", "weight-only") and f"{m} vs full" in tests:
            vs = f"{m} − full: " + _diff(tests[f"{m} vs full"][group_set]["all"])
        out.append(f"| {label if m == METHODS[0] else ''} | {m} | {_pct(s['all'])} {_ci(s['all_ci95'])} | "
                   f"{_pct(s['pooled'])} | {gap_s} | {s['pairs_used']:.0f} | {vs} |")
    out.append(f"| | *filter keeps* | {100 * kept:.0f}% of training pairs, mean weight {weight:.2f} | | | | |")
    return out


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, one per head solver")
    ap.add_argument("--group-set", default="all_groups", help="all_groups (default), minority_groups, majority_groups")
    args = ap.parse_args(argv)
    lines = ["| solver | method | all [95% CI] | pooled | gap closed | pairs used | SCPO − this (or ablation − full) on `all` |",
             "|---|---|---|---|---|---|---|"]
    for spec in args.runs:
        label, _, run = spec.partition("=")
        if not run:
            ap.error(f"expected LABEL=RUN_DIR, got {spec!r}")
        res = json.loads((Path(run) / "results.json").read_text())
        train = res.get("timing_s", {}).get("train")
        lines += rows(f"{label}" + (f" (training {train:.0f} s)" if train is not None else ""), res, args.group_set)
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
