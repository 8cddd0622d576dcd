"""Benchmark 6: every country of the GlobalOpinionQA copy x every method x 5 seeds, head mode.

    .venv/bin/python bench/bench_groups.py                      # 130 countries, 7 trained methods, 5 seeds
    .venv/bin/python bench/bench_groups.py --seeds 1 --groups 20  # a quicker look

Loads the real GlobalOpinionQA copy (``--data-path``; default ``../shared/data/goqa/
global_opinions_partial.csv``) with every country as a group, scores every distinct (question,
option) once with the packaged encoder (cached under ``--cache-dir``: the first run pays for it,
later runs do not), trains the global head on the pooled population pairs, then times
:func:`scpo.fitting.fit` — the choice on 3 validation folds and the refit of every (country,
method, seed), batched, not a Python loop per group — with each head solver on the same
features: ``adam`` (:func:`scpo.heads.train_heads` over the learning-rate x pull x steps grid)
and ``newton`` (:func:`scpo.solver.solve_heads`, every layer solved to convergence over the pull
grid). Prints wall times, the speed ratio, the newton refits' convergence and peak memory.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import time

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
    ap.add_argument("--engine", default="both", choices=("both", "adam", "newton"),
                    help="head solver to time: adam (mini-batch Adam over the grid), newton (solved to convergence) "
                         "or both, one after the other on the same features (default)")
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

    def fit(engine: str, seeds: int) -> tuple[float, dict, float, dict]:
        with PeakMemory() as pm:
            t = time.perf_counter()
            exp_e = dataclasses.replace(exp, cfg=exp.cfg.replace(head_solver=engine))  # same features, same global layer
            out = scpo.fitting.fit(exp_e, methods, list(range(seeds)), progress=False)
            dt = time.perf_counter() - t
        g, r = jobs_of(seeds) if engine == "adam" else newton_jobs(seeds)
        what = (f"{tc.val_folds} folds x {n_cells} cells x steps {sorted(set(tc.steps))}" if engine == "adam"
                else f"{tc.val_folds} folds x {len(tc.head_pulls)} pulls, solved to convergence")
        print(f"   fit [{engine:>6}] {seeds} seed(s): {g:,} grid fits ({what}) + {r:,} refits: {dt:7.1f} s "
              f"({dt / 60:.1f} min), peak RSS {pm.peak_gib:.2f} GiB")
        return dt, out.models, pm.peak_gib, out.grid

    def newton_jobs(seeds: int) -> tuple[int, int]:
        grid = len(groups) * len(trained) * seeds * tc.val_folds * len(tc.head_pulls) if tc.val_folds > 1 else 0
        return grid, len(groups) * len(trained) * seeds

    res = {"groups": len(groups), "methods": methods, "seeds": args.seeds, "pairs": len(exp.group),
           "texts_scored": st["computed"], "texts_cached": st["cached"], "prepare_s": t_prep}
    engines = ["adam", "newton"] if args.engine == "both" else [args.engine]
    for engine in engines:
        t_fit, _, peak, grid = fit(engine, args.seeds)
        res[f"{engine}_fit_s"] = t_fit
        res[f"{engine}_peak_rss_gib"] = peak
        if engine == "newton":
            conv = [c["solver"]["converged"] for per in grid["choices"].values() for m in per.values() for c in m.values()
                    if c["pull"] > 0]
            res["newton_converged_share"] = sum(conv) / max(len(conv), 1)
            res["newton_edge_choices"] = len(grid.get("edge_choices", []))
            print(f"   newton: {res['newton_converged_share']:.1%} of the refits with a pull converged; "
                  f"{res['newton_edge_choices']} choices at an edge of the pull grid")
    if args.engine == "both":
        ratio = res["adam_fit_s"] / res["newton_fit_s"]
        print(f"   same workload, one run: newton is {ratio:.2f}x the speed of adam")
        res["newton_speedup_over_adam"] = ratio
    g, r = jobs_of(args.seeds)
    res.update(grid_jobs=g, refit_jobs=r)
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
