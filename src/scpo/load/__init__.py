"""Step 1 of the pipeline: load a preference data set into canonical pairs (see :mod:`.base`).

``load_data(cfg)`` dispatches on ``cfg.dataset``:

* ``synthetic`` — the embedded default (:mod:`.synthetic`), generated, no download;
* ``goqa`` — GlobalOpinionQA, Hub or local CSV (:mod:`.goqa`);
* ``prism`` — PRISM, Hub or local JSONL (:mod:`.prism`);
* ``pairs`` / ``ratings`` — the user's own files (:mod:`.files`).
"""

from __future__ import annotations

from ..config import DataConfig
from .base import (
    PAIR_COLUMNS,
    PairRows,
    PreferenceData,
    check_pairs,
    column_strings,
    dictionary_codes,
    distinct_strings,
    file_sha256,
    pair_table,
)
from .countries import resolve_groups
from .files import load_pairs, load_ratings
from .goqa import load_goqa
from .prism import load_prism
from .splits import add_split_column, assign_splits, check_global_pairs, kfold_keys, rows_in_split, split_data
from .synthetic import generate

__all__ = [
    "PAIR_COLUMNS",
    "PairRows",
    "PreferenceData",
    "add_split_column",
    "assign_splits",
    "check_global_pairs",
    "check_pairs",
    "column_strings",
    "dictionary_codes",
    "distinct_strings",
    "file_sha256",
    "kfold_keys",
    "load_data",
    "pair_table",
    "rows_in_split",
    "split_data",
]


def load_data(cfg: DataConfig) -> PreferenceData:
    """Load the data set ``cfg`` names, in canonical form (not yet split)."""
    if cfg.dataset == "synthetic":
        data = generate(cfg.synthetic_preset, seed=cfg.synthetic_seed)
        if cfg.groups:  # every group stays in the population; only the requested ones are trained
            data.group_matches = resolve_groups(cfg.groups, data.default_groups, file="synthetic")
        return data
    if cfg.dataset == "goqa":
        return load_goqa(cfg)
    if cfg.dataset == "prism":
        return load_prism(cfg)
    if cfg.dataset == "pairs":
        return load_pairs(cfg)
    if cfg.dataset == "ratings":
        return load_ratings(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")
