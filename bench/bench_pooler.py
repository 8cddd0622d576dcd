"""Head layers: the score layer alone (``--head-solver newton``) vs the pooler + score layer (``--head-layers pooler``).

Runs ``scpo run`` (head mode, methods global, full, scpo) with each setting on the synthetic default
(training seeds 0, 1, 2) and on GlobalOpinionQA (its 7 default countries, split seeds 0, 1, 2), and
prints, per data set and setting: the mean test accuracy "all" of every method (over groups, seeds
and splits, as ``results.json`` ``summary.all_groups`` holds it), SCPO - full, the training wall
time (``timing_s.train``: the fits of every split) and the whole run's wall time. Both settings share
one feature cache directory (their features are keyed apart).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_pooler.py --goqa-path ../shared/data/goqa/global_opinions_partial.csv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (offline Hub, src on the path)

METHODS = ["global", "full", "scpo"]
SETTINGS = {"score": {"head_solver": "newton", "head_layers": "score"},
            "pooler": {"head_solver": "newton", "head_layers": "pooler"}}


def cases(goqa_path: str | None) -> dict[str, dict]:
    out = {"synthetic default": {"seeds": [0, 1, 2]}}
    if goqa_path:
        out["GlobalOpinionQA"] = {"dataset": "goqa", "data_path": goqa_path, "split_seeds": [0, 1, 2], "seeds": [0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goqa-path", default="../shared/data/goqa/global_opinions_partial.csv",
                    help="GlobalOpinionQA CSV (empty: synthetic only)")
    ap.add_argument("--out", default="/tmp/scpo_bench_pooler", help="run directories and feature caches")
    ap.add_argument("--cache-dir", default=None, help="feature cache shared by every run (default OUT/cache)")
    ap.add_argument("--settings", default="score,pooler")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()

    from scpo.config import RunConfig
    from scpo.pipeline import run

    print(f"load average at start: {os.getloadavg()}")
    rows = []
    for name, over in cases(args.goqa_path or None).items():
        slug = name.split()[0].lower()
        for setting in args.settings.split(","):
            cfg = RunConfig().replace(methods=METHODS, cache_dir=args.cache_dir or f"{args.out}/cache",
                                      output_dir=f"{args.out}/{slug}-{setting}", **SETTINGS[setting], **over)
            t = time.time()
            res = run(cfg, progress=False)
            wall = time.time() - t
            summ = res["summary"]["all_groups"]
            row = {"data": name, "setting": setting, **{m: summ[m]["all"] for m in METHODS},
                   "scpo_minus_full": summ["scpo"]["all"] - summ["full"]["all"],
                   "train_s": res["timing_s"]["train"], "wall_s": wall}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print("| data | head layers | global | full | scpo | SCPO − full | train (s) | run (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['data']} | {r['setting']} | {100 * r['global']:.1f} | {100 * r['full']:.1f} | {100 * r['scpo']:.1f} | "
              f"{100 * r['scpo_minus_full']:+.1f} | {r['train_s']:.1f} | {r['wall_s']:.0f} |")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
