"""Steps 1-4 of a run: the :class:`Experiment` -- split data, global model, features, margins.

:func:`prepare` loads and splits the data (one partition of split keys for every group and the
offline global model), gets the global model (trains the packaged encoder's score layer on the
population's pairs), scores every distinct text once (cached) and computes every pair's global
margin. Everything after it (fitting, evaluation, studies, report) reads an :class:`Experiment`.
:func:`inspect_data` is the same first step without the model: what ``scpo data inspect`` shows.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import PACKAGED_MODEL, RunConfig
from .errors import DataWarning, InputError
from .evaluate import SplitMargins, accuracy
from .grid import folds
from .heads import HeadJob, train_heads
from .load import (
    PairRows,
    PreferenceData,
    check_global_pairs,
    check_pairs,
    column_strings,
    distinct_strings,
    load_data,
    pair_table,
    split_data,
)
from .model import RewardModel, load_reward_model, model_label
from .score import FeatureCache, TextIndex, distinct_texts, encode_features
from .selection import preference_probability, select_pairs
from .solver import HeadProblem, choose_pull, feature_scale, solve_heads, validation_metrics

log = logging.getLogger("scpo")

__all__ = ["Experiment", "FitResult", "PairsUsed", "group_sets", "inspect_data", "pair_differences", "pair_margins",
           "prepare", "selection_summary", "split_margins"]


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
    pooler_inputs: np.ndarray | None = None
    """``--head-layers pooler``: every text's pooler input (the first token's hidden state), row-aligned
    with ``features``, which then are the global model's pooled features (its score layer's input)."""
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


def resolve_groups(data: PreferenceData) -> list[str]:
    """The groups to train: those the loader resolved from ``--groups``, else its defaults."""
    present = distinct_strings(data.pairs, "group")
    groups = [g for g in (list(data.group_matches) or list(data.default_groups)) if g in present]
    if not groups:
        raise InputError(f"data set {data.name!r}: none of the requested groups has pairs", field="groups")
    return groups


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


def _experiment_parts(data: PreferenceData, groups: list[str], pairs: Any, glob_pairs: PairRows | None,
                      global_source: str) -> list[tuple[PairRows, Any]]:
    """The pairs an experiment holds, as ``(pairs and rows, their Arrow table)`` parts.

    The target groups' train and test pairs; the test pairs of every other group in the data (the
    pooled test set is everyone's: ``--groups`` chooses what is trained, never what is measured);
    and, when population groups of the user's file trained the global model, their test pairs too
    (population pairs never train a group model, and their train keys trained the global one).
    """
    table = pair_table(pairs)
    g_all, s_all = column_strings(table.column("group")), column_strings(table.column("split"))
    target = np.isin(g_all, groups)
    parts = [(PairRows(pairs, np.flatnonzero((target & (s_all != "global")) | (~target & (s_all == "test")))), table)]
    if global_source == "pooled" and glob_pairs is not None and data.stats.get("population_groups"):
        gtab = pair_table(glob_pairs.pairs)
        gg, gs = column_strings(gtab.column("group")), column_strings(gtab.column("split"))
        rows = np.flatnonzero((gs == "test") & ~np.isin(gg, np.unique(g_all)))  # groups also in pairs are there already
        if len(rows):
            parts.append((PairRows(glob_pairs.pairs, rows), gtab))
    return parts


def _global_training_data(glob_pairs: PairRows | None) -> dict[str, Any]:
    """What trained the offline global model: its groups (with pair counts) and split keys."""
    if glob_pairs is None or not len(glob_pairs.rows):
        return {}
    tab = pair_table(glob_pairs.pairs)
    g = column_strings(tab.column("group"), glob_pairs.rows)
    names, counts = np.unique(g, return_counts=True)
    return {"trained_on_groups": {str(n): int(c) for n, c in zip(names, counts)},
            "trained_on_split_keys": int(len(set(column_strings(tab.column("split_key"), glob_pairs.rows).tolist())))}


def _solve_global_layer(gd: torch.Tensor, keys: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The packaged global score layer solved to convergence (``--head-solver newton``): plain L2 towards
    zero, its strength chosen from ``head_pulls`` on k folds of the training pairs' split keys."""
    pulls = tuple(sorted(set(float(p) for p in cfg.train.head_pulls), reverse=True))
    k = cfg.train.val_folds if cfg.train.val_folds > 1 else 3  # the global layer is always chosen on folds
    rows = np.arange(len(gd))
    scale = feature_scale(gd)
    fold_list = folds(rows, keys, k, seed=cfg.data.split_seed)
    problems = [HeadProblem(fit, np.ones(len(fit))) for fit, _ in fold_list]
    sol = solve_heads(gd, problems, pulls, scale=scale)
    acc, nll = validation_metrics(gd, [val for _, val in fold_list], sol.theta)  # [folds, pulls]
    criterion = cfg.train.head_criterion
    pick = choose_pull(nll if criterion == "log_loss" else acc, pulls, criterion)
    final = solve_heads(gd, [HeadProblem(rows, np.ones(len(rows)))], [pick.pull], scale=scale)[0, 0]
    if pick.edge:
        warnings.warn(f"the global score layer's pull {pick.pull:g} sits at the {pick.edge} edge of --head-pulls "
                      f"{list(pulls)}: widen the grid", stacklevel=3)
    mean_acc = np.nanmean(acc, axis=0)
    mean_nll = np.nanmean(nll, axis=0)
    return final.theta.astype(np.float32), {
        "solver": "newton", "criterion": criterion, "pull": pick.pull, "pull_edge": pick.edge,
        "val_accuracy": float(mean_acc[pick.index]), "val_log_loss": float(mean_nll[pick.index]), "val_folds": k,
        "pulls": list(pulls), "val_accuracy_grid": mean_acc.tolist(), "val_log_loss_grid": mean_nll.tolist(),
        "solver_loss": final.loss, "solver_grad_norm": final.grad_norm, "solver_iterations": final.iterations,
        "solver_converged": final.converged}


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
    _warn_groups_without_pairs(data)
    groups = resolve_groups(data)
    pairs, glob_pairs, global_source = split_data(cfg, data)
    check_global_pairs(cfg, glob_pairs, global_source)
    parts = _experiment_parts(data, groups, pairs, glob_pairs, global_source)
    group = np.concatenate([column_strings(tab.column("group"), pr.rows) for pr, tab in parts])
    split = np.concatenate([column_strings(tab.column("split"), pr.rows) for pr, tab in parts])
    _warn_groups_after_split(groups, group, split)
    timing["load and split"] = time.perf_counter() - t

    # texts: every distinct (prompt, response) of the experiment's pairs and the global model's
    t = time.perf_counter()
    sources = list(parts)  # (pairs and rows, their Arrow table)
    if glob_pairs is not None:
        sources.append((glob_pairs, parts[0][1] if glob_pairs.pairs is pairs else pair_table(glob_pairs.pairs)))
    text_index, text_rows = distinct_texts([(tab, pr.rows) for pr, tab in sources])
    chosen_row = np.concatenate([c for c, _ in text_rows[: len(parts)]])
    rejected_row = np.concatenate([r for _, r in text_rows[: len(parts)]])
    g_chosen, g_rejected = text_rows[-1] if glob_pairs is not None else (None, None)
    timing["distinct texts"] = time.perf_counter() - t

    # 2. the global model
    if rm is None:
        rm = load_reward_model(cfg.model)
    # 3. score (features, cached)
    t = time.perf_counter()
    pooler = cfg.train.mode == "head" and cfg.train.head_layers == "pooler"
    cache = FeatureCache(cfg.model.cache_dir, rm.feature_key("pooler" if pooler else "score"))
    out = None
    if features_file is not None:
        out = np.lib.format.open_memmap(features_file, mode="w+", dtype=np.float32, shape=(len(text_index), rm.feature_dim))
    describe = _text_describer(data, [(pr, c, r) for (pr, _), (c, r) in zip(sources, text_rows)])
    pooler_inputs = None
    if pooler:
        # the pooler's inputs are cached; the global model's score-layer inputs follow through its own pooler
        spec = rm.pooler_spec
        pooler_inputs, stats = encode_features(rm, texts=text_index, batch_size=cfg.model.score_batch_size, cache=cache,
                                               progress=progress, describe=describe, module=rm.pooler_layer_of())
        feats = out if out is not None else np.empty((len(text_index), rm.feature_dim), dtype=np.float32)
        head = rm.pooler_head()
        for s0 in range(0, len(feats), _CHUNK):
            feats[s0 : s0 + _CHUNK] = head.pooled(pooler_inputs[s0 : s0 + _CHUNK], spec.activation)
    else:
        feats, stats = encode_features(rm, texts=text_index, out=out, batch_size=cfg.model.score_batch_size, cache=cache,
                                       progress=progress, describe=describe)
    stats = dict(stats)
    stats["corrupt_cache_shards"] = list(cache.corrupt_shards)
    timing["score"] = time.perf_counter() - t
    t = time.perf_counter()
    global_info: dict[str, Any] = {"model": model_label(rm.name), "source": global_source, "formatter": rm.formatter.to_dict()}
    if pooler:
        global_info["pooler"] = rm.pooler_spec.to_dict()
    if cfg.model.global_model == PACKAGED_MODEL:
        gd = torch.from_numpy(pair_differences(feats, g_chosen, g_rejected))
        if cfg.train.head_solver == "newton":
            gtab = pair_table(glob_pairs.pairs)
            w, solved = _solve_global_layer(gd, column_strings(gtab.column("split_key"), glob_pairs.rows), cfg)
            global_info.update(solved)
        else:
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
            else "population pairs of train split keys only (never a target group's test keys)",
            train_accuracy=accuracy((gd @ torch.from_numpy(w)).numpy()),
            **_global_training_data(glob_pairs),
        )
        del gd
    else:
        global_info.update(trained_on="pretrained reward model (its own training data)")
    global_info["fingerprint"] = rm.fingerprint()
    w, _ = rm.head_params()
    delta = pair_margins(feats, chosen_row, rejected_row, w.numpy())
    timing["global head and margins"] = time.perf_counter() - t

    def optional(name: str, dtype: type, missing: Any) -> np.ndarray | None:
        if all(name not in tab.column_names for _, tab in parts):
            return None
        return np.concatenate([np.asarray(tab.column(name).to_numpy()[pr.rows], dtype=dtype) if name in tab.column_names
                               else np.full(len(pr.rows), missing, dtype=dtype) for pr, tab in parts])

    return Experiment(
        cfg=cfg, data=data, groups=groups, group=group, split=split,
        split_key=np.concatenate([column_strings(tab.column("split_key"), pr.rows) for pr, tab in parts]),
        chosen_row=chosen_row, rejected_row=rejected_row,
        contested=optional("contested", bool, False), oracle_margin=optional("oracle_margin", float, np.nan),
        text_index=text_index,
        features=feats, rm=rm, global_info=global_info, delta=delta, score_stats=stats, timing_s=timing,
        pooler_inputs=pooler_inputs,
    )


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
    test = exp.split == "test"
    return SplitMargins(
        split_seed=exp.cfg.data.split_seed, test_group=exp.group[test], clusters=exp.split_key[test],
        global_margin=exp.delta[test], margins=margins, used=pairs_used,
        contested=exp.contested[test] if exp.contested is not None else None,
        oracle_margin=exp.oracle_margin[test] if exp.oracle_margin is not None else None,
    )


