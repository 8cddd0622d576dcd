"""Head mode with ``--head-layers pooler``: the pooler's dense layer and the score layer, trained together.

An encoder reward model with a pooler (BERT, RoBERTa, DeBERTa-v2/v3) computes its reward from the
first token's hidden state ``x`` as ``r(x) = v . act(W x + b) + c`` (:class:`scpo.model.PoolerHead`;
the classifier dropout is inactive in eval). With the encoder frozen, ``x`` is cached once per text
(:meth:`scpo.model.RewardModel.feature_key` keys it by the tensors below the pooler) and every group
model trains ``W [h, h]``, ``b [h]`` and ``v [h]`` starting from the global model's values (``c``
cancels in every margin). The optimiser has two stages:

1. **the score layer alone**, solved exactly: with the pooler at the global model's values the
   problem is ``--head-solver newton``'s convex one (:mod:`scpo.solver`), with that solver's pull
   chosen on the folds (``FitResult`` of :func:`scpo.fitting._fit_heads_newton`); each fold starts
   from the solution on its own fit rows, the final model from the one on all training rows;
2. **pooler and score layer together**, a non-convex problem: full-batch Adam (every pair every step,
   no sampling) on

       L = (1/n) sum_i w_i softplus(-(r(x_chosen_i) - r(x_rejected_i)))
           + lam * (mean((W - W_0)^2) / rms(W_0)^2 + mean((b - b_0)^2) / rms(b_0)^2)

   the paper's weighted loss (the mean over all ``n`` pairs of the job, zero weights included) and
   a pull towards the global pooler ``(W_0, b_0)`` in relative units (the score layer's own
   regularisation is stage 1's pull and the early stopping). The dense layer's change is a
   rank-:data:`POOLER_RANK` product ``W = W_0 + A B^T`` (``A`` starts at zero, ``B`` at random
   orthonormal columns drawn from the job's seed), so ``W_0 x + b_0`` is computed once per text and
   a step costs ``O(h r)`` per text instead of ``O(h^2)``: the default synthetic run's 9 groups train
   in seconds on a CPU. The checkpoint holds the full ``W``.

:func:`train_poolers` runs stage 2 for many jobs at once: jobs are stacked into ``[jobs, texts, h]``
tensors (``torch.bmm``; each job holds only the texts of its own pairs) and one backward pass of the
summed objective gives every job its own gradient (the jobs share no parameter). The seeds of a
(group, method) draw ``B``; identical inputs give identical outputs.

:func:`fit_pooler_heads` is :func:`scpo.fitting.fit` for this mode: on the same k validation folds of
each group's training split keys as the other head solvers (:func:`scpo.grid.folds`), every
(group, method, seed, fold) is trained at every pull of :data:`POOLER_PULLS` and measured after every
step count of :data:`POOLER_STEPS` (0: stage 1's score layer over the global pooler); the (pull,
steps) of the lowest mean validation log-loss wins (ties: the larger pull, then fewer steps), and
the model is refit on all of the group's training pairs with it. So a group whose folds gain nothing
from the pooler keeps the global pooler and the score layer ``--head-solver newton`` gives it.
Margins on the pooled test pairs go through each model's own pooler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .errors import ScpoError
from .experiment import Experiment, FitResult, PairsUsed
from .grid import folds
from .hashing import stream_seed
from .model import POOLER_ACTIVATIONS, PoolerHead
from .selection import method_pairs
from .solver import HeadProblem, feature_scale, solve_heads

__all__ = ["POOLER_LR", "POOLER_PULLS", "POOLER_RANK", "POOLER_STEPS", "PoolerJob", "PoolerRun", "choose_point",
           "fit_pooler_heads", "train_poolers"]

POOLER_STEPS: tuple[int, ...] = (0, 5, 10, 20, 40)
"""Full-batch Adam steps of stage 2 measured on the validation folds (0: stage 1's solution)."""

POOLER_PULLS: tuple[float, ...] = (1.0, 0.0)
"""Pulls towards the global pooler (relative units, module docstring) tried on the validation folds, largest first."""

POOLER_LR = 0.02
"""Adam's step per parameter group, relative to the group's scale (module docstring)."""

POOLER_RANK = 16
"""Rank of the dense layer's change ``A B^T``."""

_ROWS_PER_BATCH = 1 << 16
"""Padded text rows (jobs x texts) stacked into one batch."""

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class PoolerJob:
    """One stage-2 training: its pairs (text rows), weights, start (also the pooler's anchor), pull, seed, validation pairs."""

    chosen: np.ndarray
    rejected: np.ndarray
    weights: np.ndarray
    init: PoolerHead
    pull: float
    seed: int = 0
    """Draws the random orthonormal ``B`` of the dense layer's change."""
    stop: int | None = None
    """The step whose parameters :func:`train_poolers` returns (default the last of ``steps``)."""
    val_chosen: np.ndarray = field(default_factory=lambda: _EMPTY)
    val_rejected: np.ndarray = field(default_factory=lambda: _EMPTY)

    def key(self) -> bytes:
        """Identifies the job's inputs: equal keys train the same model."""
        h = hashlib.sha1()
        for a in (self.chosen, self.rejected, self.val_chosen, self.val_rejected):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes() + b"|")
        h.update(np.ascontiguousarray(self.weights, dtype=np.float64).tobytes())
        for a in (self.init.weight, self.init.bias, self.init.score):
            h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
        h.update(np.float64(self.pull).tobytes() + f"{self.seed}|{self.stop}".encode())
        return h.digest()


