"""The previous head trainer of :mod:`scpo.heads` (one gather per job per step), kept as bench_groups' baseline.

:func:`scpo.heads.train_heads` now groups the jobs that draw the same mini-batches (the grid
cells of one group, method, seed and fold) and does one gather per stream; this per-job version
is what it replaced. Same streams and math: the same choices, heads within float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from scpo.heads import HeadJob, hash32


def train_heads_per_job(
    diffs: torch.Tensor,
    jobs: Sequence[HeadJob],
    steps: Sequence[int],
    batch_size: int,
    *,
    chunk: int = 2048,
    progress: bool = False,
) -> np.ndarray:
    """Train many linear score layers at once; return snapshots ``[jobs, len(steps), dim]``.

    ``diffs[p] = features(chosen_p) - features(rejected_p)``: a linear head's reward margin is
    ``diffs[p] @ w`` (the bias cancels). Each step, every job draws ``batch_size`` of its pairs
    (uniformly, with replacement, from its own deterministic stream) and takes an Adam step on
    ``mean(w * softplus(-margin)) + pull * ||w - anchor||^2``. A job without pairs keeps its init.
    """
    steps = sorted(set(int(s) for s in steps))
    max_step = steps[-1] if steps else 0
    dim = diffs.shape[1]
    out = np.zeros((len(jobs), len(steps), dim), dtype=np.float32)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs) * max_step, desc="training heads", unit="step", disable=not progress, leave=False)
    for c0 in range(0, len(jobs), chunk):
        cj = jobs[c0 : c0 + chunk]
        J = len(cj)
        counts = torch.tensor([len(j.train_idx) for j in cj], dtype=torch.int64)
        offsets = torch.zeros(J, dtype=torch.int64)
        offsets[1:] = torch.cumsum(counts, 0)[:-1]
        flat_idx = torch.from_numpy(np.concatenate([j.train_idx for j in cj] + [np.zeros(1, dtype=np.int64)]).astype(np.int64))
        flat_w = torch.from_numpy(np.concatenate([j.weights for j in cj] + [np.zeros(1)]).astype(np.float32))
        theta = torch.from_numpy(np.stack([j.init for j in cj]).astype(np.float32))
        anchor = torch.from_numpy(np.stack([j.anchor for j in cj]).astype(np.float32))
        lr = torch.tensor([j.lr for j in cj], dtype=torch.float32)[:, None]
        pull = torch.tensor([j.pull for j in cj], dtype=torch.float32)[:, None]
        stream = torch.tensor([j.stream & 0x7FFFFFFF for j in cj], dtype=torch.int64)[:, None]
        active = (counts > 0).float()[:, None]
        m = torch.zeros_like(theta)
        v = torch.zeros_like(theta)
        b1, b2, eps = 0.9, 0.999, 1e-8
        cols = torch.arange(batch_size, dtype=torch.int64)[None, :]
        safe_counts = counts.clamp(min=1)[:, None]
        si = 0
        if steps and steps[0] == 0:
            out[c0 : c0 + J, 0] = theta.numpy()
            si = 1
        for t in range(1, max_step + 1):
            r = hash32(hash32(stream * 1000003 + t) ^ (cols * 2654435761 & 0xFFFFFFFF))
            pos = offsets[:, None] + (r % safe_counts)
            pair = flat_idx[pos.clamp(max=len(flat_idx) - 1)]
            w = flat_w[pos.clamp(max=len(flat_w) - 1)]
            x = diffs[pair]  # [J, B, d]
            margin = torch.einsum("jbd,jd->jb", x, theta)
            coef = -(w * torch.sigmoid(-margin)) / batch_size  # d loss / d margin
            grad = torch.einsum("jb,jbd->jd", coef, x) + 2.0 * pull * (theta - anchor)
            grad = grad * active
            m.mul_(b1).add_(grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            mhat = m / (1 - b1**t)
            vhat = v / (1 - b2**t)
            theta = theta - lr * mhat / (vhat.sqrt() + eps) * active
            if si < len(steps) and t == steps[si]:
                out[c0 : c0 + J, si] = theta.numpy()
                si += 1
            bar.update(J)
    bar.close()
    return out


def val_accuracy_per_job(diffs: torch.Tensor, jobs: Sequence[HeadJob], snapshots: np.ndarray) -> np.ndarray:
    """Accuracy (tie = wrong) of every snapshot on its job's ``val_idx`` pairs: ``[jobs, steps]``.

    NaN for a job without validation pairs.
    """
    J, S, _ = snapshots.shape
    acc = np.full((J, S), np.nan)
    for j, job in enumerate(jobs):
        if len(job.val_idx) == 0:
            continue
        x = diffs[torch.from_numpy(job.val_idx)]
        margins = x @ torch.from_numpy(snapshots[j]).T  # [n_val, S]
        acc[j] = (margins > 0).float().mean(0).numpy()
    return acc
