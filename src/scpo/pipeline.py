"""The main job, ``scpo run``: load -> global model -> score -> select -> train -> evaluate -> report.

Read top to bottom: :func:`run` calls one function per step, each in the module named after it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch

from .config import PACKAGED_MODEL, RunConfig
from .errors import DataWarning, InputError
from .evaluate import accuracy
from .load import (
    PairRows,
    PreferenceData,
    add_split_column,
    assign_splits,
    check_pairs,
    column_strings,
    distinct_strings,
    kfold_keys,
    load_data,
    pair_table,
)
from .model import RewardModel, load_reward_model
from .parallel import is_main_process
from .score import FeatureCache, TextIndex, distinct_texts, encode_features
from .select import preference_probability, select_pairs
from .train import HeadJob, grid_cells, method_pairs, train_heads, val_accuracy

log = logging.getLogger("scpo")

__all__ = ["Experiment", "prepare", "run"]

_CHUNK = 1 << 15
"""Pairs per chunk of the pair-difference and margin computations (bounded temporaries)."""


def pair_differences(features: np.ndarray, chosen_row: np.ndarray, rejected_row: np.ndarray) -> np.ndarray:
    """``features[chosen_row] - features[rejected_row]`` (float32), a chunk of pairs at a time into one array."""
    out = np.empty((len(chosen_row), features.shape[1]), dtype=np.float32)
    for s in range(0, len(chosen_row), _CHUNK):
        np.subtract(features[chosen_row[s : s + _CHUNK]], features[rejected_row[s : s + _CHUNK]], out=out[s : s + _CHUNK])
    return out


def pair_margins(features: np.ndarray, chosen_row: np.ndarray, rejected_row: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Margins ``(f[chosen] - f[rejected]) @ weight`` of a linear head, in float64, a chunk of pairs at a time."""
    w = np.asarray(weight, dtype=np.float64)
    out = np.empty(len(chosen_row))
    for s in range(0, len(chosen_row), _CHUNK):
        c, r = chosen_row[s : s + _CHUNK], rejected_row[s : s + _CHUNK]
        out[s : s + len(c)] = (features[c].astype(np.float64) - features[r]) @ w
    return out


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
    """Text row (of ``text_index`` and ``features``) of every pair's chosen response."""
    rejected_row: np.ndarray
    contested: np.ndarray | None
    oracle_margin: np.ndarray | None
    text_index: TextIndex
    """Every distinct (prompt, response) scored: the group pairs' and the global model's."""
    features: np.ndarray
    rm: RewardModel
    global_info: dict[str, Any]
    delta: np.ndarray
    """Global model's margin of every pair."""
    score_stats: dict[str, Any] = field(default_factory=dict)
    timing_s: dict[str, float] = field(default_factory=dict)
    """Wall time of each part of :func:`prepare`."""
    _diffs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """The last :meth:`diffs`, with the arrays it was computed from (shared by ``dataclasses.replace`` copies)."""

    def texts(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """The (prompts, responses) of some text rows, as lists: call it one chunk of rows at a time."""
        return self.text_index.texts(rows)

    def diffs(self) -> torch.Tensor:
        """Every pair's chosen minus rejected features ``[pairs, dim]`` (float32), computed once.

        Cached while ``features``, ``chosen_row`` and ``rejected_row`` are the same objects, so the
        copies a sweep makes with another config share it, and a copy with other rows recomputes.
        """
        source = (self.features, self.chosen_row, self.rejected_row)
        cached = self._diffs.get("source")
        if cached is None or any(a is not b for a, b in zip(cached, source)):
            self._diffs.clear()  # the previous array is freed before the next one is made
            self._diffs.update(source=source, diffs=torch.from_numpy(pair_differences(*source)))
        return self._diffs["diffs"]


def _resolve_groups(data: PreferenceData) -> list[str]:
    """The groups to train: those the loader resolved from ``--groups``, else its defaults."""
    present = distinct_strings(data.pairs, "group")
    groups = [g for g in (list(data.group_matches) or list(data.default_groups)) if g in present]
    if not groups:
        raise InputError(f"data set {data.name!r}: none of the requested groups has pairs", field="groups")
    return groups


def split_data(cfg: RunConfig, data: PreferenceData) -> tuple[Any, PairRows | None, str]:
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
        glob_pairs = PairRows(pairs, _rows_in_split(pairs, "global"))  # every group, population mix
    elif global_source == "pooled":
        gp = add_split_column(data.global_pairs, assignment)
        glob_pairs = PairRows(gp, _rows_in_split(gp, "train"))
    return pairs, glob_pairs, global_source


def _rows_in_split(pairs: Any, part: str) -> np.ndarray:
    return np.flatnonzero(pc.equal(pair_table(pairs).column("split"), part).to_numpy())


# --- reliability: helpers of prepare()'s input validation (owned by the reliability work) -------
_DROP_COUNTS = ("identical_pairs", "duplicate_pairs", "ties", "identical_texts", "single_response_units",
                "single_response_interactions", "empty_texts", "empty_distributions", "unusable_rows",
                "dropped_small_gap")


def _data_file(data: PreferenceData) -> str:
    prov = data.provenance or {}
    if "file" in prov:
        return str(prov["file"])
    files = prov.get("files")
    if isinstance(files, dict) and files:
        return str(list(files)[-1])  # prism: the utterances file holds the texts
    return str(prov.get("hub_id", data.name))


def _warn_groups_without_pairs(data: PreferenceData) -> None:
    """A requested group whose rows all became unusable (ties, identical texts...): warn, or fail if all did."""
    present = distinct_strings(data.pairs, "group")
    requested = list(data.group_matches)
    per_group = data.stats.get("per_group", {}) if isinstance(data.stats, dict) else {}

    def why(g: str) -> str:
        st = per_group.get(g, {})
        parts = [f"{st[k]} {k.replace('_', ' ')}" for k in _DROP_COUNTS if isinstance(st.get(k), int) and st[k]]
        return f" ({', '.join(parts)})" if parts else ""

    empty = [g for g in requested if g not in present]
    if requested and len(empty) == len(requested):
        raise InputError(f"no requested group has a usable pair: {'; '.join(g + why(g) for g in empty)}",
                         file=_data_file(data), field="group")
    for g in empty:
        warnings.warn(f"{_data_file(data)}: group {g!r} has no usable pair{why(g)}: it is left out of the run",
                      DataWarning, stacklevel=3)
    dropped = {k: data.stats[k] for k in _DROP_COUNTS if isinstance(data.stats.get(k), int) and data.stats[k]}
    if dropped:
        log.info("data %s: dropped and counted (results.json data.stats): %s", data.name,
                 ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()))


