"""Data efficiency: learning curves and the efficiency ratio of SCPO against full fine-tuning.

**Learning curves.** For every fraction ``f`` (``--curve-fractions``, e.g. 0.1 ... 1.0) and every
(split seed, training seed), each group's *training pairs* are subsampled: a random permutation
of the group's training pairs per (group, split seed, training seed), of which the first
``round(f * n)`` are kept, so the subsets are nested (10% is inside 25%). The subsample is what
the user would have collected: every method then works on it exactly as on the whole training
set — SCPO filters and weights the subsample, the grid search of learning rate, steps and pull
runs again on k folds of the subsample's split keys, per fraction, group, method and seed. The
x-axis is the number of **raw pairs** (collected, before the filter); SCPO's kept pairs are given
beside. The 100% point is the main comparison's model (same training, not a re-run).

Accuracy is on the group's whole test split, the same for every fraction.

**Efficiency ratio.** For each point of SCPO's curve (``n`` raw pairs, accuracy ``a``): the number
of raw pairs full fine-tuning needs to reach ``a`` — the first crossing of its piecewise-linear
curve, interpolated between the fractions that bracket it — divided by ``n``. ``> 1``: SCPO needs
fewer pairs for the same accuracy. When full fine-tuning never reaches ``a`` within the data, the
ratio is only bounded below (``> largest x / n``: "not reached"); when it already reaches ``a`` at
its smallest fraction, only bounded above. The paper's "170-280%" is a ratio of 1.7-2.8. The
ratio is bootstrapped with the same draws as every other CI (split units, seeds, splits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluate import Evaluator, percentile_ci
from ..experiment import Experiment, FitResult
from ..fitting import fit, train_rows_of
from ..hashing import stream_seed

__all__ = ["efficiency_ratio", "fit_curves", "reach_point", "subsample_positions", "curve_tables"]

def reach_point(xs: Sequence[float], accs: Sequence[float], target: float) -> tuple[float, str]:
    """Smallest ``x`` at which the piecewise-linear curve through ``(xs, accs)`` reaches ``target``.

    ``xs`` ascending. Returns ``(x, status)``: ``"interpolated"`` (first crossing, linear between
    the two points that bracket it), ``"at_first_point"`` (already reached at ``xs[0]``: the true
    ``x`` is at most that) or ``"not_reached"`` (``x`` is ``inf``).
    """
    xs = np.asarray(xs, dtype=float)
    accs = np.asarray(accs, dtype=float)
    if math.isnan(target) or len(xs) == 0:
        return float("nan"), "undefined"
    if accs[0] >= target:
        return float(xs[0]), "at_first_point"
    for i in range(1, len(xs)):
        if accs[i] >= target:
            a0, a1 = accs[i - 1], accs[i]
            t = (target - a0) / (a1 - a0) if a1 > a0 else 1.0
            return float(xs[i - 1] + t * (xs[i] - xs[i - 1])), "interpolated"
    return float("inf"), "not_reached"


def efficiency_ratio(full_x: Sequence[float], full_acc: Sequence[float], n_pairs: float,
                     target: float) -> tuple[float, str]:
    """``(pairs full fine-tuning needs to reach target) / n_pairs`` and the status of :func:`reach_point`.

    ``inf`` when not reached (a lower bound ``max(full_x) / n_pairs`` is what the data shows).
    """
    x, status = reach_point(full_x, full_acc, target)
    if status == "undefined" or n_pairs <= 0:
        return float("nan"), "undefined"
    return x / float(n_pairs), status


def subsample_positions(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of a nested random subsample: the first ``round(fraction * n)`` (at least 1)
    of a permutation drawn from ``rng`` (draw the permutation once per group and seed)."""
    perm = rng.permutation(n)
    k = n if fraction >= 1.0 else max(1, int(round(fraction * n)))
    return np.sort(perm[: min(k, n)])


