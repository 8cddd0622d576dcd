"""Benchmark: head training solved to convergence (:mod:`scpo.solver`) against today's mini-batch Adam.

    .venv/bin/python bench/bench_solver.py quality                 # tiny preset + GOQA's 7 paper countries
    .venv/bin/python bench/bench_solver.py speed --groups 20       # bench_groups' workload, first 20 countries
    .venv/bin/python bench/bench_solver.py speed --embedded        # the embedded default (9 groups x 3 methods x 1 seed)

``quality``: the global score layer as :func:`scpo.experiment.prepare` trains it (mini-batch Adam,
``train_heads``), against :func:`scpo.solver.solve_heads` with the pull chosen by 3-fold
cross-validation over the global pairs' split keys (validation log-loss, the half-decade grid
``FINE_PULLS``), then
refit on all of them, and against scikit-learn's ``LogisticRegression`` on the same standardised
features with the same folds and grid (C = 1 / (4 n lam), mirrored pairs): train loss and accuracy
on the global pairs, test accuracy on every group's test pairs.

``speed``: the workload of ``bench/bench_groups.py`` (every GOQA country x 7 trained methods x
seeds, 3 validation folds of each group's training split keys, the solver's pull grid (``--pulls``), then one
refit per (group, method, seed) at the chosen pull), solved with the solver: wall time, problems,
distinct problems, how often the chosen pull sits at an edge of the grid. Jobs are built as
:func:`scpo.fitting.fit` builds them (same pairs, weights, random subsets, anchors).
"""

from __future__ import annotations

import argparse
import time
import zlib
from collections import Counter

import numpy as np

from _common import ROOT, footer, header, write_json

DEFAULT_GOQA = ROOT.parent / "shared" / "data" / "goqa" / "global_opinions_partial.csv"
PAPER_COUNTRIES = ["Chile", "Mexico", "South Africa", "Australia", "Canada", "New Zealand", "Israel"]


def _stream(*parts) -> int:
    """The seed scpo.fitting.fit derives for a job (crc32 of the joined parts)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def prepare_capturing_global(cfg):
    """``prepare(cfg)`` and the global layer's training differences (captured from its ``train_heads`` call)."""
    import scpo.experiment as pl

    seen = {}
    original = pl.train_heads

    def spy(diffs, jobs, steps, batch_size, **kw):
        seen["diffs"] = diffs.clone()
        return original(diffs, jobs, steps, batch_size, **kw)

    pl.train_heads = spy
    try:
        exp = pl.prepare(cfg, progress=False)
    finally:
        pl.train_heads = original
    return exp, seen.get("diffs")


def global_split_keys(exp) -> np.ndarray:
    """Split key of every global-layer training pair, in the order ``prepare`` gave them to ``train_heads``."""
    from scpo.load import column_strings, pair_table, split_data

    _, glob_pairs, _ = split_data(exp.cfg, exp.data)
    return column_strings(pair_table(glob_pairs.pairs).column("split_key"), glob_pairs.rows)


