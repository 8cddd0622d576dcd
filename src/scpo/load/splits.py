"""One partition of split keys, shared by every group and by the offline global model.

A *split key* is the unit that must not straddle train and test (a user, a question, an annotator).
:func:`assign_splits` partitions the distinct keys into ``train``, ``test`` and ``global`` (held
apart to train the offline global model); :func:`split_data` applies it to a loaded data set and
decides what trains the global model; :func:`kfold_keys` carves validation folds from training keys.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import PACKAGED_MODEL, RunConfig
from ..errors import InputError
from .base import PairRows, PreferenceData, dictionary_codes, distinct_strings, pair_table

__all__ = ["SplitData", "add_split_column", "assign_splits", "check_global_pairs", "kfold_keys", "rows_in_split",
           "split_data"]


def assign_splits(
    split_keys: list[str] | np.ndarray,
    *,
    seed: int,
    test_fraction: float,
    global_fraction: float = 0.0,
) -> dict[str, str]:
    """Partition distinct split keys into ``test``, ``global`` and ``train``.

    Deterministic for a seed: keys are sorted, then permuted by ``numpy.random.default_rng(seed)``.
    The first ``round(n * test_fraction)`` keys are test, the next ``round(n * global_fraction)``
    global, the rest train. With at least 3 keys each requested part gets at least one key.
    """
    keys = sorted(set(map(str, split_keys)))
    n = len(keys)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    n_glob = int(round(n * global_fraction))
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_glob = max(n_glob, 1 if global_fraction > 0 else 0)
    n_test = min(n_test, max(n - 1, 0))
    n_glob = min(n_glob, max(n - n_test - 1, 0))
    out = {}
    for rank, idx in enumerate(order):
        out[keys[idx]] = "test" if rank < n_test else ("global" if rank < n_test + n_glob else "train")
    return out


def add_split_column(pairs: datasets.Dataset, assignment: dict[str, str]) -> datasets.Dataset:
    """Add the ``split`` column from a split-key assignment (keys not assigned become ``train``).

    Each distinct split key is looked up once; rows take their key's split through its dictionary code.
    """
    codes, keys = dictionary_codes(pair_table(pairs).column("split_key"))
    label_codes, labels = dictionary_codes(pa.array([assignment.get(k, "train") for k in keys.to_pylist()], pa.string()))
    split = labels.take(pa.array(label_codes[codes]))
    if "split" in pairs.column_names:
        pairs = pairs.remove_columns("split")
    return pairs.add_column("split", split)


def kfold_keys(keys: list[str], k: int, seed: int) -> list[list[str]]:
    """Split keys into ``k`` folds (deterministic for a seed); ``k`` is capped by ``len(keys)``."""
    keys = sorted(set(keys))
    if not keys:
        return [[] for _ in range(max(k, 1))]
    k = max(1, min(k, len(keys)))
    order = np.random.default_rng(seed).permutation(len(keys))
    folds: list[list[str]] = [[] for _ in range(k)]
    for rank, idx in enumerate(order):
        folds[rank % k].append(keys[idx])
    return folds


class SplitData(NamedTuple):
    """The split of a loaded data set (:func:`split_data`)."""

    pairs: datasets.Dataset
    """Every pair, with a ``split`` column (``train``, ``test``, ``global``)."""
    global_pairs: PairRows | None
    """The offline global model's training pairs (None for a pretrained global model)."""
    global_source: str
    """``holdout``, ``pooled`` or ``none``, as resolved from ``auto``."""


def split_data(cfg: RunConfig, data: PreferenceData) -> SplitData:
    """One partition of split keys, shared by every group and by the offline global model."""
    global_source = cfg.data.global_source
    if global_source == "auto":
        if cfg.model.global_model != PACKAGED_MODEL:
            global_source = "none"
        else:
            global_source = "pooled" if data.global_pairs is not None else "holdout"
    if global_source == "pooled" and data.global_pairs is None:
        raise InputError(f"--global-source pooled: data set {data.name!r} has no population pairs; for your own pairs or "
                         "ratings name the groups that are the population with --population-groups NAME[,NAME] "
                         "(YAML data.population_groups), or use --global-source holdout", field="global_source")
    if cfg.model.global_model == PACKAGED_MODEL and global_source == "none":
        raise InputError("the packaged global model needs training data: --global-source holdout or pooled", field="global_source")
    test_fraction = cfg.data.test_fraction if cfg.data.test_fraction is not None else data.default_test_fraction
    keys = distinct_strings(data.pairs, "split_key")
    if global_source == "pooled":
        keys |= distinct_strings(data.global_pairs, "split_key")
    assignment = assign_splits(
        sorted(keys),
        seed=cfg.data.split_seed,
        test_fraction=test_fraction,
        global_fraction=cfg.data.global_fraction if global_source == "holdout" else 0.0,
    )
    pairs = add_split_column(data.pairs, assignment)
    glob_pairs = None
    if global_source == "holdout":
        glob_pairs = PairRows(pairs, rows_in_split(pairs, "global"))  # every group, population mix
    elif global_source == "pooled":
        gp = add_split_column(data.global_pairs, assignment)
        glob_pairs = PairRows(gp, rows_in_split(gp, "train"))
    return SplitData(pairs, glob_pairs, global_source)


def check_global_pairs(cfg: RunConfig, glob_pairs: PairRows | None, global_source: str) -> None:
    """Refuse a split that leaves the packaged global model without a training pair (an ``InputError``
    naming the flags that decide it, never an ``IndexError`` in the head training)."""
    if cfg.model.global_model != PACKAGED_MODEL or glob_pairs is None or len(glob_pairs.rows) > 0:
        return
    if global_source == "holdout":
        raise InputError(
            f"the split leaves no held-apart pair to train the global model (--global-fraction "
            f"{cfg.data.global_fraction}, --test-fraction {cfg.data.test_fraction if cfg.data.test_fraction is not None else 'default'}, "
            "too few split keys): lower --test-fraction, raise --global-fraction, or give more data",
            field="global_fraction")
    raise InputError("the population groups have no pair on train split keys to train the global model "
                     "(--population-groups): name other population groups or lower --test-fraction",
                     field="population_groups")


def rows_in_split(pairs: Any, part: str) -> np.ndarray:
    """Positions of the pairs whose ``split`` column is ``part``."""
    return np.flatnonzero(pc.equal(pair_table(pairs).column("split"), part).to_numpy())