def fit_curves(exp: Experiment, methods: Sequence[str], seeds: Sequence[int], fractions: Sequence[float],
               full: FitResult, *, work_dir: str | Path | None = None,
               progress: bool = False) -> tuple[dict[tuple, np.ndarray], dict[tuple, tuple[int, int, float]]]:
    """Train ``methods`` on subsamples of each group's training pairs; margins on the pooled test pairs.

    Returns ``(margins, used)`` keyed ``(group, method, seed, fraction)``; ``used`` holds
    ``(raw pairs in the subsample, pairs trained on, sum of weights)``. The fraction 1.0 reuses the
    main comparison's fit ``full`` (keyed ``(group, method, seed)``). Every other (fraction, seed)
    is one :func:`scpo.fitting.fit` call with that subsample as the training rows (full/LoRA jobs
    keep their records under ``work_dir/curves/``; default the run directory).
    """
    split_seed = exp.cfg.data.split_seed
    train_rows = train_rows_of(exp)
    margins: dict[tuple, np.ndarray] = {}
    used: dict[tuple, tuple[int, int, float]] = {}
    for g, rows in train_rows.items():
        for m in methods:
            for s in seeds:
                if 1.0 in fractions:
                    margins[(g, m, s, 1.0)] = full.margins[(g, m, s)]
                    used[(g, m, s, 1.0)] = (len(rows), int(full.used[(g, m, s)][0]), float(full.used[(g, m, s)][1]))
    base = Path(work_dir if work_dir is not None else exp.cfg.output.output_dir)
    for f in sorted(f for f in fractions if f < 1.0):
        for s in seeds:
            sub = {g: rows[subsample_positions(len(rows), f, np.random.default_rng(stream_seed("curve", g, split_seed, s)))]
                   for g, rows in train_rows.items()}
            res = fit(exp, list(methods), [s], train_rows=sub, work_dir=base / "curves" / f"fraction-{f:g}-seed-{s}",
                      save_models=False, progress=progress)
            for g in exp.groups:
                for m in methods:
                    margins[(g, m, s, f)] = res.margins[(g, m, s)]
                    used[(g, m, s, f)] = (len(sub[g]), int(res.used[(g, m, s)][0]), float(res.used[(g, m, s)][1]))
    return margins, used


def _ratio_entry(fr: float, x: float, kept: float, acc: float, full_x: np.ndarray, full_acc: np.ndarray,
                 rep_full: np.ndarray | None, rep_scpo: np.ndarray | None, unit: str) -> dict[str, Any]:
    """One SCPO point's efficiency ratio (``full_x`` in the same unit as ``x``)."""
    ratio, status = efficiency_ratio(full_x, full_acc, x, acc)
    e: dict[str, Any] = {
        "fraction": fr, "x_unit": unit, "scpo_x": x, "scpo_pairs_trained": kept, "scpo_accuracy": acc,
        "full_x_needed": ratio * x if math.isfinite(ratio) else None,
        "ratio": ratio if math.isfinite(ratio) else None, "status": status,
        "ratio_bound": {"at_first_point": "at most", "not_reached": "more than"}.get(status),
        "ratio_bound_value": (float(full_x[-1] / x) if status == "not_reached" else
                              float(full_x[0] / x) if status == "at_first_point" else None),
    }
    if rep_full is not None and rep_scpo is not None:
        rr = np.array([efficiency_ratio(full_x, rep_full[:, b], x, rep_scpo[b])[0] for b in range(rep_full.shape[1])])
        rr = rr[~np.isnan(rr)]
        if rr.size:
            lo, hi = percentile_ci(rr)
            e["ci95"] = [lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None]
            e["share_replicates_ratio_above_1"] = float(np.mean(rr > 1.0))
            e["share_replicates_not_reached"] = float(np.mean(np.isinf(rr)))
    return e


