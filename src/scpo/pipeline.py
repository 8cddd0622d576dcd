"""The main job, ``scpo run``: load -> global model -> score -> select -> train -> evaluate -> report.

Read top to bottom: :func:`run` calls one function per step, each in the module named after it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import PACKAGED_MODEL, RunConfig
from .errors import InputError
from .evaluate import SUBSETS, accuracy, cluster_bootstrap_ci, mean_std, subset_masks
from .load import PreferenceData, add_split_column, assign_splits, check_pairs, kfold_keys, load_data
from .model import RewardModel, load_reward_model
from .score import FeatureCache, encode_features
from .select import preference_probability, select_pairs
from .train import HeadJob, grid_cells, method_pairs, train_heads, val_accuracy

log = logging.getLogger("scpo")

__all__ = ["Experiment", "prepare", "run"]


@dataclass
class Experiment:
    """Everything computed before training: the split data, the global model, features, margins."""

    cfg: RunConfig
    data: PreferenceData
    groups: list[str]
    group: np.ndarray
    split: np.ndarray
    split_key: np.ndarray
    chosen_row: np.ndarray
    rejected_row: np.ndarray
    contested: np.ndarray | None
    oracle_margin: np.ndarray | None
    prompts: list[str]
    responses: list[str]
    features: np.ndarray
    rm: RewardModel
    global_info: dict[str, Any]
    delta: np.ndarray
    """Global model's margin of every pair."""
    score_stats: dict[str, Any] = field(default_factory=dict)
    global_idx: np.ndarray | None = None
    """Rows of the global model's own training pairs (offline global model)."""

    def diffs(self) -> torch.Tensor:
        return torch.from_numpy(self.features[self.chosen_row] - self.features[self.rejected_row])


def _resolve_groups(data: PreferenceData) -> list[str]:
    """The groups to train: those the loader resolved from ``--groups``, else its defaults."""
    present = set(data.pairs["group"])
    groups = [g for g in (list(data.group_matches) or list(data.default_groups)) if g in present]
    if not groups:
        raise InputError(f"data set {data.name!r}: none of the requested groups has pairs", field="groups")
    return groups


def split_data(cfg: RunConfig, data: PreferenceData):
    """One partition of split keys, shared by every group and by the offline global model.

    Returns ``(pairs with a split column, the global model's training pairs or None, global_source)``.
    """
    global_source = cfg.data.global_source
    if global_source == "auto":
        if cfg.model.global_model != PACKAGED_MODEL:
            global_source = "none"
        else:
            global_source = "pooled" if data.global_pairs is not None else "holdout"
    if global_source == "pooled" and data.global_pairs is None:
        raise InputError(f"--global-source pooled: data set {data.name!r} has no population pairs", field="global_source")
    if cfg.model.global_model == PACKAGED_MODEL and global_source == "none":
        raise InputError("the packaged global model needs training data: --global-source holdout or pooled", field="global_source")
    test_fraction = cfg.data.test_fraction if cfg.data.test_fraction is not None else data.default_test_fraction
    keys = set(data.pairs["split_key"])
    if global_source == "pooled":
        keys |= set(data.global_pairs["split_key"])
    assignment = assign_splits(
        sorted(keys),
        seed=cfg.data.split_seed,
        test_fraction=test_fraction,
        global_fraction=cfg.data.global_fraction if global_source == "holdout" else 0.0,
    )
    pairs = add_split_column(data.pairs, assignment)
    glob_pairs = None
    if global_source == "holdout":
        split = np.asarray(pairs["split"])
        glob_pairs = pairs.select(np.flatnonzero(split == "global"))  # every group, population mix
    elif global_source == "pooled":
        gp = add_split_column(data.global_pairs, assignment)
        glob_pairs = gp.select(np.flatnonzero(np.asarray(gp["split"]) == "train"))
    return pairs, glob_pairs, global_source