def _warn_groups_after_split(groups: list[str], group: np.ndarray, split: np.ndarray) -> None:
    for g in groups:
        m = group == g
        for part in ("train", "test"):
            if not (m & (split == part)).any():
                what = ("its models are the global model (0 pairs)" if part == "train"
                        else "its accuracy cannot be measured (NaN)")
                warnings.warn(f"group {g!r} has no {part} pair after the split by split key: {what}",
                              DataWarning, stacklevel=3)


def _text_describer(data: PreferenceData, parts: list[tuple[PairRows, np.ndarray, np.ndarray]]):
    """``describe(text_row)`` -> "file, row N, field 'F'" of the first pair holding that text.

    ``parts`` are ``(pairs and rows, chosen text rows, rejected text rows)``; without a
    ``source_row`` column, N counts the part's rows.
    """
    file = _data_file(data)
    cols = dict(getattr(data, "provenance", {}).get("columns") or {})
    response_field = {"ratings": cols.get("response", "response"), "prism": "model_response", "goqa": "options"}

    def describe(j: int) -> str:
        for (ds, rows), crow, rrow in parts:
            for name, arr in (("chosen", crow), ("rejected", rrow)):
                hit = np.flatnonzero(arr == j)
                if len(hit):
                    i = int(hit[0])
                    pair = ds[int(rows[i])]
                    row = int(pair["source_row"]) if "source_row" in ds.column_names else i + 1
                    fld = response_field.get(data.name, cols.get(name, name))
                    return f"{file}, row {row}, field {fld!r} (pair {pair['pair_id']})"
        return f"{file}, text {j + 1}"

    return describe
# --- end reliability helpers -------------------------------------------------------------------


