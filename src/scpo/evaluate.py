"""Step 6 of the pipeline: pairwise accuracy of reward models on held-out pairs, with uncertainty.

A model is evaluated through its *margins* ``r(x, y+) - r(x, y-)`` on the pooled test pairs of
every group; accuracy is the share of margins ``> 0`` (a tie counts wrong). Subsets:

* ``all`` — the group's test pairs;
* ``distinctive`` — those the global model ranks wrongly (margin <= 0). Defined by the global
  model itself: the global model scores 0 there by construction, and a model that merely
  disagrees more with it scores high there. Always read it beside ``agreeing`` and ``pooled``;
* ``agreeing`` — those the global model ranks rightly;
* ``contested`` — those whose order in the group contradicts the population's (when the data
  defines it): cultural signal measured without reference to the global model;
* ``pooled`` — every group's test pairs (does the group model become excessively biased?).

Uncertainty (:func:`evaluate_splits`). A *run* is one (split seed, training seed). Every number is
the mean over runs; ``std`` is the standard deviation over runs. Confidence intervals are
percentile intervals of a bootstrap that resamples, in each replicate,

1. the test **split units** (users, questions: the ``split_key`` clusters, never single pairs):
   within the group for a group's numbers, over every test unit for numbers pooled over groups;
2. the **training seeds** (with replacement), so seed-to-seed variance is covered;
3. the **split seeds** (with replacement, hierarchically: a split, then units within it) when
   there are several, so the variance of the train/test partition is covered too.

The same draws serve every method, so differences are paired: the paired test of method A
against method B reports the mean accuracy difference, its CI, and a two-sided p-value from the
bootstrap distribution (:func:`bootstrap_p_value`: the inverted percentile interval, so the CI
excludes 0 exactly when p < 0.05).
McNemar's test is given beside it for comparison only: it treats pairs as independent, which they
are not (one user or question gives many pairs), so its p-values overstate the evidence when a
few units carry a difference.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .hashing import stream_seed

__all__ = [
    "FEW_UNITS",
    "MIN_UNITS",
    "SUBSETS",
    "ClusterBootstrap",
    "SplitMargins",
    "accuracy",
    "bootstrap_ci",
    "bootstrap_p_value",
    "cluster_bootstrap_ci",
    "evaluate_splits",
    "mcnemar",
    "mean_std",
    "percentile_ci",
    "subset_masks",
]

SUBSETS = ("all", "distinctive", "agreeing", "contested", "pooled")
MIN_UNITS = 2
"""Fewer test units than this in a subset: no CI or p-value (NaN)."""
FEW_UNITS = 10
"""Fewer test units than this: CIs and p-values are flagged as unreliable (percentile bootstrap)."""


def accuracy(margins: np.ndarray) -> float:
    """Share of margins > 0 (ties wrong); NaN for an empty set."""
    margins = np.asarray(margins)
    return float((margins > 0).mean()) if margins.size else float("nan")


def subset_masks(
    group_mask: np.ndarray, global_margins: np.ndarray, contested: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Boolean masks over the pooled test pairs for each subset of one group."""
    right = np.asarray(global_margins) > 0
    masks = {
        "all": group_mask,
        "distinctive": group_mask & ~right,
        "agreeing": group_mask & right,
        "pooled": np.ones_like(group_mask),
    }
    if contested is not None:
        masks["contested"] = group_mask & np.asarray(contested, dtype=bool)
    return masks


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and (sample, ddof=1; 0 for one value) standard deviation, ignoring NaN."""
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (NaN replicates ignored; ``inf`` allowed)."""
    r = np.asarray(replicates, dtype=float)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    method = "linear" if np.isfinite(r).all() else "inverted_cdf"  # no inf - inf interpolation
    lo, hi = np.quantile(r, a, method=method), np.quantile(r, 1 - a, method=method)
    return float(lo), float(hi)