@dataclass
class PoolerRun:
    """What :func:`train_poolers` returns, per job."""

    heads: list[PoolerHead]
    """The parameters at each job's ``stop``."""
    val_log_loss: np.ndarray
    """``[jobs, len(steps)]`` mean ``softplus(-margin)`` on the validation pairs (NaN without them)."""
    val_accuracy: np.ndarray
    """``[jobs, len(steps)]`` share of validation pairs with a positive margin (a tie is wrong)."""
    curves: list[np.ndarray]
    """The objective (module docstring) before the first step and after every step up to ``stop``."""


def _rms(a: torch.Tensor) -> torch.Tensor:
    """Root mean square over every axis but the first (jobs), floored so that a zero tensor still has a scale."""
    r = a.reshape(a.shape[0], -1).pow(2).mean(1).sqrt()
    return torch.where(r > 1e-8, r, torch.full_like(r, 1.0 / np.sqrt(max(a[0].numel(), 1))))


def _stack(x: np.ndarray, rows: list[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[np.ndarray]]:
    """``[jobs, max texts, h]`` of each job's distinct text rows (zero padded) and each job's sorted distinct rows."""
    uniq = [np.unique(r) for r in rows]
    t_max = max((len(u) for u in uniq), default=0)
    out = torch.zeros(len(rows), max(t_max, 1), x.shape[1])
    for j, u in enumerate(uniq):
        if len(u):
            out[j, : len(u)] = torch.from_numpy(np.asarray(x[u], dtype=np.float32))
    return out.to(device), uniq


def _local(pairs: list[tuple[np.ndarray, np.ndarray]], uniq: list[np.ndarray], device: torch.device):
    """Padded ``[jobs, max pairs]`` positions of chosen and rejected texts in each job's distinct rows, and the mask."""
    n_max = max((len(c) for c, _ in pairs), default=0)
    ci = torch.zeros(len(pairs), max(n_max, 1), dtype=torch.int64)
    ri = torch.zeros_like(ci)
    mask = torch.zeros(len(pairs), max(n_max, 1))
    for j, (c, r) in enumerate(pairs):
        if len(c):
            ci[j, : len(c)] = torch.from_numpy(np.searchsorted(uniq[j], c))
            ri[j, : len(r)] = torch.from_numpy(np.searchsorted(uniq[j], r))
            mask[j, : len(c)] = 1.0
    return ci.to(device), ri.to(device), mask.to(device)


def _margins(X: torch.Tensor, Z0: torch.Tensor, A: torch.Tensor, B: torch.Tensor, db: torch.Tensor, v: torch.Tensor,
             ci: torch.Tensor, ri: torch.Tensor, act: Any) -> torch.Tensor:
    """``[jobs, pairs]`` reward margins through ``act(Z0 + X B A^T + db) . v`` (``Z0 = X W_0^T + b_0``)."""
    z = act(Z0 + torch.bmm(torch.bmm(X, B), A.transpose(1, 2)) + db[:, None, :])  # [J, T, h]
    r = torch.bmm(z, v[:, :, None])[:, :, 0]  # [J, T]
    return r.gather(1, ci) - r.gather(1, ri)


def _orthonormal(h: int, r: int, seed: int) -> np.ndarray:
    """``[h, r]`` random orthonormal columns (QR of a Gaussian drawn from ``seed``)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(h, r)))
    return q.astype(np.float32)


def train_poolers(x: np.ndarray, jobs: Sequence[PoolerJob], steps: Sequence[int], activation: str, *,
                  lr: float = POOLER_LR, rank: int = POOLER_RANK, device: torch.device | str = "cpu",
                  progress: bool = False) -> PoolerRun:
    """Stage 2 (module docstring) for many jobs at once: full-batch Adam from each job's ``init``.

    ``x``: ``[texts, h]`` pooler inputs; a job's ``chosen``/``rejected`` (and validation pairs) are rows
    of it. Validation metrics are measured after each of ``steps`` (0: before any step); each job
    runs to ``max(steps + stops)`` and returns its parameters at its ``stop``. Adam's step is ``lr``
    times each parameter group's scale: ``rms(W_0) sqrt(h / rank)`` for ``A`` (so ``A B^T`` moves like
    ``lr rms(W_0)`` per entry), ``1 / sqrt(h)`` for ``B``, ``rms(b_0)`` for the bias and ``rms(v_0)``
    for the score layer. Deterministic for the same inputs on one machine (a job's result can differ
    by float rounding with other jobs in its batch: the padding changes).
    """
    act = POOLER_ACTIVATIONS[activation]
    steps = sorted(set(int(s) for s in steps))
    device = torch.device(device)
    J = len(jobs)
    val_ll = np.full((J, len(steps)), np.nan)
    val_acc = np.full((J, len(steps)), np.nan)
    heads: list[PoolerHead | None] = [None] * J
    curves: list[np.ndarray] = [np.zeros(0)] * J
    stops = [int(j.stop if j.stop is not None else (steps[-1] if steps else 0)) for j in jobs]
    # batches of jobs of similar size (texts), bounded padded rows
    sizes = [len(np.unique(np.concatenate([j.chosen, j.rejected]))) for j in jobs]
    order = sorted(range(J), key=lambda i: (sizes[i], stops[i]))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * max(sizes[i], 1) <= _ROWS_PER_BATCH:
            batches[-1].append(i)
        else:
            batches.append([i])
    b1, b2, eps = 0.9, 0.999, 1e-12
    total_steps = sum(max(max(stops[i] for i in bt), steps[-1] if steps else 0) for bt in batches)
    bar = tqdm(total=total_steps, desc="training poolers", unit="step", disable=not progress, leave=False)
    for bt in batches:
        bj = [jobs[i] for i in bt]
        h = x.shape[1]
        r = min(rank, h)
        X, uniq = _stack(x, [np.concatenate([j.chosen, j.rejected]) for j in bj], device)
        ci, ri, mask = _local([(j.chosen, j.rejected) for j in bj], uniq, device)
        wts = torch.zeros_like(mask)
        for k, j in enumerate(bj):
            wts[k, : len(j.weights)] = torch.from_numpy(np.asarray(j.weights, dtype=np.float32))
        n = torch.tensor([max(len(j.chosen), 1) for j in bj], dtype=torch.float32, device=device)
        W0 = torch.from_numpy(np.stack([np.asarray(j.init.weight, dtype=np.float32) for j in bj])).to(device)
        b0 = torch.from_numpy(np.stack([np.asarray(j.init.bias, dtype=np.float32) for j in bj])).to(device)
        v0 = torch.from_numpy(np.stack([np.asarray(j.init.score, dtype=np.float32) for j in bj])).to(device)
        Z0 = torch.baddbmm(b0[:, None, :], X, W0.transpose(1, 2))  # once per batch: the global pooler's pre-activation
        has_val = any(len(j.val_chosen) for j in bj)
        if has_val:
            Xv, uv = _stack(x, [np.concatenate([j.val_chosen, j.val_rejected]) for j in bj], device)
            vci, vri, vmask = _local([(j.val_chosen, j.val_rejected) for j in bj], uv, device)
            Zv0 = torch.baddbmm(b0[:, None, :], Xv, W0.transpose(1, 2))
        B0 = torch.from_numpy(np.stack([_orthonormal(h, r, stream_seed("pooler", j.seed)) for j in bj])).to(device)
        params = [torch.zeros(len(bj), h, r, device=device), B0, torch.zeros_like(b0), v0.clone()]  # A, B, db, v
        s_w, s_b = _rms(W0), _rms(b0)
        scales = [s_w * np.sqrt(h / r), torch.full_like(s_w, 1.0 / np.sqrt(h)), s_b, _rms(v0)]
        pull = torch.tensor([float(j.pull) for j in bj], dtype=torch.float32, device=device)
        m1 = [torch.zeros_like(p) for p in params]
        m2 = [torch.zeros_like(p) for p in params]
        last = max(max(stops[i] for i in bt), steps[-1] if steps else 0)
        loss_hist = torch.zeros(len(bj), last + 1)


        for t in range(last + 1):
            for p in params:
                p.requires_grad_(True)
            A, B, db, v = params
            margin = _margins(X, Z0, A, B, db, v, ci, ri, act)
            data = (wts * F.softplus(-margin) * mask).sum(1) / n
            # ||A B^T||_F^2 = trace((A^T A)(B^T B)), over the h^2 entries, relative to rms(W_0)^2
            dw2 = (torch.bmm(A.transpose(1, 2), A) * torch.bmm(B.transpose(1, 2), B)).sum((1, 2)) / (h * h)
            penalty = dw2 / s_w**2 + (db**2).mean(1) / s_b**2
            loss = data + pull * penalty  # [J]
            loss_hist[:, t] = loss.detach().cpu()
            if has_val and t in steps:
                si = steps.index(t)
                with torch.no_grad():
                    vm = _margins(Xv, Zv0, A, B, db, v, vci, vri, act)
                    cnt = vmask.sum(1)
                    ll = ((F.softplus(-vm) * vmask).sum(1) / cnt.clamp(min=1)).double().cpu().numpy()
                    ac = (((vm > 0).float() * vmask).sum(1) / cnt.clamp(min=1)).double().cpu().numpy()
                ok = cnt.cpu().numpy() > 0
                rows = np.asarray(bt)
                val_ll[rows[ok], si] = ll[ok]
                val_acc[rows[ok], si] = ac[ok]
            for k, i in enumerate(bt):
                if stops[i] == t:
                    dA, dB, ddb, dv = (p[k].detach() for p in params)
                    heads[i] = PoolerHead((W0[k] + dA @ dB.T).cpu().numpy().astype(np.float32),
                                          (b0[k] + ddb).cpu().numpy().astype(np.float32), dv.cpu().numpy().astype(np.float32))
            if t == last:
                break
            grads = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                new = []
                for a, (p, g) in enumerate(zip(params, grads)):
                    m1[a].mul_(b1).add_(g, alpha=1 - b1)
                    m2[a].mul_(b2).addcmul_(g, g, value=1 - b2)
                    step = (m1[a] / (1 - b1 ** (t + 1))) / ((m2[a] / (1 - b2 ** (t + 1))).sqrt() + eps)
                    new.append(p.detach() - lr * scales[a].reshape(-1, *[1] * (p.dim() - 1)) * step)
                params = new
            bar.update(1)
        for k, i in enumerate(bt):
            curves[i] = loss_hist[k, : stops[i] + 1].double().numpy()
    bar.close()
    return PoolerRun(heads=[hd for hd in heads if hd is not None], val_log_loss=val_ll, val_accuracy=val_acc, curves=curves)


def _dedup(jobs: list[PoolerJob]) -> tuple[list[PoolerJob], list[int]]:
    """Distinct jobs and, for each job, its distinct job's index."""
    seen: dict[bytes, int] = {}
    uniq: list[PoolerJob] = []
    where = []
    for j in jobs:
        k = j.key()
        if k not in seen:
            seen[k] = len(uniq)
            uniq.append(j)
        where.append(seen[k])
    return uniq, where


