"""The SCPO selection math: filter and weight preference pairs by the global model's margin.

Everything here is pure (numpy in, numpy out) and small enough to check by hand.

For a pair (x, y+, y-) the global reward model gives the margin
``delta = r_g(x, y+) - r_g(x, y-)`` and the preference probability ``p = sigmoid(delta)``.

* **Filter**: keep the pair only where ``p < tau``. Computed as ``delta < logit(tau)`` so that no
  float rounding of the sigmoid decides (in float32 ``sigmoid(17) == 1.0``). ``tau = 1`` keeps
  every pair, as an explicit case.
* **Weight**: ``w = min(exp(delta / beta), 1)``, computed in log space as
  ``exp(min(delta / beta, 0))``; ``beta = inf`` gives ``w = 1`` as an explicit case.
* **Inverse weight** (the reference implementation's ablation): ``w = max(exp(-delta), 1)``.
* **Loss**: the weighted Bradley-Terry loss ``-mean(w * log sigmoid(r+ - r-))``, the mean taken
  over all the pairs a method trains on (zero weights included), so weights keep their meaning
  relative to a pull towards the global model.

**The methods** scpo compares are declared here, not coded (:data:`METHOD_SPECS`): every one
trains with that loss, from the global model, on these pairs and weights:

=============== ===================================================================
method          pairs and weights
=============== ===================================================================
global          no training: the global model itself
full            all the group's training pairs, w = 1 (full-data fine-tuning)
scpo            pairs with sigmoid(delta) < tau, w = min(exp(delta/beta), 1)
filter-only     pairs with sigmoid(delta) < tau, w = 1
weight-only     all pairs, w = min(exp(delta/beta), 1)
inverse         pairs with sigmoid(delta) < tau, w = max(exp(-delta), 1) (the reference's ablation)
random-subset   a random subset of all pairs, as many as scpo keeps, w = 1
scratch         all pairs, w = 1, from a zero score layer (head) / fresh head (full, lora)
=============== ===================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_TAU",
    "METHOD_SPECS",
    "MethodSpec",
    "Selection",
    "inverse_weights",
    "keep_mask",
    "log_sigmoid",
    "logit",
    "method_pairs",
    "preference_probability",
    "scpo_weights",
    "select_pairs",
    "validate_beta",
    "validate_tau",
    "weighted_bt_loss",
]

DEFAULT_TAU = 0.7
DEFAULT_BETA = 1.1


def validate_tau(tau: float) -> float:
    """Return ``tau`` as float, or raise ``ValueError`` unless ``0 < tau <= 1``."""
    tau = float(tau)
    if not (0.0 < tau <= 1.0) or math.isnan(tau):
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    return tau


def validate_beta(beta: float) -> float:
    """Return ``beta`` as float, or raise ``ValueError`` unless ``beta > 0`` (``inf`` allowed)."""
    beta = float(beta)
    if not beta > 0.0:  # also catches NaN
        raise ValueError(f"beta must be > 0 (inf turns the weight off), got {beta}")
    return beta


def logit(p: float) -> float:
    """``log(p / (1 - p))``; ``logit(1) = inf``."""
    if p >= 1.0:
        return math.inf
    if p <= 0.0:
        return -math.inf
    return math.log(p) - math.log1p(-p)


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe ``log(sigmoid(x))`` for any finite ``x``."""
    x = np.asarray(x, dtype=np.float64)
    return -np.logaddexp(0.0, -x)


def preference_probability(delta: np.ndarray) -> np.ndarray:
    """``p = sigmoid(delta)``, computed without overflow."""
    return np.exp(log_sigmoid(delta))