def prepare(cfg: RunConfig, progress: bool = True, rm: RewardModel | None = None) -> Experiment:
    """Steps 1-4: load and split the data, get the global model, score every text, compute margins."""
    # 1. load
    data = load_data(cfg.data)
    if len(data.pairs) == 0:
        raise InputError(f"data set {data.name!r} has no pairs")
    check_pairs(data.pairs, data.name)
    groups = _resolve_groups(data)
    pairs, glob_pairs, global_source = split_data(cfg, data)
    in_groups = np.isin(np.asarray(pairs["group"]), groups)
    split = np.asarray(pairs["split"])
    keep_rows = np.flatnonzero(in_groups & (split != "global"))
    pairs = pairs.select(keep_rows)

    # texts: every distinct (prompt, response) of the group pairs and the global pairs
    index: dict[tuple[str, str], int] = {}
    prompts: list[str] = []
    responses: list[str] = []

    def rows_of(ds, col: str) -> np.ndarray:
        out = np.empty(len(ds), dtype=np.int64)
        for i, (p, r) in enumerate(zip(ds["prompt"], ds[col])):
            k = (p, r)
            j = index.get(k)
            if j is None:
                j = index[k] = len(prompts)
                prompts.append(p)
                responses.append(r)
            out[i] = j
        return out

    chosen_row, rejected_row = rows_of(pairs, "chosen"), rows_of(pairs, "rejected")
    g_chosen = g_rejected = None
    if glob_pairs is not None:
        g_chosen, g_rejected = rows_of(glob_pairs, "chosen"), rows_of(glob_pairs, "rejected")

    # 2. the global model
    if rm is None:
        rm = load_reward_model(cfg.model)
    # 3. score (features, cached)
    cache = FeatureCache(cfg.model.cache_dir, rm.feature_key())
    feats, stats = encode_features(rm, prompts, responses, batch_size=cfg.model.score_batch_size, cache=cache, progress=progress)
    stats = dict(stats)
    stats["corrupt_cache_shards"] = list(cache.corrupt_shards)
    global_info: dict[str, Any] = {"model": rm.name, "source": global_source, "formatter": rm.formatter.to_dict()}
    if cfg.model.global_model == PACKAGED_MODEL:
        gd = torch.from_numpy(feats[g_chosen] - feats[g_rejected])
        job = HeadJob(
            train_idx=np.arange(len(gd)), weights=np.ones(len(gd)), init=np.zeros(rm.feature_dim),
            anchor=np.zeros(rm.feature_dim), lr=cfg.train.global_learning_rate, pull=0.0, stream=12345,
        )
        w = train_heads(gd, [job], [cfg.train.global_steps], batch_size=64)[0, -1]
        rm.set_head(torch.from_numpy(w), 0.0)
        global_info.update(
            trained_on_pairs=len(gd),
            trained_on="held-apart split keys of every group (never a group's train or test keys)"
            if global_source == "holdout"
            else "population pairs (mean distribution over countries) of train split keys only",
            train_accuracy=accuracy((gd @ torch.from_numpy(w)).numpy()),
        )
    else:
        global_info.update(trained_on="pretrained reward model (its own training data)")
    global_info["fingerprint"] = rm.fingerprint()
    w, _ = rm.head_params()
    delta = (feats[chosen_row].astype(np.float64) - feats[rejected_row]) @ w.numpy().astype(np.float64)
    return Experiment(
        cfg=cfg, data=data, groups=groups, group=np.asarray(pairs["group"]), split=np.asarray(pairs["split"]),
        split_key=np.asarray(pairs["split_key"]), chosen_row=chosen_row, rejected_row=rejected_row,
        contested=np.asarray(pairs["contested"], dtype=bool) if "contested" in pairs.column_names else None,
        oracle_margin=np.asarray(pairs["oracle_margin"], dtype=float) if "oracle_margin" in pairs.column_names else None,
        prompts=prompts, responses=responses, features=feats, rm=rm, global_info=global_info, delta=delta,
        score_stats=stats,
    )


# ---------------------------------------------------------------------------------------------
def _stream(*parts: Any) -> int:
    import zlib

    return zlib.crc32("|".join(map(str, parts)).encode())