def _fold_mean(t: np.ndarray) -> np.ndarray:
    """Mean over the first axis (folds), ignoring NaN (a fold without validation pairs)."""
    ok = ~np.isnan(t)
    return np.where(ok.any(0), np.where(ok, t, 0.0).sum(0) / np.maximum(ok.sum(0), 1), np.nan)


def choose_point(val_log_loss: np.ndarray, pulls: Sequence[float], steps: Sequence[int]) -> tuple[int, int]:
    """``(pull index, steps index)`` of the lowest mean validation log-loss over ``[folds, pulls, steps]``.

    ``pulls`` largest first, ``steps`` ascending: the first minimum in that order wins, so ties go to
    the larger pull, then to fewer steps. Without any measured point: the largest pull, 0 steps' index 0.
    """
    mean = _fold_mean(np.asarray(val_log_loss, dtype=float))
    if np.isnan(mean).all():
        return 0, 0
    flat = int(np.argmin(np.where(np.isnan(mean), np.inf, mean)))
    return int(flat // len(steps)), int(flat % len(steps))


def fit_pooler_heads(exp: Experiment, methods: list[str], seeds: list[int], tau: float, beta: float,
                     train_rows: dict[str, np.ndarray], progress: bool, score_fit: FitResult) -> FitResult:
    """Head mode with ``--head-layers pooler`` (module docstring): choose (pull, steps) on the folds, refit, measure.

    ``score_fit``: the ``--head-solver newton`` fit of the same experiment, methods, seeds and rows
    (stage 1: its pulls and score layers). ``FitResult.models`` maps every (group, method, seed) to its
    :class:`~scpo.model.PoolerHead`; ``FitResult.curves`` holds each final fit's stage-2 objective per
    step (``[{"iteration", "loss"}]``); ``grid`` is stage 2's, with stage 1's under ``grid["score_layer"]``.
    """
    if exp.pooler_inputs is None:
        raise ScpoError("--head-layers pooler: the experiment was prepared without the pooler's inputs "
                        "(prepare it with train.head_layers = pooler)")
    tc = exp.cfg.train
    x = exp.pooler_inputs
    act = exp.rm.pooler_spec.activation
    g0 = exp.rm.pooler_head()
    device = next(exp.rm.model.parameters()).device
    pulls = tuple(sorted(set(POOLER_PULLS), reverse=True))
    steps = tuple(sorted(set(POOLER_STEPS)))
    trained = [m for m in methods if m != "global"]
    diffs = exp.diffs()
    w_global = exp.rm.head_params()[0].numpy().astype(np.float64)
    all_train = np.flatnonzero(np.isin(exp.group, exp.groups) & (exp.split == "train"))
    scale = feature_scale(diffs, all_train)  # as --head-solver newton's
    stage1 = score_fit.grid.get("choices", {})

    def pairs(g: str, m: str, seed: int, rows: np.ndarray, fold: Any) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(stream_seed("subset", g, seed, fold))
        idx, wts = method_pairs(m, exp.delta[rows], tau, beta, rng)
        return rows[idx], np.asarray(wts, dtype=np.float64)

    def score_layers(keys: list[tuple[str, str, int, Any]], rows_of: list[np.ndarray]) -> list[np.ndarray]:
        """Stage 1 on some rows: the convex score layer at the pull the newton fit chose for the key."""
        out: list[np.ndarray | None] = [None] * len(keys)
        by_pull: dict[float, list[int]] = {}
        probs = []
        for i, ((g, m, seed, fold), rows) in enumerate(zip(keys, rows_of)):
            r, w = pairs(g, m, seed, rows, fold)
            probs.append(HeadProblem(r, w, None if m == "scratch" else w_global))
            by_pull.setdefault(float(stage1[g][m][str(seed)]["pull"]), []).append(i)
        for pull, idx in by_pull.items():
            sol = solve_heads(diffs, [probs[i] for i in idx], [pull], scale=scale)
            for k, i in enumerate(idx):
                out[i] = sol.theta[k, 0].astype(np.float32)
        return out  # type: ignore[return-value]

    def job(g: str, m: str, seed: int, rows: np.ndarray, fold: Any, v: np.ndarray, pull: float,
            val: np.ndarray = _EMPTY, stop: int | None = None) -> PoolerJob:
        r, w = pairs(g, m, seed, rows, fold)
        return PoolerJob(exp.chosen_row[r], exp.rejected_row[r], w, PoolerHead(g0.weight, g0.bias, v), pull,
                         stream_seed(g, m, seed), stop, exp.chosen_row[val], exp.rejected_row[val])

    searched = tc.val_folds > 1
    grid: dict[str, Any] = {"solver": "pooler-adam", "layers": "pooler", "criterion": "log_loss", "pulls": list(pulls),
                            "steps": list(steps), "learning_rate": POOLER_LR, "rank": POOLER_RANK,
                            "val_folds": tc.val_folds, "searched": searched, "choices": {},
                            "score_layer": {k: v for k, v in score_fit.grid.items() if k != "choices"}}
    chosen: dict[tuple[str, str, int], tuple[int, int]] = {}
    if searched:
        fold_keys, fold_rows, fold_vals = [], [], []
        for g in exp.groups:
            for fi, (fit_rows, val_rows) in enumerate(folds(train_rows[g], exp.split_key[train_rows[g]], tc.val_folds,
                                                            seed=exp.cfg.data.split_seed)):
                for m in trained:
                    for seed in seeds:
                        fold_keys.append((g, m, seed, fi))
                        fold_rows.append(fit_rows)
                        fold_vals.append(val_rows)
        starts = score_layers(fold_keys, fold_rows)
        jobs, keys = [], []
        global_ll = {}  # the global model on the same folds (its margins are exp.delta): "the start"
        for (g, m, seed, fi), rows, val, v in zip(fold_keys, fold_rows, fold_vals, starts):
            global_ll[(g, fi)] = float(np.mean(np.logaddexp(0.0, -exp.delta[val]))) if len(val) else np.nan
            for pi, pull in enumerate(pulls):
                jobs.append(job(g, m, seed, rows, fi, v, pull, val, stop=steps[-1]))
                keys.append((g, m, seed, fi, pi))
        uniq, where = _dedup(jobs)
        run = train_poolers(x, uniq, steps, act, device=device, progress=progress)
        n_folds = 1 + max((k[3] for k in keys), default=0)
        tables: dict[tuple[str, str, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for (g, m, seed, fi, pi), u in zip(keys, where):
            t = tables.setdefault((g, m, seed), (np.full((n_folds, len(pulls), len(steps)), np.nan),
                                                 np.full((n_folds, len(pulls), len(steps)), np.nan),
                                                 np.full(n_folds, np.nan)))
            t[0][fi, pi], t[1][fi, pi] = run.val_log_loss[u], run.val_accuracy[u]
            t[2][fi] = global_ll[(g, fi)]
        for key, (ll, acc, gll) in tables.items():
            pi, si = choose_point(ll, pulls, steps)
            chosen[key] = (pi, si)
            mean_ll, mean_acc = _fold_mean(ll), _fold_mean(acc)
            g, m, seed = key
            grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = {
                "pull": pulls[pi], "steps": steps[si], "score_layer_pull": stage1[g][m][str(seed)]["pull"],
                "val_log_loss": float(mean_ll[pi, si]), "val_accuracy": float(mean_acc[pi, si]),
                "val_log_loss_score_layer": float(mean_ll[0, 0]), "val_accuracy_score_layer": float(mean_acc[0, 0]),
                "val_log_loss_global": float(_fold_mean(gll[:, None])[0]),
                "val_log_loss_grid": mean_ll.tolist(), "val_accuracy_grid": mean_acc.tolist()}
    for g in exp.groups:
        for m in trained:
            for seed in seeds:
                if (g, m, seed) not in chosen:
                    chosen[(g, m, seed)] = (0, 0)  # no search: stage 1 alone, the newton score layer
                    grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = {
                        "pull": pulls[0], "steps": 0, "score_layer_pull": stage1[g][m][str(seed)]["pull"]}
    # refit every (group, method, seed) on all its training pairs at its choice, from the newton score layer
    keys = list(chosen)
    final = [job(g, m, seed, train_rows[g], "final", np.asarray(score_fit.models[(g, m, seed)], dtype=np.float32),
                 pulls[chosen[(g, m, seed)][0]], stop=steps[chosen[(g, m, seed)][1]]) for g, m, seed in keys]
    uniq, where = _dedup(final)
    run = train_poolers(x, uniq, [], act, device=device, progress=progress)
    models: dict[tuple[str, str, int], PoolerHead] = {}
    used: dict[tuple[str, str, int], PairsUsed] = {}
    curves: dict[tuple[str, str, int], dict[str, Any]] = {}
    for key, j, u in zip(keys, final, where):
        models[key] = run.heads[u]
        used[key] = PairsUsed(len(j.chosen), float(np.sum(j.weights)))
        c = grid["choices"][key[0]][key[1]][str(key[2])]
        curves[key] = {"kind": "pooler_adam_steps", "pull": c.get("pull"), "score_layer_pull": c.get("score_layer_pull"),
                       "records": [{"step": i, "loss": float(v)} for i, v in enumerate(run.curves[u])] if len(j.chosen) else []}
        c["train_loss_start"], c["train_loss_end"] = float(run.curves[u][0]), float(run.curves[u][-1])
    # margins on the pooled test pairs, through each model's own pooler
    test = np.flatnonzero(exp.split == "test")
    ct, rt = exp.chosen_row[test], exp.rejected_row[test]
    texts = np.unique(np.concatenate([ct, rt]))
    xt = x[texts]
    cpos, rpos = np.searchsorted(texts, ct), np.searchsorted(texts, rt)
    margins: dict[tuple[str, str, int], np.ndarray] = {}
    by_head: dict[int, np.ndarray] = {}
    for key, u in zip(keys, where):
        if u not in by_head:
            r = run.heads[u].rewards(xt, act)
            by_head[u] = r[cpos] - r[rpos]
        margins[key] = by_head[u]
    for g in exp.groups:
        for seed in seeds:
            models[(g, "global", seed)] = g0
            used[(g, "global", seed)] = PairsUsed(0, 0.0)
            margins[(g, "global", seed)] = exp.delta[test].astype(np.float64)
    return FitResult(margins=margins, used=used, grid=grid, models=models, curves=curves)
