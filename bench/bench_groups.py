"""Benchmark 6: every country of the GlobalOpinionQA copy x every method x 5 seeds, head mode.

    .venv/bin/python bench/bench_groups.py                      # 130 countries, 7 trained methods, 5 seeds
    .venv/bin/python bench/bench_groups.py --seeds 1 --groups 20  # a quicker look

Loads the real GlobalOpinionQA copy (``--data-path``; default ``../shared/data/goqa/
global_opinions_partial.csv``) with every country as a group, scores every distinct (question,
option) once with the packaged encoder (cached under ``--cache-dir``: the first run pays for it,
later runs do not), trains the global head on the pooled population pairs, then times
:func:`scpo.fitting.fit` — the grid search on 3 validation folds and the refit of every
(country, method, seed), all batched into :func:`scpo.heads.train_heads` calls, not a Python loop
per group. ``--engine both`` (default) times the previous per-job trainer (``bench/_perjob.py``)
and scpo's ``train_heads`` (the grid cells of a stream share one gather) side by side on
``--compare-seeds`` seeds, checks they give the same heads, then runs scpo's on all seeds.
Prints wall times, the number of head trainings and peak memory.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time

import numpy as np

from _common import ROOT, PeakMemory, footer, header, write_json

DEFAULT_GOQA = ROOT.parent / "shared" / "data" / "goqa" / "global_opinions_partial.csv"


def all_countries(path: str) -> list[str]:
    """Every group (country or separate sample) the file's selections name, canonical spelling."""
    from scpo.load.countries import group_map
    from scpo.load.goqa import parse_selections

    csv.field_size_limit(sys.maxsize)
    raw: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            raw.update(parse_selections(rec["selections"], file=path, row=i + 1))
    return sorted(set(group_map(raw).values()))


def main(argv: list[str] | None = None) -> dict:
    from scpo.config import METHODS, RunConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default=str(DEFAULT_GOQA), help="GlobalOpinionQA CSV (Hub schema)")
    ap.add_argument("--seeds", type=int, default=5, help="training seeds (default 5)")
    ap.add_argument("--groups", type=int, default=0, help="first N countries only (default 0 = all)")
    ap.add_argument("--methods", default=",".join(METHODS), help="methods (default: all of them)")
    ap.add_argument("--cache-dir", default="/tmp/scpo_bench_cache", help="feature cache (default /tmp/scpo_bench_cache)")
    ap.add_argument("--val-folds", type=int, default=None, help="override the config's validation folds (default 3)")
    ap.add_argument("--engine", default="both", choices=("both", "scpo", "per-job"),
                    help="scpo.train.train_heads, the previous per-job trainer (bench/_perjob.py) or both (default)")
    ap.add_argument("--compare-seeds", type=int, default=1, help="seeds of the side-by-side comparison (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from scpo.load import load_data

    if args.threads:
        torch.set_num_threads(args.threads)
    import scpo.fitting
    from scpo.experiment import prepare

    header("benchmark 6: many groups (GlobalOpinionQA, every country x every method x seeds, head mode)")
    countries = all_countries(args.data_path)
    cfg = RunConfig().replace(dataset="goqa", data_path=args.data_path, groups=countries, cache_dir=args.cache_dir)
    data = load_data(cfg.data)
    present = sorted(set(data.pairs["group"]))
    groups = present[: args.groups] if args.groups else present
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    over = dict(groups=groups, methods=methods, seeds=list(range(args.seeds)))
    if args.val_folds:
        over["val_folds"] = args.val_folds
    cfg = cfg.replace(**over)
    tc = cfg.train
    print(f"   {len(countries)} groups named in the file, {len(present)} with pairs; using {len(groups)}; "
          f"{len(data.pairs):,} pairs")
    t = time.perf_counter()
    exp = prepare(cfg, progress=False)
    t_prep = time.perf_counter() - t
    st = exp.score_stats
    print(f"   prepare (load, score {st['computed']:,} texts, {st['cached']:,} cached, global head): {t_prep:.1f} s")
    trained = [m for m in methods if m != "global"]
    n_cells = len(tc.learning_rates) * len(tc.pulls)

    def jobs_of(seeds: int) -> tuple[int, int]:
        grid = len(groups) * len(trained) * seeds * tc.val_folds * n_cells if tc.val_folds > 1 else 0
        return grid, len(groups) * len(trained) * seeds

    def fit(engine: str, seeds: int) -> tuple[float, dict, float]:
        pl = scpo.fitting
        saved = pl.train_heads, pl.val_accuracy
        if engine == "per-job":
            from _perjob import train_heads_per_job, val_accuracy_per_job

            pl.train_heads, pl.val_accuracy = train_heads_per_job, val_accuracy_per_job
        try:
            with PeakMemory() as pm:
                t = time.perf_counter()
                thetas = pl.fit(exp, methods, list(range(seeds)), progress=False).models
                dt = time.perf_counter() - t
        finally:
            pl.train_heads, pl.val_accuracy = saved
        g, r = jobs_of(seeds)
        print(f"   fit_heads [{engine:>6}] {seeds} seed(s): {g:,} grid jobs ({tc.val_folds} folds x {n_cells} cells x "
              f"steps {sorted(set(tc.steps))}) + {r:,} refits: {dt:7.1f} s ({dt / 60:.1f} min), "
              f"{(g + r) / dt:,.0f} head trainings/s, peak RSS {pm.peak_gib:.2f} GiB")
        return dt, thetas, pm.peak_gib

    res = {"groups": len(groups), "methods": methods, "seeds": args.seeds, "pairs": len(exp.group),
           "texts_scored": st["computed"], "texts_cached": st["cached"], "prepare_s": t_prep}
    engines = ["per-job", "scpo"] if args.engine == "both" else [args.engine]
    if args.engine == "both":
        # like for like on --compare-seeds seeds, then scpo's trainer on the whole workload
        k = min(args.compare_seeds, args.seeds)
        t_a, th_a, _ = fit("per-job", k)
        t_b, th_b, _ = fit("scpo", k)
        diff = max(float(np.max(np.abs(th_a[key] - th_b[key]))) for key in th_a)
        print(f"   same workload: scpo/per-job speed-up {t_a / t_b:.1f}x; largest parameter difference {diff:.1e}")
        res.update(compare_seeds=k, per_job_fit_s=t_a, scpo_fit_s=t_b, speedup=t_a / t_b, max_param_diff=diff)
        if args.seeds > k:
            t_full, _, peak = fit("scpo", args.seeds)
            print(f"   {args.seeds} seeds: scpo's train_heads {t_full:.1f} s measured; the per-job trainer about "
                  f"{t_a * args.seeds / k:.0f} s ({t_a * args.seeds / k / 60:.0f} min, {k} seed(s) x {args.seeds / k:g})")
            res.update(scpo_full_fit_s=t_full, per_job_full_fit_estimate_s=t_a * args.seeds / k, peak_rss_gib=peak)
    else:
        t_full, _, peak = fit(engines[0], args.seeds)
        res.update(fit_heads_s=t_full, engine=engines[0], peak_rss_gib=peak)
    g, r = jobs_of(args.seeds)
    res.update(grid_jobs=g, refit_jobs=r)
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
