"""Head training solved as the convex problem it is: batched weighted logistic regression with a pull.

With the encoder frozen, a linear score layer's reward margin on pair ``i`` is ``x_i . theta`` where
``x_i = f(chosen_i) - f(rejected_i)`` (the bias cancels), so the weighted Bradley-Terry loss of the
layer is a weighted logistic regression on feature differences. For one problem (rows ``R`` of
``x``, ``n = |R|``, weights ``w_i >= 0``, anchor ``a``) and one pull ``lam >= 0`` this module
minimises, to convergence,

    L(theta) = (1/n) sum_{i in R} w_i softplus(-x_i . theta)  +  lam * || s * (theta - a) ||^2

* the mean is over all ``n`` pairs of the problem, zero weights included (never over ``sum w``),
  as in the paper's loss, so the weights keep their meaning relative to the pull;
* ``s`` ([d], > 0) is one per-feature scale for the whole call: by default the standard deviation
  of every row of ``x`` that some problem uses, floored at ``1e-6 * max(std)`` (``1`` where every
  std is zero), or the caller's (pass the same ``scale`` to every fit of one experiment so that
  ``lam`` means the same thing in all of them). The pull is measured in standardised coordinates:
  it is ``lam * ||theta~ - a~||^2`` with ``theta~ = s * theta``, which is what an L2 penalty after a
  ``StandardScaler`` (without centring) is;
* the solver works in those coordinates (``x~ = x / s``, ``x~ . theta~ = x . theta``) and folds the
  solution back exactly: ``HeadSolutions.theta`` is ``theta~ / s``, in the *original* coordinates,
  so a layer saved with it gives the rewards the solver optimised (up to float rounding);
* ``lam = 0`` is no pull: where the pairs are linearly separable there is no minimiser; the
  iterations stop at ``max_iter_no_pull`` (or when the parameters run away) with ``converged=False`` and
  finite values, never NaN. Such a ``theta`` is wherever the iterations stopped: it depends on the
  path (the previous pull's solution, the predictor), not only on the problem.

Algorithm: full-batch Newton's method, loss and gradient in float64 (Hessian ``X~' diag(w s'(m) / n) X~ + 2 lam I``,
Cholesky, Armijo back-tracking line search), batched: every distinct problem of a call (identical
rows, weights and anchor are solved once; in head mode the seeds of a method only differ for
``random-subset``) is stacked with others of similar size into one ``[problems, rows, d]`` tensor,
and the pulls are walked from the largest to the smallest, each warm-started at the previous
solution (the largest starts at the anchor), ``0`` last. Converged means ``max|grad| <= gtol`` in
standardised coordinates (for a pull > 0 the objective is ``2 lam``-strongly convex, so the loss is
then within ``||grad||^2 / (4 lam)`` of its minimum); for ``lam = 0`` also a Newton step
``max|step| <= xtol * max(1, max|theta~ - a~|, max|a~|)``. For ``lam = 0`` the iterations stop, not
converged, as soon as every positively weighted pair has a positive margin (a certificate that
the data are separable and no minimiser exists), or after ``max_iter_no_pull`` iterations.

Use (``x = exp.diffs()``, rows/weights from :func:`scpo.selection.method_pairs`)::

    scale = feature_scale(x, rows_of_every_fit)          # one scale for the experiment
    # the global layer: all its pairs, no anchor; pull by k-fold CV over split keys, then refit
    folds = [HeadProblem(fit_rows, np.ones(len(fit_rows))) for fit_rows in fit_rows_per_fold]
    sol = solve_heads(gd, folds, DEFAULT_PULLS, scale=scale)
    acc, nll = validation_metrics(gd, val_rows_per_fold, sol.theta)      # [folds, pulls]
    pick = choose_pull(nll, DEFAULT_PULLS)                                # pick.edge: warn if set
    theta = solve_heads(gd, [HeadProblem(all_rows, np.ones(n))], [pick.pull], scale=scale).theta[0, 0]
    # group layers: one problem per (group, method, seed, fold), anchor = the global layer
    # (zeros for scratch); one call for all of them and every pull, then choose per job
    # over its folds, refit per chosen pull

Deterministic: identical inputs give bit-identical outputs (torch runs single-threaded here; the
batches depend only on the inputs). A problem's result may differ from solving it in another call
with other problems by float rounding (different padding changes the summation blocking).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_PULLS",
    "FINE_PULLS",
    "HeadProblem",
    "HeadSolution",
    "HeadSolutions",
    "PullChoice",
    "choose_pull",
    "feature_scale",
    "solve_heads",
    "validation_metrics",
]

DEFAULT_PULLS: tuple[float, ...] = tuple(float(10.0**k) for k in range(2, -5, -1)) + (0.0,)
"""1e2, 1e1, ..., 1e-4 (decade log grid) and 0 (no pull): 8 values; on bench_groups' workload about
0.65x the time of :data:`FINE_PULLS` (``bench/bench_solver.py speed --pulls decade|half-decade``)."""

FINE_PULLS: tuple[float, ...] = tuple(float(10.0 ** (k / 2)) for k in range(4, -9, -1)) + (0.0,)
"""1e2, 10^1.5, ..., 1e-4 (half-decade log grid) and 0 (no pull): 14 values."""


@dataclass(frozen=True)
class HeadProblem:
    """One weighted logistic regression: rows of ``x``, their weights, the anchor of the pull.

    ``rows`` may repeat a row; ``n = len(rows)`` (zero weights included) divides the data term.
    ``anchor`` is in original coordinates (the global layer's weight for a group model); ``None``
    means zeros (the global layer itself, ``scratch``).
    """

    rows: np.ndarray
    weights: np.ndarray
    anchor: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(len(self.rows))


@dataclass(frozen=True)
class HeadSolution:
    """The solution of one (problem, pull)."""

    theta: np.ndarray
    """[d] float64, original coordinates: margins are ``x @ theta``."""
    pull: float
    loss: float
    """L(theta) as in the module docstring."""
    grad_norm: float
    """Euclidean norm of the gradient in standardised coordinates."""
    iterations: int
    """Newton iterations taken at this pull (0 when the warm start already satisfied the test)."""
    converged: bool
    history: np.ndarray
    """``[iterations + 1, 2]``: (loss, grad_norm) at the start and after every iteration."""


@dataclass
class HeadSolutions:
    """Solutions of every (problem, pull) of one :func:`solve_heads` call, as arrays.

    Index ``[p, l]``: problem ``p`` as passed (duplicates share their values), ``pulls[l]`` as passed.
    """

    pulls: np.ndarray
    """[L] the pulls, in the caller's order."""
    scale: np.ndarray
    """[d] the feature scale ``s`` used."""
    theta: np.ndarray
    """[P, L, d] float64, original coordinates."""
    loss: np.ndarray
    """[P, L]"""
    grad_norm: np.ndarray
    """[P, L] in standardised coordinates."""
    iterations: np.ndarray
    """[P, L] int"""
    converged: np.ndarray
    """[P, L] bool"""
    history: list[list[np.ndarray]]
    """``history[p][l]``: ``[iterations + 1, 2]`` (loss, grad_norm) per iteration."""
    margins: list[list[np.ndarray]] | None = None
    """With ``keep_margins=True``: the solver's own final margins of the problem's rows per (p, l),
    as it computed them (anchor margins plus the reduced design times the reduced coordinates)."""
    distinct_problems: int = 0
    """How many distinct problems were solved (after deduplication)."""

    def __getitem__(self, index: tuple[int, int]) -> HeadSolution:
        p, l_ = index
        return HeadSolution(
            theta=self.theta[p, l_], pull=float(self.pulls[l_]), loss=float(self.loss[p, l_]),
            grad_norm=float(self.grad_norm[p, l_]), iterations=int(self.iterations[p, l_]),
            converged=bool(self.converged[p, l_]), history=self.history[p][l_],
        )


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def feature_scale(x: np.ndarray | torch.Tensor, rows: np.ndarray | None = None) -> np.ndarray:
    """The default scale ``s``: per-feature standard deviation of ``x[rows]`` (all rows if None), floored.

    Floor: ``1e-6 * max(std)``; ``1`` everywhere if every std is zero or there are no rows.
    """
    xt = _as_tensor(x)
    d = xt.shape[1]
    if rows is not None:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return np.ones(d)
    elif xt.shape[0] == 0:
        return np.ones(d)
    # two passes in float64, a chunk of rows at a time (bounded temporaries, fixed order)
    n = xt.shape[0] if rows is None else len(rows)
    total = torch.zeros(d, dtype=torch.float64)
    chunks = range(0, n, 1 << 15)

    def chunk(s: int) -> torch.Tensor:
        sel = slice(s, s + (1 << 15))
        part = xt[sel] if rows is None else xt[torch.from_numpy(rows[sel])]
        return part.to(torch.float64)

    for s in chunks:
        total += chunk(s).sum(0)
    mean = total / n
    sq = torch.zeros(d, dtype=torch.float64)
    for s in chunks:
        sq += ((chunk(s) - mean) ** 2).sum(0)
    std = (sq / n).sqrt().numpy()
    top = float(std.max()) if d else 0.0
    if not np.isfinite(top) or top <= 0.0:
        return np.ones(d)
    return np.maximum(std, 1e-6 * top)


def _problem_key(p: HeadProblem, d: int) -> bytes:
    h = hashlib.sha1()
    rows = np.ascontiguousarray(p.rows, dtype=np.int64)
    h.update(np.int64(len(rows)).tobytes())
    h.update(rows.tobytes())
    h.update(np.ascontiguousarray(p.weights, dtype=np.float64).tobytes())
    a = np.zeros(d) if p.anchor is None else np.ascontiguousarray(p.anchor, dtype=np.float64)
    h.update(a.tobytes())
    return h.digest()


def _softplus(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(z)


def solve_heads(
    x: np.ndarray | torch.Tensor,
    problems: Sequence[HeadProblem],
    pulls: Sequence[float] = DEFAULT_PULLS,
    *,
    scale: np.ndarray | None = None,
    max_iter: int = 50,
    max_iter_no_pull: int = 20,
    gtol: float = 1e-7,
    xtol: float = 1e-7,
    batch_bytes: int = 1 << 23,
    keep_margins: bool = False,
    hessian_dtype: torch.dtype = torch.float32,
    predict: bool = True,
) -> HeadSolutions:
    """Solve every (problem, pull) of the module docstring's objective to convergence.

    ``x``: ``[pairs, d]`` feature differences (float32 or float64; rows are gathered, never copied
    whole). ``pulls``: values of ``lam`` (>= 0), any order. ``scale``: the ``s`` of the docstring
    (default :func:`feature_scale` of the rows the problems use). ``max_iter``: Newton iterations
    per (problem, pull). ``batch_bytes``: bound on one batch's gathered float64 rows (small batches
    stay in cache). ``hessian_dtype``: precision of the Hessian and its Cholesky factor, which only
    choose the Newton direction; loss, gradient, line search and the convergence test are float64,
    so the point converged to does not depend on it (float32: about 1.6x faster, same iterations).
    ``predict``: start each pull but the first from a first-order predictor along the path
    (``dz/dlam = -2 H^-1 z`` with the previous pull's last Cholesky factor) where it lowers the
    objective, instead of the previous solution itself. ``max_iter_no_pull``: the cap for
    ``lam = 0`` (no minimiser where the pairs are separable or nearly so: iterations there buy
    nothing but a larger norm, and with more pairs than features they are the expensive ones).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched ops: determinism, and a busy second core does not stall us
    try:
        return _solve(x, problems, pulls, scale, (max_iter, max_iter_no_pull), gtol, xtol, batch_bytes, keep_margins, hessian_dtype, predict)
    finally:
        torch.set_num_threads(threads)


def _solve(x, problems, pulls, scale, max_iter, gtol, xtol, batch_bytes, keep_margins, hdtype, predict) -> HeadSolutions:
    xt = _as_tensor(x)
    if xt.ndim != 2:
        raise ValueError(f"x must be [pairs, d], got shape {tuple(xt.shape)}")
    N, d = xt.shape
    pulls_arr = np.asarray([float(p) for p in pulls], dtype=np.float64)
    if len(pulls_arr) == 0 or (pulls_arr < 0).any() or not np.isfinite(pulls_arr).all():
        raise ValueError(f"pulls must be a non-empty list of finite values >= 0, got {list(pulls)}")
    for i, p in enumerate(problems):
        if len(p.rows) != len(p.weights):
            raise ValueError(f"problem {i}: {len(p.rows)} rows but {len(p.weights)} weights")
        if len(p.rows) and (np.min(p.rows) < 0 or np.max(p.rows) >= N):
            raise ValueError(f"problem {i}: rows outside [0, {N})")
        if len(p.weights) and (np.min(p.weights) < 0 or not np.isfinite(p.weights).all()):
            raise ValueError(f"problem {i}: weights must be finite and >= 0")
        if p.anchor is not None and np.shape(p.anchor) != (d,):
            raise ValueError(f"problem {i}: anchor must have shape ({d},)")
    if scale is None:
        used = np.concatenate([np.asarray(p.rows, dtype=np.int64) for p in problems] + [np.zeros(0, np.int64)])
        scale = feature_scale(xt, used)
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != (d,) or not (scale > 0).all() or not np.isfinite(scale).all():
        raise ValueError(f"scale must be [{d}] finite and > 0")
    s_t = torch.from_numpy(scale)

    # distinct problems
    first: dict[bytes, int] = {}
    which = np.zeros(len(problems), dtype=np.int64)
    uniq: list[HeadProblem] = []
    for i, p in enumerate(problems):
        k = _problem_key(p, d)
        if k not in first:
            first[k] = len(uniq)
            uniq.append(p)
        which[i] = first[k]

    order_l = np.argsort(-pulls_arr, kind="stable")  # largest pull first, 0 last
    U, L = len(uniq), len(pulls_arr)
    theta = np.zeros((U, L, d))
    loss = np.zeros((U, L))
    gnorm = np.zeros((U, L))
    iters = np.zeros((U, L), dtype=np.int64)
    conv = np.zeros((U, L), dtype=bool)
    hist: list[list[np.ndarray]] = [[np.zeros((1, 2))] * L for _ in range(U)]
    marg: list[list[np.ndarray]] | None = [[np.zeros(0)] * L for _ in range(U)] if keep_margins else None

    # batches of problems of similar size (sorted by n), bounded gathered memory
    by_size = sorted(range(U), key=lambda u: (uniq[u].n, u))
    batches: list[list[int]] = []
    cur: list[int] = []
    for u in by_size:
        n_max = max(uniq[u].n, 1)
        if cur and (len(cur) + 1) * n_max * d * 8 > batch_bytes:
            batches.append(cur)
            cur = []
        cur.append(u)
    if cur:
        batches.append(cur)

    for batch in batches:
        _solve_batch(xt, s_t, uniq, batch, pulls_arr, order_l, max_iter, gtol, xtol, hdtype, predict,
                     theta, loss, gnorm, iters, conv, hist, marg)

    theta_orig = theta / scale  # fold back: theta = theta~ / s
    return HeadSolutions(
        pulls=pulls_arr, scale=scale, theta=theta_orig[which], loss=loss[which], grad_norm=gnorm[which],
        iterations=iters[which], converged=conv[which], history=[hist[u] for u in which],
        margins=[marg[u] for u in which] if marg is not None else None, distinct_problems=U,
    )


def _solve_batch(xt, s_t, uniq, batch, pulls_arr, order_l, max_iter, gtol, xtol, hdtype, predict,
                 theta_out, loss_out, gnorm_out, iters_out, conv_out, hist_out, marg_out) -> None:
    """Solve the problems ``batch`` (indices into ``uniq``) for every pull, largest first.

    Coordinates: ``theta~ = a~ + V z``. With fewer rows than features, ``V`` is the right singular
    basis of the problem's standardised rows (thin SVD ``X~ = U S V'``): the data term only sees
    ``X~ V`` and the optimum of a pull > 0 lies in ``a~ + span(V)``, so Newton runs in ``k = n``
    dimensions (design ``Z = U S``, pull ``lam ||z||^2``). Otherwise ``V = I`` and ``Z = X~``.
    """
    d = xt.shape[1]
    B = len(batch)
    n_max = max(max(uniq[u].n for u in batch), 1)
    X = torch.zeros(B, n_max, d, dtype=torch.float64)
    c = torch.zeros(B, n_max, dtype=torch.float64)
    anchor = torch.zeros(B, d, dtype=torch.float64)
    for b, u in enumerate(batch):
        p = uniq[u]
        if p.n:
            X[b, : p.n] = xt[torch.from_numpy(np.asarray(p.rows, dtype=np.int64))].to(torch.float64) / s_t
            c[b, : p.n] = torch.from_numpy(np.asarray(p.weights, dtype=np.float64)) / p.n
        if p.anchor is not None:
            anchor[b] = torch.from_numpy(np.asarray(p.anchor, dtype=np.float64)) * s_t
    offset = torch.bmm(X, anchor.unsqueeze(2)).squeeze(2)  # margins of the anchor
    if n_max < d:
        U_, S_, Vh = torch.linalg.svd(X, full_matrices=False)
        Z = U_ * S_.unsqueeze(1)  # [B, n, n]
        V = Vh.transpose(1, 2)  # [B, d, n]
    else:
        Z, V = X, None
    k = Z.shape[2]
    Zlow = Z if hdtype == torch.float64 else Z.to(hdtype)  # the Hessian's copy of the design
    positive = c > 0
    anchor_max = anchor.abs().amax(1).clamp(min=1.0)
    z = torch.zeros(B, k, dtype=torch.float64)  # the largest pull starts at the anchor

    def objective(Za, oa, ca, za, lam):
        m = oa + torch.bmm(Za, za.unsqueeze(2)).squeeze(2)
        return (ca * _softplus(-m)).sum(1) + lam * (za * za).sum(1), m

    factor = torch.zeros(B, k, k, dtype=hdtype)  # the last Cholesky factor of every problem
    has_factor = torch.zeros(B, dtype=torch.bool)
    lam_prev = None
    max_iter_pull, max_iter_no_pull = max_iter
    for li in order_l:
        lam = float(pulls_arr[li])
        cap = max_iter_pull if lam > 0 else min(max_iter_pull, max_iter_no_pull)
        if predict and lam_prev is not None and lam < lam_prev and bool(has_factor.any()):
            # predictor along the path: d z / d lam = -2 (H + 2 lam I)^-1 z, with the last factor;
            # kept only where it lowers the new objective (one objective evaluation)
            P_ = torch.nonzero(has_factor).squeeze(1)
            dz = torch.cholesky_solve(z[P_].to(hdtype).unsqueeze(2), factor[P_]).squeeze(2).to(torch.float64)
            cand = z[P_] + 2.0 * (lam_prev - lam) * dz
            f_old, _ = objective(Z[P_], offset[P_], c[P_], z[P_], lam)
            f_new, _ = objective(Z[P_], offset[P_], c[P_], cand, lam)
            better = torch.isfinite(f_new) & (f_new < f_old)
            z[P_[better]] = cand[better]
        lam_prev = lam
        hists: list[list[tuple[float, float]]] = [[] for _ in range(B)]
        it = np.zeros(B, dtype=np.int64)
        ok = np.zeros(B, dtype=bool)
        runaway = np.zeros(B, dtype=bool)
        f_cur = torch.zeros(B, dtype=torch.float64)
        g_cur = torch.zeros(B, dtype=torch.float64)
        active = np.arange(B)
        while len(active):
            A = torch.from_numpy(active)
            full = len(active) == B
            Za, oa, ca, za = (Z, offset, c, z) if full else (Z[A], offset[A], c[A], z[A])
            f, m = objective(Za, oa, ca, za, lam)
            sig = torch.sigmoid(-m)
            grad = -torch.bmm((ca * sig).unsqueeze(1), Za).squeeze(1) + 2.0 * lam * za
            gn = grad.norm(dim=1)
            f_cur[A], g_cur[A] = f, gn
            fl, gl = f.tolist(), gn.tolist()
            for kk, b in enumerate(active):
                hists[b].append((fl[kk], gl[kk]))
            gmax = grad.abs().amax(1)
            small_g = (gmax <= gtol).numpy()
            stop = (it[active] >= cap) | runaway[active]
            conv_now = np.zeros(len(active), dtype=bool)
            if lam > 0.0:
                # strongly convex: ||theta~ - theta~*|| <= ||grad|| / (2 lam), the gradient test suffices
                conv_now = small_g.copy()
            else:
                # every positively weighted pair ranked right: separable, no minimiser exists
                pa = positive if full else positive[A]
                stop |= (((m > 0) | ~pa).all(1) & pa.any(1)).numpy() & ~small_g
            finished = conv_now | stop
            run = np.flatnonzero(~finished)
            if len(run):
                R = torch.from_numpy(run)
                sub = len(run) < len(active)
                Zr, orr, cr, zr, gr = (Za[R], oa[R], ca[R], za[R], grad[R]) if sub else (Za, oa, ca, za, grad)
                sr = sig[R] if sub else sig
                # Newton direction: (Z' diag(c s'(m)) Z + 2 lam I) step = -grad, Cholesky with jitter
                h = cr * sr * (1.0 - sr)
                Zl = Zlow if full and not sub else (Zlow[A] if not sub else Zlow[A[R]])
                H = torch.bmm((Zl * h.to(hdtype).unsqueeze(2)).transpose(1, 2), Zl)
                diag = torch.diagonal(H, dim1=1, dim2=2)
                jitter = diag.mean(1).clamp(min=1e-30) * (1e-12 if hdtype == torch.float64 else 1e-6)
                diag.add_(2.0 * lam)
                step = torch.zeros_like(zr)
                pending = torch.ones(len(run), dtype=torch.bool)
                added = torch.zeros(len(run), dtype=hdtype)
                for _ in range(8):
                    idx = torch.nonzero(pending).squeeze(1)
                    if len(idx) == 0:
                        break
                    Hi = H[idx]
                    torch.diagonal(Hi, dim1=1, dim2=2).add_((jitter[idx] - added[idx]).unsqueeze(1))
                    added[idx] = jitter[idx]
                    Lc, info = torch.linalg.cholesky_ex(Hi)
                    H[idx] = Hi
                    good = info == 0
                    if good.any():
                        gi = idx[good]
                        step[gi] = -torch.cholesky_solve(gr[gi].unsqueeze(2).to(hdtype), Lc[good]).squeeze(2).to(torch.float64)
                        pending[gi] = False
                        rows_b = A[R[gi]]
                        factor[rows_b] = Lc[good]
                        has_factor[rows_b] = True
                    jitter[idx[~good]] *= 1e4
                if pending.any():  # no positive definite Hessian even with jitter: a gradient step
                    step[pending] = -gr[pending]
                if lam == 0.0:  # no strong convexity: the step must be small too
                    size = torch.maximum(zr.abs().amax(1), anchor_max[A[R]])
                    small = (small_g[run] & (step.abs().amax(1) <= xtol * size).numpy())
                    conv_now[run[small]] = True
                    finished[run[small]] = True
                    keep = np.flatnonzero(~small)
                else:
                    keep = np.arange(len(run))
                if len(keep):  # Armijo back-tracking
                    Kt = torch.from_numpy(keep)
                    slope = (gr[Kt] * step[Kt]).sum(1)
                    t = torch.ones(len(keep), dtype=torch.float64)
                    accepted = torch.zeros(len(keep), dtype=torch.bool)
                    base = zr[Kt]
                    new = base.clone()
                    fr = f[R[Kt]]
                    for _ in range(40):
                        todo = torch.nonzero(~accepted).squeeze(1)
                        if len(todo) == 0:
                            break
                        rt = Kt[todo]
                        cand = base[todo] + t[todo, None] * step[rt]
                        fc, _ = objective(Zr[rt], orr[rt], cr[rt], cand, lam)
                        good = torch.isfinite(fc) & (fc <= fr[todo] + 1e-4 * t[todo] * slope[todo] + 1e-15 * fr[todo].abs())
                        new[todo[good]] = cand[good]
                        accepted[todo[good]] = True
                        t[todo[~good]] *= 0.5
                    acc_np = accepted.numpy()
                    pos = run[keep]  # positions in active
                    moved = pos[acc_np]
                    z[torch.from_numpy(active[moved])] = new[accepted]
                    it[active[moved]] += 1
                    runaway[active[moved]] = (new[accepted].abs().amax(1) > 1e8).numpy()
                    # no decrease found: the rounding floor; converged if the gradient is already tiny
                    stalled = pos[~acc_np]
                    finished[stalled] = True
                    conv_now[stalled] = (gmax[torch.from_numpy(stalled)] <= max(gtol, 1e-7)).numpy()
            done_k = np.flatnonzero(finished)
            ok[active[done_k]] = conv_now[done_k]
            active = active[~finished]
        # record, in standardised coordinates (folded back by the caller)
        th = anchor + (torch.bmm(V, z.unsqueeze(2)).squeeze(2) if V is not None else z)
        for b, u in enumerate(batch):
            theta_out[u, li] = th[b].numpy()
            loss_out[u, li] = float(f_cur[b])
            gnorm_out[u, li] = float(g_cur[b])
            iters_out[u, li] = it[b]
            conv_out[u, li] = ok[b]
            hist_out[u][li] = np.asarray(hists[b], dtype=np.float64).reshape(-1, 2)
            if marg_out is not None:
                n = uniq[u].n
                marg_out[u][li] = (offset[b, :n] + Z[b, :n] @ z[b]).numpy()


def validation_metrics(
    x: np.ndarray | torch.Tensor, val_rows: Sequence[np.ndarray], theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, log-loss) of ``theta`` on each problem's validation rows: ``[P, L]`` each.

    ``theta``: ``[P, L, d]`` (e.g. :attr:`HeadSolutions.theta`) or ``[P, d]``; ``val_rows[p]``:
    rows of ``x``. Accuracy counts a tie (margin 0) as wrong; log-loss is the unweighted mean
    ``softplus(-margin)`` (the Bradley-Terry negative log-likelihood). One float64 matmul per distinct
    validation set; NaN for an empty one.
    """
    theta = np.asarray(theta, dtype=np.float64)
    squeeze = theta.ndim == 2
    if squeeze:
        theta = theta[:, None, :]
    P, L, d = theta.shape
    if len(val_rows) != P:
        raise ValueError(f"{len(val_rows)} validation sets for {P} problems")
    xt = _as_tensor(x)
    acc = np.full((P, L), np.nan)
    nll = np.full((P, L), np.nan)
    by_val: dict[bytes, list[int]] = {}
    for i, r in enumerate(val_rows):
        if len(r):
            by_val.setdefault(np.ascontiguousarray(r, dtype=np.int64).tobytes(), []).append(i)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, idx in by_val.items():
            rows = torch.from_numpy(np.frombuffer(key, dtype=np.int64).copy())
            xv = xt[rows].to(torch.float64)  # [n_val, d]
            th = torch.from_numpy(theta[idx].reshape(-1, d))  # [problems * pulls, d]
            m = xv @ th.T
            acc[idx] = (m > 0).double().mean(0).numpy().reshape(len(idx), L)
            nll[idx] = _softplus(-m).mean(0).numpy().reshape(len(idx), L)
    finally:
        torch.set_num_threads(threads)
    if squeeze:
        return acc[:, 0], nll[:, 0]
    return acc, nll


@dataclass(frozen=True)
class PullChoice:
    """The pull chosen on validation folds."""

    index: int
    """Position in the pulls."""
    pull: float
    score: float
    """Mean validation score over the folds that have validation pairs (accuracy, or log-loss)."""
    edge: str | None
    """``"largest"`` (the largest pull of the grid won: widen it upwards), ``"smallest"`` (the
    smallest positive pull won and the grid has no 0, or 0 won: no pull), or None (inside the grid)."""


def choose_pull(scores: np.ndarray, pulls: Sequence[float], criterion: str = "log_loss") -> PullChoice:
    """Choose a pull from validation scores ``[folds, L]`` (NaN = fold without validation pairs).

    ``criterion``: ``"log_loss"`` (lowest mean validation log-loss; smooth, few ties) or
    ``"accuracy"`` (highest mean accuracy). Ties go to the larger pull (the simpler model).
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pulls_arr = np.asarray(pulls, dtype=np.float64)
    if scores.shape[1] != len(pulls_arr):
        raise ValueError(f"scores have {scores.shape[1]} columns for {len(pulls_arr)} pulls")
    if criterion not in ("log_loss", "accuracy"):
        raise ValueError(f"criterion must be 'log_loss' or 'accuracy', got {criterion!r}")
    ok = ~np.isnan(scores)
    cnt = ok.sum(0)
    mean = np.where(cnt > 0, np.where(ok, scores, 0.0).sum(0) / np.maximum(cnt, 1), np.nan)
    key = -mean if criterion == "log_loss" else mean.copy()
    key = np.nan_to_num(key, nan=-np.inf)
    order = np.argsort(-pulls_arr, kind="stable")  # largest pull first: first maximum wins ties
    best = int(order[int(np.argmax(key[order]))])
    lam = float(pulls_arr[best])
    positive = pulls_arr[pulls_arr > 0]
    edge = None
    if len(pulls_arr) > 1:
        if lam == float(pulls_arr.max()):
            edge = "largest"
        elif lam == 0.0 or (lam == float(positive.min()) and not (pulls_arr == 0).any()):
            edge = "smallest"
    return PullChoice(index=best, pull=lam, score=float(mean[best]), edge=edge)
