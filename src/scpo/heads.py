"""Head training: linear score layers over frozen features, many at once.

The encoder is frozen and only the score layer trains, on features cached once. A linear head's
reward margin on a pair is ``diffs[p] @ w`` with ``diffs[p] = features(chosen_p) -
features(rejected_p)`` (the bias cancels). All (group, method, seed, fold, grid cell) trainings of a
run are one batched computation (:func:`train_heads`: mini-batch Adam over a ``[jobs, dim]``
matrix), not a Python loop. Nothing here knows an experiment: jobs are rows, weights and starts.
Which pairs and weights a method trains on is :func:`scpo.selection.method_pairs`; the grid search
around it is :mod:`scpo.fitting`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["HeadJob", "HeadLog", "hash32", "train_heads", "train_heads_logged", "val_accuracy"]


@dataclass
class HeadJob:
    """One score-layer training: pairs (rows of the difference matrix), weights, start, grid cell."""

    train_idx: np.ndarray
    weights: np.ndarray
    init: np.ndarray
    anchor: np.ndarray
    lr: float
    pull: float
    stream: int
    """Seeds the mini-batch stream; jobs with equal streams and pairs draw the same batches."""
    val_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


@dataclass
class HeadLog:
    """The training curve of every job of one :func:`train_heads_logged` call.

    ``loss[j, k]``: job ``j``'s mini-batch objective ``mean(w * softplus(-margin)) + pull * ||w - anchor||^2``
    averaged over the steps ``steps[k-1] + 1 .. steps[k]`` (the noise of single batches averaged out);
    ``grad_norm[j, k]``: the norm of its gradient at step ``steps[k]``. NaN for a job without pairs.
    """

    steps: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray

    def records(self, j: int) -> list[dict[str, float]]:
        """Job ``j``'s curve as records ``{"step", "loss", "grad_norm"}`` (``training_log.json``'s form)."""
        return [{"step": int(s), "loss": float(a), "grad_norm": float(g)}
                for s, a, g in zip(self.steps, self.loss[j], self.grad_norm[j])]


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A vectorised 32-bit integer hash (PCG output permutation) on int64 tensors."""
    x = x & 0xFFFFFFFF
    x = (x * 747796405 + 2891336453) & 0xFFFFFFFF
    word = (((x >> ((x >> 28) + 4)) ^ x) * 277803737) & 0xFFFFFFFF
    return ((word >> 22) ^ word) & 0xFFFFFFFF