def curve_tables(ev: Evaluator, curve_splits: Sequence[tuple[dict, dict]], groups: Sequence[str],
                 methods: Sequence[str], seeds: Sequence[int], fractions: Sequence[float],
                 group_sets: dict[str, list[str]]) -> dict[str, Any]:
    """Curve points with CIs and efficiency ratios, on the draws of the evaluator ``ev`` of the main comparison.

    ``curve_splits[s] = (margins, used)`` of :func:`fit_curves` for split ``s`` (same order as the
    splits given to ``evaluate_splits``).
    """
    fractions = sorted(fractions)
    per_group: dict[str, Any] = {}
    reps: dict[tuple, np.ndarray] = {}
    for g in groups:
        per_group[g] = {}
        for m in methods:
            row: dict[str, list] = {"raw_pairs": [], "pairs_trained": [], "accuracy": [], "std": [], "ci95": []}
            for f in fractions:
                correct = [np.stack([(mg[(g, m, s, f)] > 0).astype(float) for s in seeds]) for mg, _ in curve_splits]
                pts, rp = ev.group_stat(correct, g, "all")
                reps[(g, m, f)] = rp
                used = [us[(g, m, s, f)] for _, us in curve_splits for s in seeds]
                row["raw_pairs"].append(float(np.mean([u[0] for u in used])))
                row["pairs_trained"].append(float(np.mean([u[1] for u in used])))
                row["accuracy"].append(float(np.nanmean(pts)))
                row["std"].append(float(np.nanstd(pts, ddof=1)) if len(pts) > 1 else 0.0)
                row["ci95"].append(list(percentile_ci(rp)))
            per_group[g][m] = row
    sets: dict[str, Any] = {}
    set_reps: dict[tuple, np.ndarray] = {}
    for name, gs in group_sets.items():
        gs = [g for g in gs if g in groups]
        if not gs:
            continue
        sets[name] = {}
        for m in methods:
            row = {"fraction": list(fractions), "accuracy": [], "ci95": [],
                   "raw_pairs": [float(np.mean([per_group[g][m]["raw_pairs"][i] for g in gs])) for i in range(len(fractions))],
                   "pairs_trained": [float(np.mean([per_group[g][m]["pairs_trained"][i] for g in gs]))
                                     for i in range(len(fractions))]}
            for f in fractions:
                correct = {g: [np.stack([(mg[(g, m, s, f)] > 0).astype(float) for s in seeds]) for mg, _ in curve_splits]
                           for g in gs}
                pt, rp = ev.macro_stat(correct, gs, "all")
                set_reps[(name, m, f)] = rp
                row["accuracy"].append(pt)
                row["ci95"].append(list(percentile_ci(rp)))
            sets[name][m] = row
    out: dict[str, Any] = {
        "fractions": list(fractions), "methods": list(methods), "per_group": per_group, "group_sets": sets,
        "subsample": "nested random subsets of each group's training pairs (not of split units), one "
                     "permutation per (group, split seed, training seed); SCPO filters the subsample",
        "hyperparameters": "chosen again for every fraction, group, method and seed by the k-fold grid search "
                           "on the subsample's split keys",
        "x_axis": "raw pairs (before SCPO's filter); pairs_trained = pairs each method trained on",
    }
    if "full" in methods and "scpo" in methods:
        eff: dict[str, Any] = {"per_group": {}, "group_sets": {},
                               "definition": "pairs full fine-tuning needs to reach SCPO's accuracy / pairs SCPO used "
                                             "(raw pairs; first crossing of full fine-tuning's curve, linear "
                                             "interpolation; 'not reached' when it never does)"}
        for g in groups:
            fx = np.asarray(per_group[g]["full"]["raw_pairs"])
            fa = np.asarray(per_group[g]["full"]["accuracy"])
            rf = np.stack([reps[(g, "full", f)] for f in fractions])  # [F, B]
            eff["per_group"][g] = [
                _ratio_entry(f, per_group[g]["scpo"]["raw_pairs"][i], per_group[g]["scpo"]["pairs_trained"][i],
                             per_group[g]["scpo"]["accuracy"][i], fx, fa, rf, reps[(g, "scpo", f)], "raw pairs")
                for i, f in enumerate(fractions)]
        for name in sets:
            fx = np.asarray(fractions, dtype=float)
            fa = np.asarray(sets[name]["full"]["accuracy"])
            rf = np.stack([set_reps[(name, "full", f)] for f in fractions])
            eff["group_sets"][name] = [
                _ratio_entry(f, f, sets[name]["scpo"]["pairs_trained"][i], sets[name]["scpo"]["accuracy"][i],
                             fx, fa, rf, set_reps[(name, "scpo", f)], "fraction of each group's raw pairs")
                for i, f in enumerate(fractions)]
        out["efficiency"] = eff
    return out