def selection_summary(exp: Experiment) -> dict[str, Any]:
    """Per group: training pairs, share the filter keeps, histograms of p and w."""
    tau, beta = exp.cfg.select.tau, exp.cfg.select.beta
    out = {}
    p_bins = np.linspace(0, 1, 11)
    w_bins = np.linspace(0, 1, 11)
    for g in exp.groups:
        m = (exp.group == g) & (exp.split == "train")
        d = exp.delta[m]
        sel = select_pairs(d, tau, beta)
        kept_w = sel.kept_weights
        out[g] = {
            "train_pairs": int(m.sum()),
            "test_pairs": int(((exp.group == g) & (exp.split == "test")).sum()),
            "train_split_keys": int(len(set(exp.split_key[m]))),
            "test_split_keys": int(len(set(exp.split_key[(exp.group == g) & (exp.split == "test")]))),
            "kept": sel.n_kept,
            "kept_share": float(sel.n_kept / max(len(d), 1)),
            "weight_sum_kept": float(kept_w.sum()),
            "mean_weight_kept": float(kept_w.mean()) if len(kept_w) else float("nan"),
            "global_train_accuracy": accuracy(d),
            "p_hist": {"bins": p_bins.tolist(), "counts": np.histogram(preference_probability(d), p_bins)[0].tolist()},
            "w_hist_kept": {"bins": w_bins.tolist(), "counts": np.histogram(kept_w, w_bins)[0].tolist()},
        }
        if sel.n_kept == 0 and len(d):
            warnings.warn(f"group {g!r}: no training pair left after the filter (tau={tau}); its SCPO model is the global model (0 pairs)", stacklevel=2)
    return out


def fit_heads(exp: Experiment, methods: list[str], seeds: list[int], progress: bool = True) -> tuple[dict, dict]:
    """Head mode: grid search on k folds of each group's training keys, then refit; batched.

    Returns ``(thetas, grid)``: ``thetas[(group, method, seed)] = (weight [d], n_pairs, weight_sum)``
    and the grid record for results.json.
    """
    cfg = exp.cfg
    tc = cfg.train
    diffs = exp.diffs()
    w_global, _ = exp.rm.head_params()
    w_global = w_global.numpy()
    zeros = np.zeros_like(w_global)
    cells = grid_cells(tc.learning_rates, tc.pulls)
    steps = sorted(set(tc.steps))
    search = tc.val_folds > 1 and (len(cells) > 1 or len(steps) > 1)
    trained = [m for m in methods if m != "global"]

    def job_for(g, m, seed, rows, fold, lr, pull, val_rows=None):
        d = exp.delta[rows]
        rng = np.random.default_rng(_stream("subset", g, seed, fold))
        idx, wts = method_pairs(m, d, cfg.select.tau, cfg.select.beta, rng)
        scratch = m == "scratch"
        return HeadJob(
            train_idx=rows[idx], weights=wts, init=zeros if scratch else w_global,
            anchor=zeros if scratch else w_global, lr=lr, pull=pull, stream=_stream(g, m, seed, fold),
            val_idx=val_rows if val_rows is not None else np.zeros(0, dtype=np.int64),
        )

    grid: dict[str, Any] = {"cells": [{"learning_rate": lr, "pull": p} for lr, p in cells], "steps": steps,
                            "val_folds": tc.val_folds, "searched": search, "choices": {}}
    chosen: dict[tuple, tuple[float, float, int]] = {}
    if search:
        jobs, keys = [], []
        for g in exp.groups:
            train_m = (exp.group == g) & (exp.split == "train")
            gkeys = sorted(set(exp.split_key[train_m]))
            folds = kfold_keys(gkeys, tc.val_folds, seed=cfg.data.split_seed)
            for fi, fold in enumerate(folds):
                val_m = train_m & np.isin(exp.split_key, fold)
                fit_rows = np.flatnonzero(train_m & ~val_m)
                val_rows = np.flatnonzero(val_m)
                for m in trained:
                    for seed in seeds:
                        for ci, (lr, pull) in enumerate(cells):
                            jobs.append(job_for(g, m, seed, fit_rows, fi, lr, pull, val_rows))
                            keys.append((g, m, seed, fi, ci))
        snaps = train_heads(diffs, jobs, steps, tc.batch_size, progress=progress)
        accs = val_accuracy(diffs, jobs, snaps)  # [J, S]
        table: dict[tuple, list] = {}
        for (g, m, seed, _fi, ci), a in zip(keys, accs):
            table.setdefault((g, m, seed), []).append((ci, a))
        for (g, m, seed), rows in table.items():
            score = np.zeros((len(cells), len(steps)))
            cnt = np.zeros((len(cells), len(steps)))
            for ci, a in rows:
                ok = ~np.isnan(a)
                score[ci, ok] += a[ok]
                cnt[ci, ok] += 1
            mean = np.where(cnt > 0, score / np.maximum(cnt, 1), np.nan)
            flat = np.nan_to_num(mean, nan=-1.0)
            ci, si = np.unravel_index(int(np.argmax(flat)), flat.shape)  # first maximum wins ties
            lr, pull = cells[ci]
            chosen[(g, m, seed)] = (lr, pull, steps[si])
            grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = {
                "learning_rate": lr, "pull": pull, "steps": steps[si], "val_accuracy": float(mean[ci, si]),
                "val_accuracy_grid": mean.tolist(),
            }
    else:
        for g in exp.groups:
            for m in trained:
                for seed in seeds:
                    chosen[(g, m, seed)] = (cells[0][0], cells[0][1], steps[-1])
    # refit on all training pairs with the chosen cell
    jobs, keys = [], []
    for g in exp.groups:
        rows = np.flatnonzero((exp.group == g) & (exp.split == "train"))
        for m in trained:
            for seed in seeds:
                lr, pull, st = chosen[(g, m, seed)]
                jobs.append(job_for(g, m, seed, rows, "final", lr, pull))
                keys.append((g, m, seed, st))
    thetas: dict[tuple, tuple[np.ndarray, int, float]] = {}
    for st in sorted({k[3] for k in keys}):
        sub = [i for i, k in enumerate(keys) if k[3] == st]
        snaps = train_heads(diffs, [jobs[i] for i in sub], [st], tc.batch_size, progress=progress)
        for j, i in enumerate(sub):
            g, m, seed, _ = keys[i]
            thetas[(g, m, seed)] = (snaps[j, 0], len(jobs[i].train_idx), float(jobs[i].weights.sum()))
    for g in exp.groups:
        for seed in seeds:
            thetas[(g, "global", seed)] = (w_global, 0, 0.0)
    return thetas, grid