def bootstrap_p_value(estimate: float, replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference", by inverting the percentile interval.

    ``p = min(1, 2 (1 + min(#{r <= 0}, #{r >= 0})) / (B + 1))`` over the non-NaN replicates ``r``
    of the difference: the 95% percentile CI excludes 0 exactly when ``p`` is below about 0.05,
    so the CI and the p-value never disagree. Replicates equal to 0 (both methods right or wrong
    on every drawn unit) count on both sides, which makes the test conservative. NaN without
    replicates.
    """
    r = np.asarray(replicates, dtype=float)
    r = r[~np.isnan(r)]
    if r.size == 0 or math.isnan(estimate):
        return float("nan")
    tail = min(int(np.sum(r <= 0)), int(np.sum(r >= 0)))
    return float(min(1.0, 2 * (1 + tail) / (r.size + 1)))


def bootstrap_ci(
    correct: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean of 0/1 outcomes, resampling items (pairs)."""
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.size, size=(n_boot, correct.size))
    return percentile_ci(correct[idx].mean(1), level)


class ClusterBootstrap:
    """Bootstrap draws over clusters (split units) and runs (training seeds), reused by every statistic.

    ``clusters`` labels the items (test pairs) of the universe. Each of the ``n_boot`` replicates
    draws as many clusters as there are, with replacement, and (if ``resample_runs``) as many runs
    as there are. A statistic's replicate is the ratio estimator of accuracy over the drawn
    clusters' items, averaged over the drawn runs. Two statistics computed with one object share
    their draws: their difference is a paired bootstrap.
    """

    def __init__(self, clusters: np.ndarray, n_runs: int = 1, n_boot: int = 2000, seed: int = 0,
                 resample_runs: bool = True):
        clusters = np.asarray(clusters)
        self.n = len(clusters)
        self.n_boot = int(n_boot)
        self.n_runs = int(n_runs)
        if self.n:
            _, self.inv = np.unique(clusters, return_inverse=True)
            self.inv = self.inv.reshape(-1)
            self.k = int(self.inv.max()) + 1
        else:
            self.inv, self.k = np.zeros(0, dtype=np.int64), 0
        rng = np.random.default_rng(seed)
        if self.k:
            draws = rng.integers(0, self.k, size=(self.n_boot, self.k))
            flat = (np.arange(self.n_boot)[:, None] * self.k + draws).reshape(-1)
            self.counts = np.bincount(flat, minlength=self.n_boot * self.k).reshape(self.n_boot, self.k).astype(float)
        else:
            self.counts = np.zeros((self.n_boot, 0))
        if resample_runs and self.n_runs > 1:
            self.run_draws = rng.integers(0, self.n_runs, size=(self.n_boot, self.n_runs))
        else:
            self.run_draws = np.tile(np.arange(self.n_runs), (self.n_boot, 1))

    def _sums(self, correct: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(correct, dtype=float)
        if c.ndim == 1:
            c = c[None]
        if c.shape != (self.n_runs, self.n):
            raise ValueError(f"correct has shape {c.shape}, expected ({self.n_runs}, {self.n})")
        m = np.ones(self.n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        sums = np.zeros((self.n_runs, self.k))
        np.add.at(sums.T, self.inv[m], c[:, m].T)
        sizes = np.bincount(self.inv[m], minlength=self.k).astype(float)
        return sums, sizes

    def point(self, correct: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Accuracy of every run on the (masked) items: ``[runs]`` (NaN when the mask is empty)."""
        c = np.asarray(correct, dtype=float)
        if c.ndim == 1:
            c = c[None]
        m = np.ones(self.n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        if not m.any():
            return np.full(c.shape[0], np.nan)
        return c[:, m].mean(1)

    def replicates(self, correct: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Bootstrap replicates ``[n_boot]`` of the run-averaged accuracy on the (masked) items.

        All NaN when the (masked) items span fewer than :data:`MIN_UNITS` clusters: one unit
        cannot show how much units vary, and a zero-width interval would claim certainty.
        """
        if self.k == 0:
            return np.full(self.n_boot, np.nan)
        sums, sizes = self._sums(correct, mask)
        if int((sizes > 0).sum()) < MIN_UNITS:
            return np.full(self.n_boot, np.nan)
        num = self.counts @ sums.T  # [B, runs]
        den = self.counts @ sizes  # [B]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_run = num / den[:, None]
        return np.take_along_axis(per_run, self.run_draws, axis=1).mean(1)


def cluster_bootstrap_ci(
    correct: np.ndarray, clusters: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
    resample_runs: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap CI of accuracy resampling clusters (split units), not pairs.

    ``correct`` may be ``[n]`` or ``[runs, n]`` (e.g. seeds): each replicate resamples clusters
    and, when ``resample_runs``, the runs too, then averages over the drawn runs.
    """
    c = np.asarray(correct, dtype=float)
    if c.ndim == 1:
        c = c[None]
    if c.shape[1] == 0:
        return float("nan"), float("nan")
    boot = ClusterBootstrap(clusters, n_runs=c.shape[0], n_boot=n_boot, seed=seed, resample_runs=resample_runs)
    return percentile_ci(boot.replicates(c), level)


def mcnemar(b: int, c: int) -> dict[str, Any]:
    """McNemar's exact test on the discordant counts of a paired 2x2 table.

    ``b`` = pairs model A gets right and model B wrong, ``c`` = the reverse. Two-sided exact
    binomial p-value ``min(1, 2 P(X <= min(b, c)))``, ``X ~ Bin(b + c, 1/2)``; also the
    continuity-corrected chi-square statistic ``(|b - c| - 1)^2 / (b + c)``. Treats pairs as
    independent.
    """
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "statistic": 0.0, "p_value": 1.0}
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    p = min(1.0, 2 * tail / 2**n)
    stat = (abs(b - c) - 1) ** 2 / n if b != c else 0.0
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p)}


# ---------------------------------------------------------------------------------------------
@dataclass
class SplitMargins:
    """Test margins of every model on one train/test split (one split seed)."""

    split_seed: int
    test_group: np.ndarray
    """Group of every pooled test pair ``[n]``."""
    clusters: np.ndarray
    """Split unit (``split_key``) of every test pair ``[n]``."""
    global_margin: np.ndarray
    """The global model's margin of every test pair ``[n]`` (defines distinctive/agreeing)."""
    margins: dict[tuple, np.ndarray]
    """``(group, method, seed) -> [n]`` margins of the group's model on the pooled test pairs."""
    used: dict[tuple, tuple[float, float]] = field(default_factory=dict)
    """``(group, method, seed) -> (training pairs, sum of weights)``."""
    contested: np.ndarray | None = None
    oracle_margin: np.ndarray | None = None


class SplitDraws:
    """Hierarchical combination of per-split replicates: draw splits, then a replicate within each."""

    def __init__(self, n_splits: int, n_boot: int, seed: int = 0):
        self.n_splits = n_splits
        rng = np.random.default_rng(stream_seed("splits", seed))
        self.split_idx = rng.integers(0, n_splits, size=(n_boot, n_splits))
        self.rep_idx = rng.integers(0, n_boot, size=(n_boot, n_splits))

    def combine(self, reps: Sequence[np.ndarray]) -> np.ndarray:
        """``[n_boot]`` replicates of the mean over splits from each split's ``[n_boot]`` replicates."""
        if self.n_splits == 1:
            return np.asarray(reps[0], dtype=float)
        stack = np.stack([np.asarray(r, dtype=float) for r in reps])  # [S, B]
        return stack[self.split_idx, self.rep_idx].mean(1)


class Evaluator:
    """Bootstrap machinery over several splits: per-group and all-units draws, shared by every method."""

    def __init__(self, splits: Sequence[SplitMargins], groups: Sequence[str], n_runs: int, n_boot: int = 2000,
                 seed: int = 0):
        self.splits = list(splits)
        self.groups = list(groups)
        self.n_boot = n_boot
        self.draws = SplitDraws(len(self.splits), n_boot, seed)
        self.group_boot: list[dict[str, ClusterBootstrap]] = []
        self.all_boot: list[ClusterBootstrap] = []
        self.group_rows: list[dict[str, np.ndarray]] = []
        for sp in self.splits:
            rows = {g: np.flatnonzero(sp.test_group == g) for g in self.groups}
            self.group_rows.append(rows)
            self.group_boot.append({
                g: ClusterBootstrap(sp.clusters[r], n_runs, n_boot, seed=stream_seed("group", seed, sp.split_seed, g))
                for g, r in rows.items()
            })
            self.all_boot.append(ClusterBootstrap(sp.clusters, n_runs, n_boot, seed=stream_seed("all", seed, sp.split_seed)))

    def masks(self, si: int, g: str) -> dict[str, np.ndarray]:
        sp = self.splits[si]
        return subset_masks(sp.test_group == g, sp.global_margin, sp.contested)

    def group_stat(self, correct: Sequence[np.ndarray], g: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
        """(per-run accuracies over all splits ``[S * runs]``, replicates ``[B]``) of one group's subset.

        ``correct[s]`` is ``[runs, n_s]`` over split ``s``'s pooled test pairs.
        """
        points, reps = [], []
        for si, c in enumerate(correct):
            mask = self.masks(si, g)[subset]
            if subset == "pooled":
                boot = self.all_boot[si]
                points.append(boot.point(c, mask))
                reps.append(boot.replicates(c, mask))
            else:
                rows = self.group_rows[si][g]
                boot = self.group_boot[si][g]
                cg = np.asarray(c, dtype=float)[:, rows]
                points.append(boot.point(cg, mask[rows]))
                reps.append(boot.replicates(cg, mask[rows]))
        return np.concatenate(points), self.draws.combine(reps)

    def macro_stat(self, correct: dict[str, Sequence[np.ndarray]], groups: Sequence[str],
                   subset: str) -> tuple[float, np.ndarray]:
        """Mean over ``groups`` of a subset's accuracy, each group with its own model's ``correct``;
        replicates from draws over every test unit (shared units stay together)."""
        reps_by_split, point_by_split = [], []
        for si in range(len(self.splits)):
            boot = self.all_boot[si]
            per_group_reps, per_group_pt = [], []
            for g in groups:
                mask = self.masks(si, g)[subset]
                c = correct[g][si]
                per_group_pt.append(np.nanmean(boot.point(c, mask)) if mask.any() else np.nan)
                per_group_reps.append(boot.replicates(c, mask))
            with _quiet():
                point_by_split.append(np.nanmean(per_group_pt))
                reps_by_split.append(np.nanmean(np.stack(per_group_reps), axis=0))
        with _quiet():
            point = float(np.nanmean(point_by_split))
        return point, self.draws.combine(reps_by_split)


@contextlib.contextmanager
def _quiet():
    """Silence numpy's 'mean of empty slice' warnings (NaN is the intended answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def _nanmean(x: Sequence[float]) -> float:
    with _quiet():
        return float(np.nanmean(np.asarray(x, dtype=float))) if len(x) else float("nan")


def default_comparisons(methods: Sequence[str]) -> list[tuple[str, str]]:
    """SCPO against every other method, then each ablation against full fine-tuning."""
    out = []
    if "scpo" in methods:
        order = ["full", "global"] + [m for m in methods if m not in ("scpo", "full", "global")]
        out += [("scpo", m) for m in order if m in methods]
    if "full" in methods:
        for m in ("filter-only", "weight-only", "random-subset", "inverse", "scratch"):
            if m in methods:
                out.append((m, "full"))
    return out


def evaluate_splits(
    splits: Sequence[SplitMargins],
    groups: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    group_sets: dict[str, list[str]] | None = None,
    comparisons: Sequence[tuple[str, str]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[dict[str, Any], Evaluator]:
    """Every table of the evaluation: per group/method/subset accuracy with CIs, cross-group matrix,
    group-set summaries with CIs, and paired tests (clustered bootstrap; McNemar beside it).

    Returns ``(tables, evaluator)``: the tables ``{"metrics", "cross_group", "summary", "tests", "ci",
    "runs", "subsets"}`` (see ``docs/results-schema.md``) and the :class:`Evaluator` whose draws they
    were computed on, for callers that compute more statistics on the same draws (learning curves).
    """
    groups, methods, seeds = list(groups), list(methods), list(seeds)
    group_sets = group_sets or {"all_groups": groups}
    comparisons = list(comparisons) if comparisons is not None else default_comparisons(methods)
    comparisons = [(a, b) for a, b in comparisons if a in methods and b in methods]
    R = len(seeds)
    ev = Evaluator(splits, groups, R, n_boot, seed)
    has_contested = all(sp.contested is not None for sp in splits)
    subsets = [s for s in SUBSETS if s != "contested" or has_contested]
    # correct[(g, m)] = per split [runs, n_s]
    correct: dict[tuple[str, str], list[np.ndarray]] = {}
    for g in groups:
        for m in methods:
            correct[(g, m)] = [np.stack([(sp.margins[(g, m, s)] > 0).astype(float) for s in seeds]) for sp in splits]

    metrics: dict[str, Any] = {}
    replicates: dict[tuple[str, str, str], np.ndarray] = {}
    sp0 = splits[0]
    for g in groups:
        m0 = ev.masks(0, g)
        n_units = min(len(set(sp.clusters[sp.test_group == g])) for sp in splits)
        metrics[g] = {"test_pairs": {s: int(m0[s].sum()) for s in subsets},
                      "test_units": int(len(set(sp0.clusters[m0["all"]]))),
                      "few_units": bool(n_units < FEW_UNITS)}
        if len(splits) > 1:
            metrics[g]["test_pairs_per_split"] = [
                {s: int(ev.masks(si, g)[s].sum()) for s in subsets} for si in range(len(splits))]
        for m in methods:
            entry: dict[str, Any] = {}
            for s in subsets:
                pts, reps = ev.group_stat(correct[(g, m)], g, s)
                replicates[(g, m, s)] = reps
                e = mean_std(pts)
                e["per_run"] = [float(x) for x in pts]
                e["ci95"] = list(percentile_ci(reps, level))
                if len(splits) > 1:
                    by_split = pts.reshape(len(splits), R)
                    with _quiet():
                        split_means = np.nanmean(by_split, axis=1)
                    e["std_between_splits"] = float(np.nanstd(split_means, ddof=1))
                    e["std_within_split"] = _nanmean([np.nanstd(r, ddof=1) if R > 1 else 0.0 for r in by_split])
                entry[s] = e
            used = [sp.used.get((g, m, s), (0, 0.0)) for sp in splits for s in seeds]
            entry["pairs_used"] = float(np.mean([u[0] for u in used]))
            entry["weight_sum"] = float(np.mean([u[1] for u in used]))
            metrics[g][m] = entry
        if all(sp.oracle_margin is not None for sp in splits):
            oc = [(sp.oracle_margin > 0).astype(float)[None] for sp in splits]
            orc = {}
            for s in subsets:
                if s == "pooled":
                    continue
                vals = [_nanmean(ev.all_boot[si].point(oc[si], ev.masks(si, g)[s])) for si in range(len(splits))]
                orc[s] = {"mean": _nanmean(vals), "std": 0.0}
            metrics[g]["oracle"] = orc

    # cross-group matrix: model of group g on the test pairs of group h (and pooled)
    cross: dict[str, Any] = {}
    for m in methods:
        cross[m] = {}
        for g in groups:
            row = {}
            for h in groups + ["pooled"]:
                vals = []
                for si, sp in enumerate(splits):
                    mask = np.ones(len(sp.test_group), bool) if h == "pooled" else sp.test_group == h
                    vals.extend(ev.all_boot[si].point(correct[(g, m)][si], mask))
                row[h] = _nanmean(vals)
            cross[m][g] = row

    # group-set summaries (macro mean over groups) with CIs over every test unit
    summary: dict[str, Any] = {}
    set_reps: dict[tuple[str, str, str], np.ndarray] = {}
    for name, gs in group_sets.items():
        gs = [g for g in gs if g in groups]
        if not gs:
            continue
        summary[name] = {}
        for m in methods:
            row: dict[str, Any] = {}
            for s in subsets:
                pt, reps = ev.macro_stat({g: correct[(g, m)] for g in gs}, gs, s)
                set_reps[(name, m, s)] = reps
                row[s] = pt
                row[f"{s}_ci95"] = list(percentile_ci(reps, level))
            if "contested" not in subsets:
                row["contested"] = float("nan")
            row["pairs_used"] = float(np.mean([metrics[g][m]["pairs_used"] for g in gs]))
            row["per_run_all"] = [
                _nanmean([metrics[g][m]["all"]["per_run"][i] for g in gs]) for i in range(len(splits) * R)]
            row["std_all"] = mean_std(row["per_run_all"])["std"]
            summary[name][m] = row
        if all(sp.oracle_margin is not None for sp in splits):
            summary[name]["oracle"] = {
                s: _nanmean([metrics[g]["oracle"][s]["mean"] for g in gs]) for s in subsets if s != "pooled"
            } | {"pooled": float("nan")}
            if "contested" not in subsets:
                summary[name]["oracle"]["contested"] = float("nan")

    # paired tests
    tests: dict[str, Any] = {"comparisons": [list(c) for c in comparisons], "per_group": {}, "group_sets": {}}
    for a, b in comparisons:
        key = f"{a} vs {b}"
        tests["per_group"][key] = {}
        for g in groups:
            res = {}
            for s in subsets:
                d = metrics[g][a][s]["mean"] - metrics[g][b][s]["mean"]
                reps = replicates[(g, a, s)] - replicates[(g, b, s)]
                res[s] = {"diff": float(d), "ci95": list(percentile_ci(reps, level)),
                          "p_value": bootstrap_p_value(d, reps)}
            # McNemar on the first split, first seed (pairs as if independent), for comparison
            ra = splits[0].margins[(g, a, seeds[0])] > 0
            rb = splits[0].margins[(g, b, seeds[0])] > 0
            gm = splits[0].test_group == g
            res["all"]["mcnemar"] = mcnemar(int((ra & ~rb & gm).sum()), int((~ra & rb & gm).sum()))
            tests["per_group"][key][g] = res
        tests["group_sets"][key] = {}
        for name in summary:
            res = {}
            for s in subsets:
                d = summary[name][a][s] - summary[name][b][s]
                reps = set_reps[(name, a, s)] - set_reps[(name, b, s)]
                res[s] = {"diff": float(d), "ci95": list(percentile_ci(reps, level)),
                          "p_value": bootstrap_p_value(d, reps)}
            tests["group_sets"][key][name] = res

    covers = ["test split units (clustered: whole units are resampled, never single pairs)"]
    if R > 1:
        covers.append("training seeds")
    if len(splits) > 1:
        covers.append("train/test splits (split seeds)")
    not_covered = []
    if R == 1:
        not_covered.append("training-seed variance (one seed)")
    if len(splits) == 1:
        not_covered.append("split variance (one split seed: which units were trained on)")
    ci = {
        "method": "percentile bootstrap", "level": level, "n_boot": n_boot,
        "resamples": covers, "does_not_cover": not_covered,
        "group_ci": "a group's test units resampled within the group",
        "group_set_ci": "every test unit resampled (a unit shared by several groups stays whole); "
                        "the group-set number is the mean over its groups",
        "p_value": "two-sided paired bootstrap (same draws for both methods), inverted percentile interval: "
                   "p < 0.05 exactly when the 95% CI of the difference excludes 0",
    }
    return {
        "metrics": metrics, "cross_group": cross, "summary": summary, "tests": tests, "ci": ci,
        "runs": [{"split_seed": sp.split_seed, "seed": s} for sp in splits for s in seeds],
        "subsets": subsets,
    }, ev
