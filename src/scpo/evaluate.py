"""Step 6 of the pipeline: pairwise accuracy of reward models on held-out pairs.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "SUBSETS",
    "accuracy",
    "bootstrap_ci",
    "cluster_bootstrap_ci",
    "mean_std",
    "subset_masks",
]

SUBSETS = ("all", "distinctive", "agreeing", "contested", "pooled")


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


def bootstrap_ci(
    correct: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean of 0/1 outcomes, resampling items."""
    correct = np.asarray(correct, dtype=float)
    if correct.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.size, size=(n_boot, correct.size))
    means = correct[idx].mean(1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def cluster_bootstrap_ci(
    correct: np.ndarray, clusters: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of accuracy resampling clusters (split units), not pairs.

    ``correct`` may be ``[n]`` or ``[runs, n]`` (e.g. seeds): each bootstrap replicate resamples
    clusters and averages over runs too.
    """
    correct = np.asarray(correct, dtype=float)
    if correct.ndim == 1:
        correct = correct[None]
    if correct.shape[1] == 0:
        return float("nan"), float("nan")
    _, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = inv.max() + 1
    sums = np.zeros((correct.shape[0], k))
    np.add.at(sums.T, inv, correct.T)
    sizes = np.bincount(inv, minlength=k).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, k, size=(n_boot, k))
    counts = np.stack([np.bincount(d, minlength=k) for d in draws])  # [B, k]
    num = counts @ sums.T  # [B, runs]
    den = counts @ sizes  # [B]
    accs = (num / den[:, None]).mean(1)
    a = (1 - level) / 2
    return float(np.quantile(accs, a)), float(np.quantile(accs, 1 - a))
