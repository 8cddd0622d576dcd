"""Step 5 of a run: train one reward model per (group, method, seed), initialised from the global one.

:func:`fit` is the one place that decides what ``mode`` means: ``head`` trains score layers over
the frozen encoder's cached features, batched (:mod:`scpo.heads`); ``full`` and ``lora`` run one
``Trainer`` job per model (:mod:`scpo.jobs`). Every mode makes its grid search the same way
(:mod:`scpo.grid`: k validation folds of each group's training split keys, one choice rule) and
returns the same :class:`~scpo.experiment.FitResult`: margins on the experiment's pooled test
pairs, pairs used, the grid record, the models and each final fit's training curve (``curves``:
Adam's loss and gradient norm every ``steps // LOG_POINTS`` steps, the Newton solver's iterations,
or the Trainer's log history).

Studies call :func:`fit` with explicit training rows (a learning curve's subsample) and explicit
(τ, β) (a cell of the sweep): the experiment itself is never rebuilt for them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .experiment import Experiment, FitResult, PairsUsed
from .grid import Choice, GridSpec, choose, folds
from .hashing import stream_seed
from .heads import HeadJob, train_heads, train_heads_logged, val_accuracy
from .pooler import fit_pooler_heads
from .selection import method_pairs
from .solver import HeadProblem, PullChoice, choose_pull, feature_scale, solve_heads, validation_metrics

__all__ = ["MODES", "fit", "grid_spec", "train_rows_of"]


def _fold_means(scores: np.ndarray) -> np.ndarray:
    """Mean over folds (rows) of ``scores[fold, pull]``, ignoring folds without validation pairs (NaN)."""
    ok = ~np.isnan(scores)
    return np.where(ok.any(0), np.where(ok, scores, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)

LOG_POINTS = 100
"""About how many points of an Adam head fit's curve are recorded (every ``steps // LOG_POINTS`` steps)."""

MODES = ("head", "full", "lora")
"""What a group model is: a score layer over the frozen encoder, the whole network, or a LoRA adapter."""


def grid_spec(exp: Experiment) -> GridSpec:
    """The experiment's grid (its config's learning rates, pulls, steps and folds)."""
    tc = exp.cfg.train
    return GridSpec.of(tc.learning_rates, tc.pulls, tc.steps, tc.val_folds)


def train_rows_of(exp: Experiment) -> dict[str, np.ndarray]:
    """Every group's training pairs (rows of the experiment), the default of :func:`fit`."""
    return {g: np.flatnonzero((exp.group == g) & (exp.split == "train")) for g in exp.groups}