def keep_mask(delta: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Boolean mask of pairs the SCPO filter keeps: ``sigmoid(delta) < tau``.

    ``tau = 1`` keeps every finite pair (filter off). NaN margins are never kept.
    """
    tau = validate_tau(tau)
    delta = np.asarray(delta, dtype=np.float64)
    if tau == 1.0:
        return ~np.isnan(delta)
    return delta < logit(tau)


def scpo_weights(delta: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """SCPO weights ``w = min(exp(delta / beta), 1)`` in [0, 1].

    Computed as ``exp(min(delta / beta, 0))``: no overflow for large positive margins, and
    ``beta = inf`` returns ones explicitly (weight off).
    """
    beta = validate_beta(beta)
    delta = np.asarray(delta, dtype=np.float64)
    if math.isinf(beta):
        return np.ones_like(delta)
    return np.exp(np.minimum(delta / beta, 0.0))


def inverse_weights(delta: np.ndarray) -> np.ndarray:
    """The reference's inverse-weighting ablation: ``w = max(exp(-delta), 1)``.

    Clipped at ``exp(50)`` so a wildly wrong global margin cannot give ``inf``.
    """
    delta = np.asarray(delta, dtype=np.float64)
    return np.exp(np.clip(-delta, 0.0, 50.0))


def weighted_bt_loss(
    chosen_rewards: np.ndarray, rejected_rewards: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """``-mean(w * log sigmoid(r+ - r-))`` over all pairs (the mean includes zero weights)."""
    margin = np.asarray(chosen_rewards, dtype=np.float64) - np.asarray(rejected_rewards, np.float64)
    w = np.ones_like(margin) if weights is None else np.asarray(weights, dtype=np.float64)
    if margin.size == 0:
        return 0.0
    return float(-(w * log_sigmoid(margin)).mean())


@dataclass(frozen=True)
class Selection:
    """The result of selecting one group's pairs: which are kept and with which weight."""

    keep: np.ndarray
    """Boolean mask over the input pairs."""
    weights: np.ndarray
    """Weight of every input pair (also of those not kept)."""
    probability: np.ndarray
    """``sigmoid(delta)`` of every input pair."""

    @property
    def n_kept(self) -> int:
        return int(self.keep.sum())

    @property
    def kept_weights(self) -> np.ndarray:
        return self.weights[self.keep]


def select_pairs(
    delta: np.ndarray,
    tau: float = DEFAULT_TAU,
    beta: float = DEFAULT_BETA,
    weighting: str = "scpo",
) -> Selection:
    """Apply the SCPO filter and weight to margins ``delta``.

    ``weighting`` is ``"scpo"`` (``min(exp(delta/beta), 1)``), ``"none"`` (all ones) or
    ``"inverse"`` (the reference's ablation ``max(exp(-delta), 1)``).
    """
    delta = np.asarray(delta, dtype=np.float64)
    keep = keep_mask(delta, tau)
    if weighting == "scpo":
        w = scpo_weights(delta, beta)
    elif weighting == "none":
        w = np.ones_like(delta)
    elif weighting == "inverse":
        w = inverse_weights(delta)
    else:
        raise ValueError(f"weighting must be 'scpo', 'none' or 'inverse', got {weighting!r}")
    return Selection(keep=keep, weights=w, probability=preference_probability(delta))


# ---------------------------------------------------------------------------------------------
# the methods: which pairs, which weights


@dataclass(frozen=True)
class MethodSpec:
    """What a method trains on."""

    filter: bool = False
    weighting: str = "none"
    random_subset: bool = False
    from_scratch: bool = False


METHOD_SPECS: dict[str, MethodSpec] = {
    "full": MethodSpec(),
    "scpo": MethodSpec(filter=True, weighting="scpo"),
    "filter-only": MethodSpec(filter=True),
    "weight-only": MethodSpec(weighting="scpo"),
    "inverse": MethodSpec(filter=True, weighting="inverse"),
    "random-subset": MethodSpec(random_subset=True),
    "scratch": MethodSpec(from_scratch=True),
}


def method_pairs(
    method: str, delta: np.ndarray, tau: float, beta: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positions into ``delta`` of the pairs ``method`` trains on, their weights)."""
    spec = METHOD_SPECS[method]
    delta = np.asarray(delta, dtype=np.float64)
    if spec.random_subset:
        n = int(keep_mask(delta, tau).sum())
        rng = rng or np.random.default_rng(0)
        idx = np.sort(rng.choice(len(delta), size=n, replace=False)) if n else np.zeros(0, dtype=np.int64)
        return idx, np.ones(len(idx))
    sel = select_pairs(delta, tau if spec.filter else 1.0, beta, spec.weighting)
    idx = np.flatnonzero(sel.keep)
    return idx, sel.weights[idx]