def evaluate_margins(exp: Experiment, margins: dict[tuple, np.ndarray], pairs_used: dict[tuple, tuple[int, float]], seeds: list[int]) -> dict[str, Any]:
    """Accuracy tables from test margins of every (group, method, seed) over the pooled test pairs."""
    test = exp.split == "test"
    tg = exp.group[test]
    gm = exp.delta[test]
    contested = exp.contested[test] if exp.contested is not None else None
    clusters = exp.split_key[test]
    methods = sorted({k[1] for k in margins}, key=lambda m: list(margins).index(next(k for k in margins if k[1] == m)))
    metrics: dict[str, Any] = {}
    cross: dict[str, Any] = {}
    for g in exp.groups:
        masks = subset_masks(tg == g, gm, contested)
        metrics[g] = {"test_pairs": {s: int(masks[s].sum()) for s in masks}}
        for m in methods:
            per_seed = {s: [] for s in masks}
            correct_all = []
            for seed in seeds:
                mg = margins[(g, m, seed)]
                for s, mask in masks.items():
                    per_seed[s].append(accuracy(mg[mask]))
                correct_all.append((mg[masks["all"]] > 0).astype(float))
            entry = {s: {**mean_std(v), "per_seed": v} for s, v in per_seed.items()}
            lo, hi = cluster_bootstrap_ci(np.stack(correct_all), clusters[masks["all"]], seed=0)
            entry["all"]["ci95"] = [lo, hi]
            used = [pairs_used[(g, m, seed)] for seed in seeds]
            entry["pairs_used"] = float(np.mean([u[0] for u in used]))
            entry["weight_sum"] = float(np.mean([u[1] for u in used]))
            metrics[g][m] = entry
            cross.setdefault(m, {})[g] = {
                h: float(np.mean([accuracy(margins[(g, m, seed)][tg == h]) for seed in seeds])) for h in exp.groups
            } | {"pooled": float(np.mean([accuracy(margins[(g, m, seed)]) for seed in seeds]))}
    if exp.oracle_margin is not None:
        om = exp.oracle_margin[test]
        for g in exp.groups:
            masks = subset_masks(tg == g, gm, contested)
            metrics[g]["oracle"] = {s: {"mean": accuracy(om[mask]), "std": 0.0} for s, mask in masks.items() if s != "pooled"}
    return {"metrics": metrics, "cross_group": cross, "split_unit_ci": "clustered bootstrap over test "
            f"{exp.data.split_unit}s, averaged over training seeds (covers split-unit sampling and seed variance; "
            "not split variance)", "subsets": list(SUBSETS)}