def fit(exp: Experiment, methods: Sequence[str], seeds: Sequence[int], *, tau: float | None = None,
        beta: float | None = None, train_rows: Mapping[str, np.ndarray] | None = None, work_dir: str | Path | None = None,
        save_models: bool | None = None, progress: bool = True) -> FitResult:
    """Train every (group, method, seed) of ``exp`` and measure it on the pooled test pairs.

    ``tau``/``beta`` default to the config's; ``train_rows`` (group -> experiment rows) to each
    group's training split. ``work_dir`` (full/LoRA: where job records and checkpoints go; default
    the run directory) and ``save_models`` (default the config's) matter only to the Trainer modes.
    ``global`` is the global model itself, never trained.
    """
    tau = exp.cfg.select.tau if tau is None else float(tau)
    beta = exp.cfg.select.beta if beta is None else float(beta)
    rows = dict(train_rows) if train_rows is not None else train_rows_of(exp)
    mode = exp.cfg.train.mode
    if mode == "head":
        if exp.cfg.train.head_layers == "pooler":  # stage 1 is the newton score layer (scpo.pooler)
            first = _fit_heads_newton(exp, list(methods), list(seeds), tau, beta, rows, progress)
            return fit_pooler_heads(exp, list(methods), list(seeds), tau, beta, rows, progress, first)
        head_fit = _fit_heads_newton if exp.cfg.train.head_solver == "newton" else _fit_heads
        return head_fit(exp, list(methods), list(seeds), tau, beta, rows, progress)
    if mode in ("full", "lora"):
        from .jobs import fit_trainer_jobs  # the Trainer stack (transformers Trainer, PEFT) loads only when used

        return fit_trainer_jobs(exp, list(methods), list(seeds), tau=tau, beta=beta, train_rows=rows,
                                work_dir=Path(work_dir if work_dir is not None else exp.cfg.output.output_dir),
                                save_models=exp.cfg.output.save_models if save_models is None else save_models,
                                spec=grid_spec(exp), progress=progress)
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def _fit_heads(exp: Experiment, methods: list[str], seeds: list[int], tau: float, beta: float,
               train_rows: dict[str, np.ndarray], progress: bool) -> FitResult:
    """Head mode: grid search on k folds of each group's training keys, then refit; batched."""
    tc = exp.cfg.train
    diffs = exp.diffs()
    w_global = exp.rm.head_params()[0].numpy()
    zeros = np.zeros_like(w_global)
    spec = grid_spec(exp)
    trained = [m for m in methods if m != "global"]

    def job_for(g: str, m: str, seed: int, rows: np.ndarray, fold: Any, lr: float, pull: float,
                val_rows: np.ndarray | None = None) -> HeadJob:
        rng = np.random.default_rng(stream_seed("subset", g, seed, fold))
        idx, wts = method_pairs(m, exp.delta[rows], tau, beta, rng)
        scratch = m == "scratch"
        return HeadJob(
            train_idx=rows[idx], weights=wts, init=zeros if scratch else w_global,
            anchor=zeros if scratch else w_global, lr=lr, pull=pull, stream=stream_seed(g, m, seed, fold),
            val_idx=val_rows if val_rows is not None else np.zeros(0, dtype=np.int64),
        )

    grid = spec.record()
    chosen: dict[tuple[str, str, int], Choice] = {}
    if spec.searched:
        jobs, keys = [], []
        for g in exp.groups:
            for fi, (fit_rows, val_rows) in enumerate(folds(train_rows[g], exp.split_key[train_rows[g]], spec.val_folds,
                                                            seed=exp.cfg.data.split_seed)):
                for m in trained:
                    for seed in seeds:
                        for ci, (lr, pull) in enumerate(spec.cells):
                            jobs.append(job_for(g, m, seed, fit_rows, fi, lr, pull, val_rows))
                            keys.append((g, m, seed, fi, ci))
        snaps = train_heads(diffs, jobs, spec.steps, tc.batch_size, progress=progress)
        accs = val_accuracy(diffs, jobs, snaps)  # [jobs, steps]
        n_folds = 1 + max((k[3] for k in keys), default=0)
        table: dict[tuple[str, str, int], np.ndarray] = {}
        for (g, m, seed, fi, ci), a in zip(keys, accs):
            t = table.setdefault((g, m, seed), np.full((n_folds, len(spec.cells), len(spec.steps)), np.nan))
            t[fi, ci] = a
        for key, t in table.items():
            chosen[key] = choose(spec, t)
    for g in exp.groups:
        for m in trained:
            for seed in seeds:
                c = chosen.setdefault((g, m, seed), spec.default())
                grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = c.record()
    # refit on all training pairs with the chosen cell
    jobs, keys = [], []
    for g in exp.groups:
        for m in trained:
            for seed in seeds:
                c = chosen[(g, m, seed)]
                jobs.append(job_for(g, m, seed, train_rows[g], "final", c.learning_rate, c.pull))
                keys.append((g, m, seed, c.steps))
    weights: dict[tuple[str, str, int], np.ndarray] = {}
    used: dict[tuple[str, str, int], PairsUsed] = {}
    curves: dict[tuple[str, str, int], dict[str, Any]] = {}
    for st in sorted({k[3] for k in keys}):
        sub = [i for i, k in enumerate(keys) if k[3] == st]
        snaps, log = train_heads_logged(diffs, [jobs[i] for i in sub], [st], tc.batch_size, progress=progress,
                                        log_every=max(1, st // LOG_POINTS))
        for j, i in enumerate(sub):
            g, m, seed, _ = keys[i]
            weights[(g, m, seed)] = snaps[j, 0]
            used[(g, m, seed)] = PairsUsed(len(jobs[i].train_idx), float(jobs[i].weights.sum()))
            curves[(g, m, seed)] = {"kind": "adam_steps", "learning_rate": jobs[i].lr, "pull": jobs[i].pull,
                                    "records": log.records(j) if len(jobs[i].train_idx) else []}
    for g in exp.groups:
        for seed in seeds:
            weights[(g, "global", seed)] = w_global
            used[(g, "global", seed)] = PairsUsed(0, 0.0)
    dt = exp.diffs()[torch.from_numpy(np.flatnonzero(exp.split == "test"))].double().numpy()
    margins = {k: dt @ w.astype(np.float64) for k, w in weights.items()}
    return FitResult(margins=margins, used=used, grid=grid, models=weights, curves=curves)


def _fit_heads_newton(exp: Experiment, methods: list[str], seeds: list[int], tau: float, beta: float,
                      train_rows: dict[str, np.ndarray], progress: bool) -> FitResult:
    """Head mode with ``--head-solver newton``: every score layer solved to convergence (:mod:`scpo.solver`).

    The pull towards the global layer is chosen per (group, method, seed) from ``head_pulls`` on the
    k validation folds of :mod:`scpo.grid` by ``head_criterion`` (:func:`scpo.solver.choose_pull`:
    the lowest mean validation log-loss, or the highest mean accuracy; ties to the larger pull),
    then the layer is refit on all training pairs. A choice at either end of the grid is warned
    about and listed in ``grid.edge_choices``.
    """
    tc = exp.cfg.train
    diffs = exp.diffs()
    w_global = exp.rm.head_params()[0].numpy().astype(np.float64)
    pulls = tuple(sorted(set(float(p) for p in tc.head_pulls), reverse=True))
    full_rows = train_rows_of(exp)
    scale = feature_scale(diffs, np.concatenate([r for r in full_rows.values()] + [np.zeros(0, np.int64)]))
    trained = [m for m in methods if m != "global"]

    def problem(g: str, m: str, seed: int, rows: np.ndarray, fold: Any) -> HeadProblem:
        rng = np.random.default_rng(stream_seed("subset", g, seed, fold))
        idx, wts = method_pairs(m, exp.delta[rows], tau, beta, rng)
        return HeadProblem(rows[idx], np.asarray(wts, dtype=np.float64), None if m == "scratch" else w_global)

    criterion = tc.head_criterion
    grid = {"solver": "newton", "criterion": criterion, "pulls": list(pulls), "val_folds": tc.val_folds,
            "searched": tc.val_folds > 1 and len(pulls) > 1, "choices": {}}
    chosen: dict[tuple[str, str, int], PullChoice] = {}
    scores: dict[tuple[str, str, int], dict[str, Any]] = {}
    if grid["searched"]:
        problems, vals, keys = [], [], []
        for g in exp.groups:
            for fi, (fit_rows, val_rows) in enumerate(folds(train_rows[g], exp.split_key[train_rows[g]], tc.val_folds,
                                                            seed=exp.cfg.data.split_seed)):
                for m in trained:
                    for seed in seeds:
                        problems.append(problem(g, m, seed, fit_rows, fi))
                        vals.append(val_rows)
                        keys.append((g, m, seed, fi))
        sol = solve_heads(diffs, problems, pulls, scale=scale)
        acc, nll = validation_metrics(diffs, vals, sol.theta)  # [problems, pulls]
        n_folds = 1 + max((k[3] for k in keys), default=0)
        tables: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray]] = {}
        for (g, m, seed, fi), a, ll in zip(keys, acc, nll):
            t = tables.setdefault((g, m, seed), (np.full((n_folds, len(pulls)), np.nan), np.full((n_folds, len(pulls)), np.nan)))
            t[0][fi], t[1][fi] = a, ll
        for key, (a, ll) in tables.items():
            pick = choose_pull(ll if criterion == "log_loss" else a, pulls, criterion)
            mean_a, mean_ll = _fold_means(a), _fold_means(ll)
            chosen[key] = pick
            scores[key] = {"val_accuracy": float(mean_a[pick.index]), "val_log_loss": float(mean_ll[pick.index]),
                           "val_accuracy_grid": mean_a.tolist(), "val_log_loss_grid": mean_ll.tolist()}
    edges = []
    for g in exp.groups:
        for m in trained:
            for seed in seeds:
                c = chosen.setdefault((g, m, seed), PullChoice(0, pulls[0], float("nan"), None))
                rec: dict[str, Any] = {"pull": c.pull, **scores.get((g, m, seed), {})}
                if c.edge:
                    rec["edge"] = c.edge
                    edges.append(f"{g}/{m}/{seed}: {c.edge} pull {c.pull:g}")
                grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = rec
    if edges:
        grid["edge_choices"] = edges
        largest = sum(": largest pull" in e for e in edges)
        warnings.warn(
            f"{len(edges)} head-mode pull choice(s) sit at an edge of --head-pulls {list(pulls)} (e.g. {edges[0]}; "
            f"all in results.json grid.edge_choices): {largest} at the largest pull, where a group's layer moves "
            f"the global layer by about 1% or less (its own pairs did not lower the validation log-loss: a larger "
            f"pull only comes closer to the global model), {len(edges) - largest} at the smallest; widen the grid "
            f"if you expect the optimum beyond it", stacklevel=3)
    weights: dict[tuple[str, str, int], np.ndarray] = {}
    used: dict[tuple[str, str, int], PairsUsed] = {}
    curves: dict[tuple[str, str, int], dict[str, Any]] = {}
    for pull in sorted({c.pull for c in chosen.values()}, reverse=True):
        keys = [k for k, c in chosen.items() if c.pull == pull]
        probs = [problem(g, m, seed, train_rows[g], "final") for g, m, seed in keys]
        sol = solve_heads(diffs, probs, [pull], scale=scale)
        for i, key in enumerate(keys):
            weights[key] = sol.theta[i, 0].astype(np.float32)
            used[key] = PairsUsed(probs[i].n, float(probs[i].weights.sum()))
            s = sol[i, 0]
            grid["choices"][key[0]][key[1]][str(key[2])]["solver"] = {
                "loss": s.loss, "grad_norm": s.grad_norm, "iterations": s.iterations, "converged": s.converged}
            curves[key] = {"kind": "newton_iterations", "pull": pull, "converged": s.converged,
                           "records": [{"iteration": it, "loss": float(a), "grad_norm": float(b)}
                                       for it, (a, b) in enumerate(np.asarray(s.history))] if probs[i].n else []}
    for g in exp.groups:
        for seed in seeds:
            weights[(g, "global", seed)] = w_global.astype(np.float32)
            used[(g, "global", seed)] = PairsUsed(0, 0.0)
    dt = exp.diffs()[torch.from_numpy(np.flatnonzero(exp.split == "test"))].double().numpy()
    margins = {k: dt @ w.astype(np.float64) for k, w in weights.items()}
    return FitResult(margins=margins, used=used, grid=grid, models=weights, curves=curves)