class PairsUsed(NamedTuple):
    """How much of a group's training data one model trained on."""

    n_pairs: int
    weight_sum: float


@dataclass
class FitResult:
    """Every (group, method, seed) model of one split: test margins, pairs used, grid, saved models."""

    margins: dict[tuple[str, str, int], np.ndarray]
    """Margins on the experiment's pooled test pairs."""
    used: dict[tuple[str, str, int], PairsUsed]
    grid: dict[str, Any]
    """The grid search's record for results.json (cells, folds, every choice)."""
    models: dict[Any, Any]
    """Head mode: ``(group, method, seed) -> score-layer weight``; full/LoRA: ``name -> saved folder``."""
    curves: dict[Any, Any] = field(default_factory=dict)
    """Per fit: the training record (solver iterations or the Trainer's log history), by job."""


def inspect_data(cfg: RunConfig, score: bool = False, progress: bool = True) -> dict[str, Any]:
    """Per-group counts of the data ``cfg`` names (and, with ``score``, the selection)."""
    data = load_data(cfg.data)
    groups = resolve_groups(data)
    pairs, glob_pairs, global_source = split_data(cfg, data)
    table = pair_table(pairs)
    g_arr, s_arr, k_arr = (column_strings(table.column(c)) for c in ("group", "split", "split_key"))
    per_group_stats = data.stats.get("per_group", {})
    out: dict[str, Any] = {"dataset": data.name, "synthetic": data.synthetic, "split_unit": data.split_unit,
                           "groups": {}, "stats": {k: v for k, v in data.stats.items() if k != "per_group"}}
    for g in groups:
        m = g_arr == g
        out["groups"][g] = {
            "raw_names": data.group_matches.get(g, [g]),
            f"{data.split_unit}s": int(len(set(k_arr[m]))),
            "pairs_train": int((m & (s_arr == "train")).sum()),
            "pairs_test": int((m & (s_arr == "test")).sum()),
            "pairs_held_apart": int((m & (s_arr == "global")).sum()),
            **{k: v for k, v in per_group_stats.get(g, {}).items() if k != "pairs"},
        }
    out["global_model"] = {"source": global_source, **(
        {"trained_on_pairs": int(len(glob_pairs.rows)), **_global_training_data(glob_pairs)} if glob_pairs is not None
        else {"trained_on": "pretrained reward model (its own training data)"})}
    others = sorted(set(g_arr[s_arr == "test"].tolist()) - set(groups))
    if others:
        out["pooled_test_also_holds"] = {g: int(((g_arr == g) & (s_arr == "test")).sum()) for g in others}
    if score:
        sel = selection_summary(prepare(cfg, progress=progress))
        for g, s in sel.items():
            out["groups"].setdefault(g, {}).update(
                kept_by_filter=s["kept"], kept_share=s["kept_share"], w_hist_kept=s["w_hist_kept"]["counts"],
                global_accuracy_train=s["global_train_accuracy"],
            )
    return out