def cv_folds(keys: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    from scpo.load import kfold_keys

    return [np.flatnonzero(np.isin(keys, f)) for f in kfold_keys(sorted(set(keys)), k, seed=seed)]


def solver_global(gd, keys, seed, pulls, folds=3):
    """The global layer by the solver: pull by k-fold CV over split keys (log-loss), then refit."""
    from scpo.solver import HeadProblem, choose_pull, feature_scale, solve_heads, validation_metrics

    n = len(gd)
    scale = feature_scale(gd)
    val = cv_folds(keys, folds, seed)
    probs = [HeadProblem(np.setdiff1d(np.arange(n), v), np.ones(n - len(v))) for v in val]
    t = time.perf_counter()
    sol = solve_heads(gd, probs, pulls, scale=scale)
    _, nll = validation_metrics(gd, val, sol.theta)
    choice = choose_pull(nll, pulls)
    final = solve_heads(gd, [HeadProblem(np.arange(n), np.ones(n))], [choice.pull], scale=scale)
    return final.theta[0, 0], choice, time.perf_counter() - t, final, scale, val


def sklearn_global(gd, scale, val, pulls):
    """scikit-learn's LogisticRegression, same folds and grid (C = 1/(4 n lam)), mirrored pairs."""
    from sklearn.linear_model import LogisticRegression

    xs = gd.astype(np.float64) / scale
    n = len(xs)

    def fit(rows, lam):
        xr = xs[rows]
        X = np.concatenate([xr, -xr])
        y = np.concatenate([np.ones(len(xr)), np.zeros(len(xr))])
        kw = dict(C=1.0 / (4 * len(xr) * lam)) if lam > 0 else dict(penalty=None)
        lr = LogisticRegression(fit_intercept=False, solver="newton-cholesky", tol=1e-10, max_iter=500, **kw)
        return lr.fit(X, y).coef_[0]

    t = time.perf_counter()
    nll = np.zeros((len(val), len(pulls)))
    for fi, v in enumerate(val):
        rows = np.setdiff1d(np.arange(n), v)
        for li, lam in enumerate(pulls):
            nll[fi, li] = np.logaddexp(0, -(xs[v] @ fit(rows, lam))).mean()
    best = int(np.argmin(nll.mean(0)))
    theta = fit(np.arange(n), pulls[best]) / scale
    return theta, float(pulls[best]), time.perf_counter() - t


def quality(args) -> dict:
    from scpo.config import RunConfig
    from scpo.solver import FINE_PULLS

    pulls = list(FINE_PULLS)  # the half-decade grid: the global layer is one problem, cheap either way
    out = {}
    setups = {
        "tiny": RunConfig().replace(synthetic_preset="tiny", cache_dir=args.cache_dir, output_dir="/tmp/scpo_bench_solver"),
        "goqa-7": RunConfig().replace(dataset="goqa", data_path=args.data_path, groups=PAPER_COUNTRIES,
                                      cache_dir=args.cache_dir, output_dir="/tmp/scpo_bench_solver"),
    }
    for name, cfg in setups.items():
        exp, gd = prepare_capturing_global(cfg)
        keys = global_split_keys(exp)
        assert len(keys) == len(gd)
        x64 = gd.double().numpy()
        test = exp.diffs()[np.flatnonzero(exp.split == "test")].double().numpy()

        def figures(theta, x64=x64, test=test):
            m = x64 @ theta
            return {"train_loss": float(np.logaddexp(0, -m).mean()), "train_accuracy": float((m > 0).mean()),
                    "test_accuracy": float(((test @ theta) > 0).mean())}

        w_adam = exp.rm.head_params()[0].double().numpy()
        th, choice, t_solver, final, scale, val = solver_global(gd, keys, cfg.data.split_seed, pulls)
        rows = {"adam (prepare's train_heads)": figures(w_adam), f"solver (lam={choice.pull:.3g} by CV)": figures(th)}
        lam_sk, t_sk = float("nan"), 0.0
        if not args.skip_sklearn:
            th_sk, lam_sk, t_sk = sklearn_global(gd.numpy(), scale, val, pulls)
            rows[f"sklearn LogisticRegression (lam={lam_sk:.3g} by CV)"] = figures(th_sk)
        print(f"\n   {name}: global layer on {len(gd):,} pairs ({len(set(keys))} split keys), "
              f"test = {len(test):,} group test pairs")
        print(f"   {'':52s} {'train loss':>10s} {'train acc':>9s} {'test acc':>9s}")
        for k, v in rows.items():
            print(f"   {k:52s} {v['train_loss']:10.4f} {100 * v['train_accuracy']:8.1f}% {100 * v['test_accuracy']:8.1f}%")
        print(f"   solver: CV + refit {t_solver:.2f} s, chosen pull at grid edge: {choice.edge}, refit converged "
              f"{bool(final.converged[0, 0])} in {int(final.iterations[0, 0])} iterations; sklearn CV + refit {t_sk:.1f} s")
        from scpo.solver import HeadProblem, choose_pull, solve_heads, validation_metrics

        path = solve_heads(gd, [HeadProblem(np.arange(len(gd)), np.ones(len(gd)))], pulls, scale=scale)
        m_tr, m_te = x64 @ path.theta[0].T, test @ path.theta[0].T
        fold_sol = solve_heads(gd, [HeadProblem(np.setdiff1d(np.arange(len(gd)), v), np.ones(len(gd) - len(v)))
                                    for v in val], pulls, scale=scale)
        cv_acc, cv_nll = validation_metrics(gd, val, fold_sol.theta)
        by_acc = choose_pull(cv_acc, pulls, criterion="accuracy")
        print("   the refit along the whole grid (pull: CV log-loss / CV accuracy / train acc / test acc):")
        for li, lam in enumerate(pulls):
            print(f"     {lam:9.3g}: {np.nanmean(cv_nll[:, li]):.4f} / {100 * np.nanmean(cv_acc[:, li]):5.1f}% / "
                  f"{100 * (m_tr[:, li] > 0).mean():5.1f}% / {100 * (m_te[:, li] > 0).mean():5.1f}%")
        print(f"   CV by accuracy would choose {by_acc.pull:.3g} (edge {by_acc.edge})")
        out[name] = {"path_test_accuracy": (m_te > 0).mean(0).tolist(), "cv_accuracy_choice": by_acc.pull,
                     "pairs": len(gd), "rows": rows, "solver_pull": choice.pull, "solver_edge": choice.edge,
                     "sklearn_pull": lam_sk, "solver_s": t_solver, "sklearn_s": t_sk}
    return out


def group_problems(exp, methods, seeds, folds, anchor):
    """fit_heads' jobs as solver problems: ``(fold problems, their validation rows, keys, refit problems, keys)``."""
    from scpo.load import kfold_keys
    from scpo.selection import method_pairs
    from scpo.solver import HeadProblem

    cfg = exp.cfg
    zeros = np.zeros_like(anchor)

    def problem(g, m, seed, rows, fold):
        rng = np.random.default_rng(_stream("subset", g, seed, fold))
        idx, wts = method_pairs(m, exp.delta[rows], cfg.select.tau, cfg.select.beta, rng)
        return HeadProblem(rows[idx], np.asarray(wts, dtype=np.float64), zeros if m == "scratch" else anchor)

    probs, vals, keys, refit, rkeys = [], [], [], [], []
    for g in exp.groups:
        train_rows = np.flatnonzero((exp.group == g) & (exp.split == "train"))
        train_keys = exp.split_key[train_rows]
        for fi, fold in enumerate(kfold_keys(sorted(set(train_keys)), folds, seed=cfg.data.split_seed)):
            in_fold = np.isin(train_keys, fold)
            for m in methods:
                for seed in seeds:
                    probs.append(problem(g, m, seed, train_rows[~in_fold], fi))
                    vals.append(train_rows[in_fold])
                    keys.append((g, m, seed))
        for m in methods:
            for seed in seeds:
                refit.append(problem(g, m, seed, train_rows, "final"))
                rkeys.append((g, m, seed))
    return probs, vals, keys, refit, rkeys


def speed(args) -> dict:
    import torch

    from scpo.config import METHODS, RunConfig
    from scpo.experiment import prepare
    from scpo.solver import DEFAULT_PULLS, FINE_PULLS, choose_pull, feature_scale, solve_heads, validation_metrics

    torch.set_num_threads(args.threads)
    pulls = list(FINE_PULLS if args.pulls == "half-decade" else DEFAULT_PULLS)
    if args.embedded:
        cfg = RunConfig().replace(cache_dir=args.cache_dir, output_dir="/tmp/scpo_bench_solver")
        methods, seeds = ["full", "scpo"], [0]
    else:
        from bench_groups import all_countries
        from scpo.load import load_data

        countries = all_countries(args.data_path)
        cfg = RunConfig().replace(dataset="goqa", data_path=args.data_path, groups=countries, cache_dir=args.cache_dir)
        present = sorted(set(load_data(cfg.data).pairs["group"]))
        groups = present[: args.groups] if args.groups else present
        cfg = cfg.replace(groups=groups)
        methods, seeds = [m for m in METHODS if m != "global"], list(range(args.seeds))
    t = time.perf_counter()
    exp = prepare(cfg, progress=False)
    t_prep = time.perf_counter() - t
    header(f"solver speed: {len(exp.groups)} groups x {len(methods)} trained methods x {len(seeds)} seeds, "
           f"{cfg.train.val_folds} folds, {len(pulls)} pulls (prepare {t_prep:.1f} s)")
    anchor = exp.rm.head_params()[0].double().numpy()
    diffs = exp.diffs()
    t0, c0 = time.perf_counter(), time.process_time()
    probs, vals, keys, refit, rkeys = group_problems(exp, methods, seeds, cfg.train.val_folds, anchor)
    t_build = time.perf_counter() - t0
    used = np.unique(np.concatenate([p.rows for p in probs + refit]))
    scale = feature_scale(diffs, used)
    t = time.perf_counter()
    sol = solve_heads(diffs, probs, pulls, scale=scale)
    t_cv = time.perf_counter() - t
    t = time.perf_counter()
    acc, nll = validation_metrics(diffs, vals, sol.theta)
    t_val = time.perf_counter() - t
    per_job: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        per_job.setdefault(k, []).append(i)
    choice = {k: choose_pull(nll[ix], pulls) for k, ix in per_job.items()}
    t = time.perf_counter()
    by_pull: dict[float, list[int]] = {}
    for i, k in enumerate(rkeys):
        by_pull.setdefault(choice[k].pull, []).append(i)
    refit_iters, refit_conv = [], []
    for lam, ix in sorted(by_pull.items()):
        r = solve_heads(diffs, [refit[i] for i in ix], [lam], scale=scale)
        refit_iters += r.iterations[:, 0].tolist()
        refit_conv += r.converged[:, 0].tolist()
    t_refit = time.perf_counter() - t
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    edges = Counter(c.edge for c in choice.values())
    chosen = Counter(c.pull for c in choice.values())
    positive = np.array([p > 0 for p in sol.pulls])
    conv_pos = float(sol.converged[:, positive].mean())
    sep0 = float((~sol.converged[:, ~positive]).mean()) if (~positive).any() else float("nan")
    print(f"   fold problems {len(probs):,} ({sol.distinct_problems:,} distinct) x {len(pulls)} pulls: {t_cv:.1f} s; "
          f"validation metrics {t_val:.2f} s; refits {len(refit):,} at the chosen pull: {t_refit:.1f} s; "
          f"building problems {t_build:.1f} s")
    print(f"   total {total:.1f} s wall ({total / 60:.2f} min), {cpu:.1f} s CPU, with --threads {args.threads}; "
          f"{len(exp.group):,} group pairs")
    print(f"   converged: {100 * conv_pos:.1f}% of (problem, pull > 0); pull 0 not converged (separable) "
          f"{100 * sep0:.1f}%; refits converged {100 * np.mean(refit_conv):.1f}%, "
          f"mean Newton iterations per (problem, pull) {sol.iterations.mean():.1f}, refit {np.mean(refit_iters):.1f}")
    print(f"   chosen pull at an edge of the grid: {dict(edges)} of {len(choice)} (group, method, seed)")
    print(f"   chosen pulls: {dict(sorted(chosen.items()))}")
    by_method = {m: dict(Counter(c.edge for k, c in choice.items() if k[1] == m)) for m in methods}
    print(f"   edges by method: {by_method}")
    footer()
    return {"groups": len(exp.groups), "methods": methods, "seeds": seeds, "pulls": pulls,
            "fold_problems": len(probs), "distinct": sol.distinct_problems, "refits": len(refit),
            "cv_s": t_cv, "val_s": t_val, "refit_s": t_refit, "total_s": total, "cpu_s": cpu, "pairs": len(exp.group), "edges": dict(edges), "edges_by_method": by_method,
            "chosen": {str(k): v for k, v in chosen.items()}, "converged_positive_pull": conv_pos,
            "pull0_not_converged": sep0, "threads": args.threads}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=("quality", "speed"))
    ap.add_argument("--data-path", default=str(DEFAULT_GOQA), help="GlobalOpinionQA CSV (Hub schema)")
    ap.add_argument("--cache-dir", default="/tmp/scpo_bench_cache", help="feature cache (default /tmp/scpo_bench_cache)")
    ap.add_argument("--groups", type=int, default=0, help="speed: first N countries only (default 0 = all)")
    ap.add_argument("--seeds", type=int, default=5, help="speed: training seeds (default 5)")
    ap.add_argument("--embedded", action="store_true", help="speed: the embedded default (scpo run) instead of GOQA")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--skip-sklearn", action="store_true", help="quality: leave scikit-learn's fits out (minutes)")
    ap.add_argument("--pulls", default="decade", choices=("decade", "half-decade"),
                    help="speed: scpo.solver.DEFAULT_PULLS (1e2 .. 1e-4 in decades + 0, 8 values, default) or "
                         "FINE_PULLS (half decades + 0, 14 values)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    res = quality(args) if args.part == "quality" else speed(args)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