def prepare(cfg: RunConfig, progress: bool = True, rm: RewardModel | None = None, *,
            data: PreferenceData | None = None, features_file: str | Path | None = None) -> Experiment:
    """Steps 1-4: load and split the data, get the global model, score every text, compute margins.

    ``data``: already loaded data (e.g. a memory-mapped pair table, :func:`scpo.scale.open_pairs`)
    instead of ``load_data(cfg.data)``. ``features_file``: write the features to this ``.npy`` file,
    memory-mapped, instead of keeping them in memory. Every step reads the pairs as Arrow columns;
    texts become Python strings only a chunk at a time.
    """
    timing: dict[str, float] = {}
    t = time.perf_counter()
    # 1. load
    if data is None:
        data = load_data(cfg.data)
    if len(data.pairs) == 0:
        raise InputError(f"data set {data.name!r} has no pairs")
    check_pairs(data.pairs, data.name)
    # --- reliability (input validation): requested groups the data left without a pair ---------
    _warn_groups_without_pairs(data)
    # --- end reliability -------------------------------------------------------------------------
    groups = _resolve_groups(data)
    pairs, glob_pairs, global_source = split_data(cfg, data)
    table = pair_table(pairs)
    keep_rows = np.flatnonzero(np.isin(column_strings(table.column("group")), groups)
                               & pc.not_equal(table.column("split"), "global").to_numpy())
    group, split = column_strings(table.column("group"), keep_rows), column_strings(table.column("split"), keep_rows)
    # --- reliability (input validation): a group with no training or no test pair after the split --
    _warn_groups_after_split(groups, group, split)
    # --- end reliability -------------------------------------------------------------------------
    timing["load and split"] = time.perf_counter() - t

    # texts: every distinct (prompt, response) of the group pairs and the global pairs
    t = time.perf_counter()
    sources = [(PairRows(pairs, keep_rows), table)]  # (pairs and rows, their Arrow table)
    if glob_pairs is not None:
        sources.append((glob_pairs, table if glob_pairs.pairs is pairs else pair_table(glob_pairs.pairs)))
    text_index, text_rows = distinct_texts([(tab, pr.rows) for pr, tab in sources])
    chosen_row, rejected_row = text_rows[0]
    g_chosen, g_rejected = text_rows[1] if glob_pairs is not None else (None, None)
    timing["distinct texts"] = time.perf_counter() - t

    # 2. the global model
    if rm is None:
        rm = load_reward_model(cfg.model)
    # 3. score (features, cached)
    t = time.perf_counter()
    cache = FeatureCache(cfg.model.cache_dir, rm.feature_key())
    out = None
    if features_file is not None:
        out = np.lib.format.open_memmap(features_file, mode="w+", dtype=np.float32, shape=(len(text_index), rm.feature_dim))
    # --- reliability: truncation warnings name the file, row and field of the first truncated text --
    describe = _text_describer(data, [(pr, c, r) for (pr, _), (c, r) in zip(sources, text_rows)])
    feats, stats = encode_features(rm, texts=text_index, out=out, batch_size=cfg.model.score_batch_size, cache=cache,
                                   progress=progress, describe=describe)
    # --- end reliability -------------------------------------------------------------------------
    stats = dict(stats)
    stats["corrupt_cache_shards"] = list(cache.corrupt_shards)
    timing["score"] = time.perf_counter() - t
    t = time.perf_counter()
    global_info: dict[str, Any] = {"model": rm.name, "source": global_source, "formatter": rm.formatter.to_dict()}
    if cfg.model.global_model == PACKAGED_MODEL:
        gd = torch.from_numpy(pair_differences(feats, g_chosen, g_rejected))
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
        del gd
    else:
        global_info.update(trained_on="pretrained reward model (its own training data)")
    global_info["fingerprint"] = rm.fingerprint()
    w, _ = rm.head_params()
    delta = pair_margins(feats, chosen_row, rejected_row, w.numpy())
    timing["global head and margins"] = time.perf_counter() - t

    def optional(name: str, dtype: type) -> np.ndarray | None:
        return np.asarray(table.column(name).to_numpy()[keep_rows], dtype=dtype) if name in table.column_names else None

    return Experiment(
        cfg=cfg, data=data, groups=groups, group=group, split=split,
        split_key=column_strings(table.column("split_key"), keep_rows), chosen_row=chosen_row, rejected_row=rejected_row,
        contested=optional("contested", bool), oracle_margin=optional("oracle_margin", float), text_index=text_index,
        features=feats, rm=rm, global_info=global_info, delta=delta, score_stats=stats, timing_s=timing,
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
            train_rows = np.flatnonzero((exp.group == g) & (exp.split == "train"))
            train_keys = exp.split_key[train_rows]
            folds = kfold_keys(sorted(set(train_keys)), tc.val_folds, seed=cfg.data.split_seed)
            for fi, fold in enumerate(folds):
                in_fold = np.isin(train_keys, fold)  # the group's rows only: split keys are strings
                fit_rows, val_rows = train_rows[~in_fold], train_rows[in_fold]
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


def _fit(exp: Experiment, methods: list[str], seeds: list[int], progress: bool) -> tuple[dict, dict, dict, dict]:
    """Train every (group, method, seed) of one split: ``(test margins, pairs used, grid, models)``."""
    if exp.cfg.train.mode == "head":
        thetas, grid = fit_heads(exp, methods, seeds, progress=progress)
        dt = exp.diffs()[torch.from_numpy(np.flatnonzero(exp.split == "test"))].double().numpy()
        margins = {k: dt @ v[0].astype(np.float64) for k, v in thetas.items()}
        used = {k: (v[1], v[2]) for k, v in thetas.items()}
        models = {k: v[0] for k, v in thetas.items()}
        return margins, used, grid, models
    from .trainer import fit_trainer_models

    return fit_trainer_models(exp, methods, seeds, progress=progress)


def group_sets(exp: Experiment) -> dict[str, list[str]]:
    """The sets of groups averaged in the summary: all groups, and minority/majority when the data names them."""
    minority = exp.data.stats.get("minority_groups") if isinstance(exp.data.stats, dict) else None
    sets = {"all_groups": list(exp.groups)}
    if minority:
        sets["minority_groups"] = [g for g in exp.groups if g in minority]
        sets["majority_groups"] = [g for g in exp.groups if g not in minority]
    return {k: v for k, v in sets.items() if v}


def split_margins(exp: Experiment, margins: dict[tuple, np.ndarray], pairs_used: dict[tuple, tuple[int, float]]):
    """The test-set view of one split that :func:`scpo.evaluate.evaluate_splits` needs."""
    from .evaluate import SplitMargins

    test = exp.split == "test"
    return SplitMargins(
        split_seed=exp.cfg.data.split_seed, test_group=exp.group[test], clusters=exp.split_key[test],
        global_margin=exp.delta[test], margins=margins, used=pairs_used,
        contested=exp.contested[test] if exp.contested is not None else None,
        oracle_margin=exp.oracle_margin[test] if exp.oracle_margin is not None else None,
    )


def evaluate_margins(exp: Experiment, margins: dict[tuple, np.ndarray], pairs_used: dict[tuple, tuple[int, float]],
                     seeds: list[int], splits: list | None = None) -> dict[str, Any]:
    """Accuracy tables, CIs and paired tests from test margins of every (group, method, seed).

    One split (``exp``'s) unless ``splits`` (a :class:`scpo.evaluate.SplitMargins` per split seed,
    ``exp``'s first) is given. Full/LoRA runs come here the same way as head runs: only margins matter.
    """
    from .evaluate import evaluate_splits

    present = list(dict.fromkeys(k[1] for k in margins))
    methods = [m for m in exp.cfg.train.methods if m in present] + [m for m in present if m not in exp.cfg.train.methods]
    splits = list(splits) if splits else [split_margins(exp, margins, pairs_used)]
    ev = evaluate_splits(splits, exp.groups, methods, seeds, group_sets=group_sets(exp), n_boot=exp.cfg.output.n_boot)
    covers = ", ".join(ev["ci"]["resamples"])
    missing = "; ".join(ev["ci"]["does_not_cover"])
    ev["split_unit_ci"] = (f"95% percentile bootstrap over test {exp.data.split_unit}s; covers {covers}"
                           + (f"; does not cover {missing}" if missing else ""))
    return ev


def summarize(exp: Experiment, ev: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Averages over groups (and over minority/majority groups when the data names them), with CIs;
    on synthetic data also the share of the global->oracle gap each method closes."""
    out = ev["summary"]
    for rows in out.values():
        if "oracle" in rows and "global" in rows:
            og, gg = rows["oracle"]["all"], rows["global"]["all"]
            for m in methods:
                rows[m]["gap_closed"] = float((rows[m]["all"] - gg) / (og - gg)) if og != gg else float("nan")
    return out


def run(cfg: RunConfig | None = None, progress: bool = True, exp: Experiment | None = None) -> dict[str, Any]:
    """Run the whole experiment ``cfg`` describes and write its run directory; return results.

    With ``train.split_seeds`` the whole comparison (global model, grid search, training) is
    repeated on each split seed's train/test partition and every statistic pools the splits; the
    first split seed is the primary one (its models, grid and selection are saved). With
    ``train.curve_fractions`` learning curves and efficiency ratios are added
    (:mod:`scpo.curves`), with ``train.sweep_taus``/``sweep_betas`` a tau x beta sweep on the
    primary split (:mod:`scpo.sweep`).
    """
    from . import report
    from .reliability import RunLock

    cfg = cfg or RunConfig()
    out_dir = Path(cfg.output.output_dir)
    t0 = time.time()
    main_process = is_main_process()  # under accelerate launch, rank 0 writes
    tc = cfg.train
    with RunLock(out_dir) if main_process else contextlib.nullcontext():
        methods = list(dict.fromkeys(tc.methods))
        seeds = list(dict.fromkeys(tc.seeds))
        split_seeds = list(dict.fromkeys(tc.split_seeds)) or [cfg.data.split_seed]
        if exp is not None:
            first = exp.cfg.data.split_seed
            split_seeds = [first] + [s for s in split_seeds if s != first]
        fractions = sorted(set(tc.curve_fractions))
        curve_methods = list(dict.fromkeys(tc.curve_methods)) if fractions else []
        sweep_on = bool(tc.sweep_taus or tc.sweep_betas)
        if sweep_on and tc.mode != "head":
            raise InputError("the tau x beta sweep runs in head mode only (--mode head)", field="sweep_taus")
        timing: dict[str, float] = {"prepare": 0.0, "train": 0.0, "curves": 0.0, "sweep": 0.0}
        splits, curve_splits, split_info = [], [], []
        primary = None
        rm = exp.rm if exp is not None else None
        head0 = None
        for i, ss in enumerate(split_seeds):
            t = time.time()
            cfg_s = cfg if ss == cfg.data.split_seed else cfg.replace(split_seed=ss)
            if i > 0 and tc.mode != "head":
                cfg_s = cfg_s.replace(output_dir=str(out_dir / "splits" / f"split-seed-{ss}"), save_models=False)
            exp_s = exp if (i == 0 and exp is not None) else prepare(cfg_s, progress=progress, rm=rm)
            rm = exp_s.rm
            if i == 0:
                head0 = rm.head_params()
            timing["prepare"] += time.time() - t
            t = time.time()
            margins, used, grid, models = _fit(exp_s, methods, seeds, progress)
            timing["train"] += time.time() - t
            splits.append(split_margins(exp_s, margins, used))
            if fractions:
                from .curves import fit_curves

                t = time.time()
                curve_splits.append(fit_curves(exp_s, curve_methods, seeds, fractions, margins, used, progress=progress))
                timing["curves"] += time.time() - t
            split_info.append({
                "split_seed": ss, "global_model_trained_on_pairs": exp_s.global_info.get("trained_on_pairs"),
                "train_pairs": int((exp_s.split == "train").sum()), "test_pairs": int((exp_s.split == "test").sum()),
                "test_units": int(len(set(exp_s.split_key[exp_s.split == "test"]))),
            })
            if i == 0:
                primary = (exp_s, selection_summary(exp_s), grid, models)
                if sweep_on:
                    from .sweep import run_sweep

                    t = time.time()
                    sweep_res = run_sweep(exp_s, tc.sweep_taus or [cfg.select.tau], tc.sweep_betas or [cfg.select.beta],
                                          seeds, reference=(margins, used), progress=progress)
                    timing["sweep"] += time.time() - t
        exp, sel, grid, models = primary
        if len(split_seeds) > 1 and head0 is not None:
            rm.set_head(head0[0], head0[1])  # later splits trained their own global head on the shared model
        t = time.time()
        ev = evaluate_margins(exp, splits[0].margins, splits[0].used, seeds, splits=splits)
        results = {
            "scpo_results_version": 2,
            "synthetic_data": exp.data.synthetic,
            "data": {
                "name": exp.data.name, "split_unit": exp.data.split_unit, "groups": exp.groups,
                "group_matches": exp.data.group_matches, "stats": exp.data.stats, "provenance": exp.data.provenance,
                "split_seed": split_seeds[0], "split_seeds": split_seeds,
            },
            "global_model": exp.global_info,
            "scoring": exp.score_stats,
            "selection": sel,
            "select": {"tau": cfg.select.tau, "beta": cfg.select.beta},
            "methods": methods,
            "seeds": seeds,
            "split_seeds": split_seeds,
            "splits": split_info,
            "mode": tc.mode,
            "grid": grid,
            **{k: v for k, v in ev.items() if not k.startswith("_")},
        }
        results["summary"] = summarize(exp, ev, methods)
        if fractions:
            from .curves import curve_tables

            results["curves"] = curve_tables(ev, curve_splits, exp.groups, curve_methods, seeds, fractions, group_sets(exp))
        if sweep_on:
            results["sweep"] = sweep_res
        timing["evaluate"] = time.time() - t
        results["timing_s"] = timing
        results["wall_time_s"] = time.time() - t0
        if main_process:
            from .reliability import work_summary

            results["work"] = work_summary(out_dir)
            report.write_run(out_dir, cfg, results, exp=exp, models=models)
    return results