def summarize(exp: Experiment, ev: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Averages over groups (and over minority groups when the data names them)."""
    metrics = ev["metrics"]
    minority = exp.data.stats.get("minority_groups")
    sets = {"all_groups": exp.groups}
    if minority:
        sets["minority_groups"] = [g for g in exp.groups if g in minority]
        sets["majority_groups"] = [g for g in exp.groups if g not in minority]
    out: dict[str, Any] = {}
    for name, gs in sets.items():
        if not gs:
            continue
        out[name] = {}
        for m in methods + (["oracle"] if exp.oracle_margin is not None else []):
            row = {}
            for s in ("all", "distinctive", "agreeing", "contested", "pooled"):
                vals = [metrics[g][m][s]["mean"] for g in gs if s in metrics[g].get(m, {})]
                row[s] = float(np.nanmean(vals)) if vals and not all(math.isnan(v) for v in vals) else float("nan")
            if m != "oracle":
                row["pairs_used"] = float(np.mean([metrics[g][m]["pairs_used"] for g in gs]))
            out[name][m] = row
        if exp.oracle_margin is not None and "global" in methods:
            og, gg = out[name]["oracle"]["all"], out[name]["global"]["all"]
            for m in methods:
                out[name][m]["gap_closed"] = float((out[name][m]["all"] - gg) / (og - gg)) if og != gg else float("nan")
    return out


def run(cfg: RunConfig | None = None, progress: bool = True, exp: Experiment | None = None) -> dict[str, Any]:
    """Run the whole experiment ``cfg`` describes and write its run directory; return results."""
    from . import report
    from .reliability import RunLock

    cfg = cfg or RunConfig()
    out_dir = Path(cfg.output.output_dir)
    t0 = time.time()
    main_process = int(os.environ.get("RANK", "0")) == 0  # under accelerate launch, rank 0 writes
    with RunLock(out_dir) if main_process else contextlib.nullcontext():
        exp = exp or prepare(cfg, progress=progress)
        methods = list(dict.fromkeys(cfg.train.methods))
        seeds = list(cfg.train.seeds)
        sel = selection_summary(exp)
        test = exp.split == "test"
        if cfg.train.mode == "head":
            thetas, grid = fit_heads(exp, methods, seeds, progress=progress)
            dt = exp.diffs()[torch.from_numpy(np.flatnonzero(test))].double().numpy()
            margins = {k: dt @ v[0].astype(np.float64) for k, v in thetas.items()}
            used = {k: (v[1], v[2]) for k, v in thetas.items()}
            models = {k: v[0] for k, v in thetas.items()}
        else:
            from .trainer import fit_trainer_models

            margins, used, grid, models = fit_trainer_models(exp, methods, seeds, progress=progress)
        ev = evaluate_margins(exp, margins, used, seeds)
        results = {
            "scpo_results_version": 1,
            "synthetic_data": exp.data.synthetic,
            "data": {
                "name": exp.data.name, "split_unit": exp.data.split_unit, "groups": exp.groups,
                "group_matches": exp.data.group_matches, "stats": exp.data.stats, "provenance": exp.data.provenance,
                "split_seed": cfg.data.split_seed,
            },
            "global_model": exp.global_info,
            "scoring": exp.score_stats,
            "selection": sel,
            "methods": methods,
            "seeds": seeds,
            "mode": cfg.train.mode,
            "grid": grid,
            **ev,
        }
        results["summary"] = summarize(exp, ev, methods)
        results["wall_time_s"] = time.time() - t0
        if main_process:
            report.write_run(out_dir, cfg, results, exp=exp, models=models)
    return results
