"""The grid search of every mode: cells, validation folds, and one rule to choose.

Hyper-parameters are chosen per (group, method, seed) on ``k`` validation folds carved from the
group's *training* split keys (:func:`folds`), never on test pairs; the model is then refit on all
of the group's training pairs with the choice. Head mode and the Trainer modes (full, LoRA) use the
same folds and the same rule (:func:`choose`): the mean validation accuracy over the folds (a fold
without validation pairs does not count) of every (cell, steps) point, the highest wins, the first
in grid order (cells in the order of :func:`cells`, then steps ascending) on a tie.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .load.splits import kfold_keys

__all__ = ["Choice", "GridSpec", "choose", "folds"]


@dataclass(frozen=True)
class GridSpec:
    """The grid of one run: (learning rate, pull) cells, step counts and validation folds."""

    cells: tuple[tuple[float, float], ...]
    steps: tuple[int, ...]
    val_folds: int

    @classmethod
    def of(cls, learning_rates: Sequence[float], pulls: Sequence[float], steps: Sequence[int], val_folds: int) -> GridSpec:
        return cls(tuple(itertools.product(learning_rates, pulls)), tuple(sorted(set(int(s) for s in steps))), int(val_folds))

    @property
    def searched(self) -> bool:
        """Whether there is anything to choose (more than one point and more than one fold)."""
        return self.val_folds > 1 and (len(self.cells) > 1 or len(self.steps) > 1)

    def default(self) -> Choice:
        """The choice without a search: the first cell, the most steps."""
        lr, pull = self.cells[0]
        return Choice(lr, pull, self.steps[-1])

    def record(self) -> dict[str, Any]:
        """The ``grid`` block of results.json, without its choices."""
        return {"cells": [{"learning_rate": lr, "pull": p} for lr, p in self.cells], "steps": list(self.steps),
                "val_folds": self.val_folds, "searched": self.searched, "choices": {}}


@dataclass(frozen=True)
class Choice:
    """One (group, method, seed)'s choice and the validation accuracies it was made on."""

    learning_rate: float
    pull: float
    steps: int
    val_accuracy: float | None = None
    val_accuracy_grid: list[list[float]] | None = None
    """Mean validation accuracy of every [cell][steps] point (NaN where no fold measured it)."""

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"learning_rate": self.learning_rate, "pull": self.pull, "steps": self.steps}
        if self.val_accuracy is not None:
            out["val_accuracy"] = self.val_accuracy
            out["val_accuracy_grid"] = self.val_accuracy_grid
        return out


def folds(train_rows: np.ndarray, split_keys: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(fit rows, validation rows)`` of each of ``k`` folds of ``train_rows`` by their split keys.

    ``split_keys[i]`` is row ``train_rows[i]``'s key; every key's rows fall in one fold (deterministic
    for ``seed``, the split seed).
    """
    keys = np.asarray(split_keys)
    out = []
    for fold in kfold_keys(sorted(set(keys.tolist())), k, seed=seed):
        in_fold = np.isin(keys, fold)
        out.append((train_rows[~in_fold], train_rows[in_fold]))
    return out


def choose(spec: GridSpec, accuracies: np.ndarray) -> Choice:
    """The rule: ``accuracies[fold, cell, step]`` (NaN where not measured) -> the choice.

    The mean over folds that measured a point; the highest mean wins, the first in grid order on a tie.
    """
    acc = np.asarray(accuracies, dtype=float)
    measured = ~np.isnan(acc)
    cnt = measured.sum(0)
    mean = np.where(cnt > 0, np.where(measured, acc, 0.0).sum(0) / np.maximum(cnt, 1), np.nan)
    ci, si = np.unravel_index(int(np.argmax(np.nan_to_num(mean, nan=-1.0))), mean.shape)  # first maximum wins ties
    lr, pull = spec.cells[ci]
    return Choice(lr, pull, spec.steps[si], float(mean[ci, si]), mean.tolist())
