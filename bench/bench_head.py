"""Benchmark 4: head mode, the embedded default's whole run and a run with 10x its data.

    .venv/bin/python bench/bench_head.py                # default (cold cache), default (warm), 10x (warm)
    .venv/bin/python bench/bench_head.py --cases default-cold,10x-cold

Each case is a fresh process running :func:`scpo.pipeline.run` (load -> global model -> score ->
select -> train -> evaluate -> report) and reporting its wall time, split into ``prepare`` (load,
scoring, global head) and the rest (grid search, refit, evaluation, report), and its peak resident
memory (``ru_maxrss``).

* ``default``: ``scpo run`` with no options (synthetic preset ``default``: 9 groups, 1,800
  candidate texts, about 7,000 pairs);
* ``10x``: ten times its preference data (10x the annotators, so 10x the pairs and split keys)
  over the same candidate texts: the data path, selection and head training see 10x, scoring
  does not (with a warm cache it is not run at all).

``-cold`` starts from an empty feature cache (scoring included), ``-warm`` reuses the cache the
earlier cases filled (scoring skipped: a second run with another tau or beta costs this).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import ROOT, footer, header, write_json

CASES = ("default-cold", "default-warm", "10x-warm")


def child(case: str, cache: str, out: str) -> None:
    """Runs in a fresh process: one pipeline run, prints a JSON line with its figures."""
    from scpo.config import RunConfig
    from scpo.experiment import prepare
    from scpo.load.synthetic import PRESETS
    from scpo.pipeline import run

    size = case.split("-")[0]
    PRESETS["bench-10x"] = replace(PRESETS["default"], annotators_minority=10 * PRESETS["default"].annotators_minority,
                                   annotators_majority=10 * PRESETS["default"].annotators_majority)
    preset = "default" if size == "default" else "bench-10x"
    cfg = RunConfig().replace(synthetic_preset=preset, cache_dir=cache, output_dir=out)
    t0 = time.perf_counter()
    exp = prepare(cfg, progress=False)
    t_prep = time.perf_counter() - t0
    res = run(cfg, progress=False, exp=exp)
    wall = time.perf_counter() - t0
    print("BENCH " + json.dumps({
        "case": case, "wall_s": wall, "prepare_s": t_prep, "rest_s": wall - t_prep,
        "pairs": len(exp.group), "texts": len(exp.text_index), "scored": exp.score_stats["computed"],
        "groups": len(exp.groups), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "scpo_all": res["summary"]["all_groups"]["scpo"]["all"], "full_all": res["summary"]["all_groups"]["full"]["all"],
    }))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases (default {','.join(CASES)})")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.cache, args.out)
        return []

    header("benchmark 4: head mode, the embedded default and 10x its data")
    work = Path(tempfile.mkdtemp(prefix="scpo-bench-head-"))
    cache = work / "cache"
    results = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            if case.endswith("-cold"):
                shutil.rmtree(cache, ignore_errors=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, "--cache", str(cache),
                   "--out", str(work / case)]
            p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            line = next((x for x in p.stdout.splitlines() if x.startswith("BENCH ")), None)
            if p.returncode != 0 or line is None:
                print(f"   {case}: failed (exit {p.returncode})\n{p.stderr[-3000:]}")
                continue
            r = json.loads(line[6:])
            results.append(r)
            print(f"   {case:<13} {r['groups']} groups, {r['pairs']:>6,} pairs, {r['texts']:,} texts "
                  f"({r['scored']:,} scored): wall {r['wall_s']:6.1f} s (prepare {r['prepare_s']:5.1f} s, "
                  f"grid+refit+evaluate+report {r['rest_s']:5.1f} s), peak RSS {r['peak_rss_gib']:.2f} GiB; "
                  f"accuracy scpo {100 * r['scpo_all']:.1f} / full {100 * r['full_all']:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    by = {r["case"]: r for r in results}
    if "default-warm" in by and "10x-warm" in by:
        a, b = by["default-warm"], by["10x-warm"]
        print(f"   10x data (warm cache): {b['pairs'] / a['pairs']:.1f}x pairs -> {b['wall_s'] / a['wall_s']:.2f}x wall, "
              f"{b['peak_rss_gib'] / a['peak_rss_gib']:.2f}x peak memory")
    footer()
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