def _stream_groups(jobs: Sequence[HeadJob]) -> list[list[int]]:
    groups: dict[bytes, list[int]] = {}
    for i, j in enumerate(jobs):
        h = hashlib.sha1(np.int64(j.stream & 0x7FFFFFFF).tobytes())
        h.update(np.ascontiguousarray(j.train_idx, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(j.weights, dtype=np.float32).tobytes())
        groups.setdefault(h.digest(), []).append(i)
    return list(groups.values())


def train_heads(diffs: torch.Tensor, jobs: Sequence[HeadJob], steps: Sequence[int], batch_size: int, *,
                       chunk: int = 4096, progress: bool = False) -> np.ndarray:
    """Train many linear score layers at once; return snapshots ``[jobs, len(steps), dim]``.

    ``diffs[p] = features(chosen_p) - features(rejected_p)``: a linear head's reward margin is
    ``diffs[p] @ w`` (the bias cancels). Each step, every job draws ``batch_size`` of its pairs
    (uniformly, with replacement, from its own deterministic stream) and takes an Adam step on
    ``mean(w * softplus(-margin)) + pull * ||w - anchor||^2``. A job without pairs keeps its init.

    Jobs that draw the same batches (equal stream, pairs and weights: the grid cells of one group,
    method, seed and fold) share one gather ``diffs[pair]`` per step and multiply it with their
    ``[cells, dim]`` parameters in one ``bmm``: the gather, the memory-bound part, is done once
    per stream instead of once per job.
    """
    return _run(diffs, jobs, steps, batch_size, chunk=chunk, progress=progress, log_every=0)[0]


def train_heads_logged(diffs: torch.Tensor, jobs: Sequence[HeadJob], steps: Sequence[int], batch_size: int, *,
                       log_every: int, chunk: int = 4096, progress: bool = False) -> tuple[np.ndarray, HeadLog]:
    """:func:`train_heads` that also records each job's loss and gradient norm every ``log_every`` steps
    (and at the last step): the same weights, bit for bit, plus a :class:`HeadLog`."""
    out, log = _run(diffs, jobs, steps, batch_size, chunk=chunk, progress=progress, log_every=max(1, int(log_every)))
    assert log is not None
    return out, log


def _run(diffs: torch.Tensor, jobs: Sequence[HeadJob], steps: Sequence[int], batch_size: int, *,
         chunk: int, progress: bool, log_every: int) -> tuple[np.ndarray, HeadLog | None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: a second thread helps little and stalls on a busy core
    try:
        return _train_heads(diffs, jobs, steps, batch_size, chunk=chunk, progress=progress, log_every=log_every)
    finally:
        torch.set_num_threads(threads)


def _train_heads(diffs: torch.Tensor, jobs: Sequence[HeadJob], steps: Sequence[int], batch_size: int, *,
                 chunk: int, progress: bool, log_every: int = 0) -> tuple[np.ndarray, HeadLog | None]:
    steps = sorted(set(int(s) for s in steps))
    max_step = steps[-1] if steps else 0
    dim = diffs.shape[1]
    out = np.zeros((len(jobs), len(steps), dim), dtype=np.float32)
    log_steps = sorted({*range(log_every, max_step + 1, log_every), max_step} - {0}) if log_every else []
    log_loss = np.full((len(jobs), len(log_steps)), np.nan)
    log_grad = np.full((len(jobs), len(log_steps)), np.nan)
    groups = _stream_groups(jobs)
    c_max = max((len(g) for g in groups), default=1)
    per_chunk = max(1, chunk // c_max)
    b1, b2, eps = 0.9, 0.999, 1e-8
    cols = torch.arange(batch_size, dtype=torch.int64)[None, :]
    bar = tqdm(total=len(groups) * max_step, desc="training heads", unit="step", disable=not progress, leave=False)
    for g0 in range(0, len(groups), per_chunk):
        gs = groups[g0 : g0 + per_chunk]
        S = len(gs)
        lead = [jobs[g[0]] for g in gs]
        counts = torch.tensor([len(j.train_idx) for j in lead], dtype=torch.int64)
        offsets = torch.zeros(S, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)[:-1]
        flat_idx = torch.from_numpy(np.concatenate([j.train_idx for j in lead] + [np.zeros(1, dtype=np.int64)]).astype(np.int64))
        flat_w = torch.from_numpy(np.concatenate([j.weights for j in lead] + [np.zeros(1)]).astype(np.float32))
        stream = torch.tensor([j.stream & 0x7FFFFFFF for j in lead], dtype=torch.int64)[:, None]
        safe_counts = counts.clamp(min=1)[:, None]
        # [S, C, d] parameters; padded slots (streams with fewer jobs) are inactive
        theta = torch.zeros(S, c_max, dim)
        anchor = torch.zeros(S, c_max, dim)
        lr = torch.zeros(S, c_max, 1)
        pull = torch.zeros(S, c_max, 1)
        active = torch.zeros(S, c_max, 1)
        for s, g in enumerate(gs):
            for c, i in enumerate(g):
                theta[s, c] = torch.from_numpy(np.asarray(jobs[i].init, dtype=np.float32))
                anchor[s, c] = torch.from_numpy(np.asarray(jobs[i].anchor, dtype=np.float32))
                lr[s, c], pull[s, c] = jobs[i].lr, jobs[i].pull
                active[s, c] = float(len(jobs[i].train_idx) > 0)
        m = torch.zeros_like(theta)
        v = torch.zeros_like(theta)
        snaps = torch.zeros(S, c_max, len(steps), dim)
        si = li = 0
        loss_sum = torch.zeros(S, c_max, dtype=torch.float64)
        since = 0
        l_loss = torch.zeros(S, c_max, len(log_steps), dtype=torch.float64)
        l_grad = torch.zeros(S, c_max, len(log_steps), dtype=torch.float64)
        if steps and steps[0] == 0:
            snaps[:, :, 0] = theta
            si = 1
        for t in range(1, max_step + 1):
            r = hash32(hash32(stream * 1000003 + t) ^ (cols * 2654435761 & 0xFFFFFFFF))
            pos = offsets[:, None] + (r % safe_counts)
            pair = flat_idx[pos.clamp(max=len(flat_idx) - 1)]
            w = flat_w[pos.clamp(max=len(flat_w) - 1)]
            x = diffs[pair]  # [S, B, d], once per stream
            margin = torch.bmm(x, theta.transpose(1, 2))  # [S, B, C]
            coef = -(w[:, :, None] * torch.sigmoid(-margin)) / batch_size
            grad = torch.bmm(coef.transpose(1, 2), x) + 2.0 * pull * (theta - anchor)
            grad = grad * active
            if log_every:  # the objective of this batch, before the step (as the gradient)
                bl = (w[:, :, None] * F.softplus(-margin)).sum(1) / batch_size * active[..., 0]
                loss_sum += (bl + (pull[..., 0] * ((theta - anchor) ** 2).sum(-1))).double()
                since += 1
                if li < len(log_steps) and t == log_steps[li]:
                    l_loss[:, :, li] = loss_sum / since
                    l_grad[:, :, li] = grad.double().norm(dim=-1)
                    loss_sum.zero_()
                    since = 0
                    li += 1
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            mhat = m / (1 - b1**t)
            vhat = v / (1 - b2**t)
            theta = theta - lr * mhat / (vhat.sqrt() + eps) * active
            if si < len(steps) and t == steps[si]:
                snaps[:, :, si] = theta
                si += 1
            bar.update(S)
        sn = snaps.numpy()
        for s, g in enumerate(gs):
            for c, i in enumerate(g):
                out[i] = sn[s, c]
                if len(jobs[i].train_idx):  # a job without pairs trains nothing: its curve stays NaN
                    log_loss[i], log_grad[i] = l_loss[s, c].numpy(), l_grad[s, c].numpy()
    bar.close()
    return out, (HeadLog(np.asarray(log_steps, dtype=np.int64), log_loss, log_grad) if log_every else None)


def val_accuracy(diffs: torch.Tensor, jobs: Sequence[HeadJob], snapshots: np.ndarray) -> np.ndarray:
    """Accuracy (tie = wrong) of every snapshot on its job's ``val_idx`` pairs: ``[jobs, steps]``.

    One matmul per distinct validation set; NaN for a job without validation pairs.
    """
    J, S, d = snapshots.shape
    acc = np.full((J, S), np.nan)
    by_val: dict[bytes, list[int]] = {}
    for i, j in enumerate(jobs):
        if len(j.val_idx):
            by_val.setdefault(np.ascontiguousarray(j.val_idx, dtype=np.int64).tobytes(), []).append(i)
    for key, idx in by_val.items():
        x = diffs[torch.from_numpy(np.frombuffer(key, dtype=np.int64).copy())]  # [n_val, d]
        th = torch.from_numpy(snapshots[idx].reshape(-1, d))  # [jobs * steps, d]
        margins = x @ th.T
        acc[idx] = (margins > 0).float().mean(0).numpy().reshape(len(idx), S)
    return acc


