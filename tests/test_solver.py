"""scpo.solver: the head's weighted logistic regression solved to convergence, checked against
independent solvers (scipy's L-BFGS-B, scikit-learn's LogisticRegression) on the synthetic tiny
preset's and GlobalOpinionQA's features, and on its edge cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from scpo.solver import (
    DEFAULT_PULLS,
    HeadProblem,
    choose_pull,
    feature_scale,
    solve_heads,
    validation_metrics,
)

SHARED = Path(os.environ.get("SCPO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_GOQA = SHARED / "goqa" / "global_opinions_partial.csv"
REL = 1e-6


def _prepare_capturing_global(cfg):
    """``prepare(cfg)`` and the global layer's training differences (as prepare gave them to Adam)."""
    import scpo.experiment as pl

    seen = {}
    original = pl.train_heads

    def spy(diffs, jobs, steps, batch_size, **kw):
        seen["diffs"] = diffs.double().numpy().copy()
        return original(diffs, jobs, steps, batch_size, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pl, "train_heads", spy)
        exp = pl.prepare(cfg, progress=False)
    return exp, seen["diffs"]


class Features:
    """What the solver needs from one prepared experiment: global pairs, group pairs, SCPO jobs."""

    def __init__(self, exp, gd):
        from scpo.selection import method_pairs

        self.gd = gd
        self.x = exp.diffs().double().numpy()
        self.anchor = exp.rm.head_params()[0].double().numpy()
        self.groups = {}
        for g in exp.groups[:2]:
            rows = np.flatnonzero((exp.group == g) & (exp.split == "train"))
            idx, w = method_pairs("scpo", exp.delta[rows], exp.cfg.select.tau, exp.cfg.select.beta)
            self.groups[g] = (rows[idx], np.asarray(w, dtype=np.float64))


def _feature_cache(request, root: Path) -> Path:
    """pytest's cache directory (features survive the session: later runs do not encode), else ``root``."""
    store = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    return store.mkdir("scpo-solver-features") if store is not None else root / "cache"


@pytest.fixture(scope="session")
def tiny_features(request, tmp_path_factory):
    from scpo.config import RunConfig

    root = tmp_path_factory.mktemp("solver-tiny")
    cfg = RunConfig().replace(synthetic_preset="tiny", cache_dir=str(_feature_cache(request, root)),
                              output_dir=str(root / "run"), steps=[20], head_solver="adam")
    return Features(*_prepare_capturing_global(cfg))


@pytest.fixture(scope="session")
def goqa_features(request, tmp_path_factory):
    if not REAL_GOQA.exists():
        pytest.skip(f"GlobalOpinionQA copy not found at {REAL_GOQA} (set SCPO_SHARED_DATA)")
    from scpo.config import RunConfig

    # the global layer on held-apart questions of the two countries: only their texts are encoded
    root = tmp_path_factory.mktemp("solver-goqa")
    cache = _feature_cache(request, root)
    cfg = RunConfig().replace(dataset="goqa", data_path=str(REAL_GOQA), groups=["Chile", "Mexico"],
                              global_source="holdout", cache_dir=str(cache), output_dir=str(root / "run"),
                              head_solver="adam")
    return Features(*_prepare_capturing_global(cfg))


@pytest.fixture(params=["tiny", "goqa"])
def features(request):
    return request.getfixturevalue(f"{request.param}_features")


def objective(x, rows, w, anchor, lam, s):
    """The module docstring's objective in standardised coordinates, with its gradient (numpy)."""
    xs = x[rows] / s
    at = anchor * s
    n = len(rows)

    def f(t):
        m = xs @ t
        val = (w * np.logaddexp(0.0, -m)).sum() / n + lam * ((t - at) ** 2).sum()
        grad = -(xs.T @ (w * np.exp(-np.logaddexp(0.0, m)))) / n + 2.0 * lam * (t - at)
        return val, grad

    return f, at


def scipy_loss(x, rows, w, anchor, lam, s):
    from scipy.optimize import minimize

    f, at = objective(x, rows, w, anchor, lam, s)
    r = minimize(f, at.copy(), jac=True, method="L-BFGS-B",
                 options=dict(maxiter=200000, maxfun=200000, ftol=1e-16, gtol=1e-13, maxcor=50))
    return float(r.fun)


def sklearn_loss(x, rows, w, lam, s):
    """No anchor: mirrored pairs (x, 1) and (-x, 0), both with weight w; C = 1 / (4 n lam)."""
    from sklearn.linear_model import LogisticRegression

    xs = x[rows] / s
    n = len(rows)
    X = np.concatenate([xs, -xs])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    lr = LogisticRegression(fit_intercept=False, C=1.0 / (4.0 * n * lam), solver="newton-cholesky",
                            tol=1e-12, max_iter=1000)
    lr.fit(X, y, sample_weight=np.concatenate([w, w]))
    f, _ = objective(x, rows, w, np.zeros(x.shape[1]), lam, s)
    return float(f(lr.coef_[0])[0])


def test_group_layers_with_a_pull_match_scipy(features):
    """SCPO-weighted group layers pulled towards the global layer: loss within 1e-6 of L-BFGS-B."""
    pulls = [1.0, 1e-2, 1e-3]
    probs = [HeadProblem(rows, w, features.anchor) for rows, w in features.groups.values()]
    assert all(np.abs(features.anchor).max() > 0 for _ in probs)  # a real, non-zero anchor
    sol = solve_heads(features.x, probs, pulls)
    assert sol.converged.all()
    for p, prob in enumerate(probs):
        for li, lam in enumerate(pulls):
            ref = scipy_loss(features.x, prob.rows, prob.weights, features.anchor, lam, sol.scale)
            assert abs(sol.loss[p, li] - ref) <= REL * abs(ref), (p, lam, sol.loss[p, li], ref)
            f, _ = objective(features.x, prob.rows, prob.weights, features.anchor, lam, sol.scale)
            assert f(sol.theta[p, li] * sol.scale)[0] == pytest.approx(sol.loss[p, li], rel=1e-12)


def test_global_layer_matches_sklearn(features):
    """The global layer (all its pairs, no anchor) and a weighted layer without anchor, vs sklearn."""
    x = features.gd
    n = len(x)
    rows_g, w_g = next(iter(features.groups.values()))
    probs = [HeadProblem(np.arange(n), np.ones(n)), HeadProblem(rows_g, w_g)]
    xs = [x, features.x]
    for prob, xx in zip(probs, xs):
        pulls = [1e-1, 1e-2]
        sol = solve_heads(xx, [prob], pulls)
        assert sol.converged.all()
        for li, lam in enumerate(pulls):
            ref = sklearn_loss(xx, prob.rows, prob.weights, lam, sol.scale)
            assert abs(sol.loss[0, li] - ref) <= REL * abs(ref), (lam, sol.loss[0, li], ref)
            assert sol.loss[0, li] <= ref * (1 + 1e-9)  # never worse than sklearn beyond rounding


def test_standardisation_folds_back_exactly(tiny_features):
    x = tiny_features.x
    rows, w = next(iter(tiny_features.groups.values()))
    anchor = tiny_features.anchor
    sol = solve_heads(x, [HeadProblem(rows, w, anchor)], [1e-2, 1e-4], keep_margins=True)
    for li in range(2):
        ours = x[rows] @ sol.theta[0, li]  # a saved layer's reward margins
        inner = sol.margins[0][li]  # the solver's own predictions
        np.testing.assert_allclose(ours, inner, rtol=1e-9, atol=1e-9 * np.abs(inner).max())
    # scaling one feature column by 1000 (and the anchor's weight on it by 1/1000) changes nothing
    x2 = x.copy()
    x2[:, 7] *= 1000.0
    a2 = anchor.copy()
    a2[7] /= 1000.0
    sol2 = solve_heads(x2, [HeadProblem(rows, w, a2)], [1e-2, 1e-4])
    assert sol2.scale[7] == pytest.approx(1000.0 * sol.scale[7])
    for li in range(2):
        np.testing.assert_allclose(x2[rows] @ sol2.theta[0, li], x[rows] @ sol.theta[0, li], rtol=1e-6, atol=1e-7)
        assert sol2.loss[0, li] == pytest.approx(sol.loss[0, li], rel=1e-9)
    # the one scale of the whole call: the default is the std of the rows used, floored
    np.testing.assert_allclose(sol.scale, feature_scale(x, rows))


def test_zero_weights_count_in_the_mean(tiny_features):
    """Zero-weight pairs stay in n: rows S + zero rows == rows S with weights scaled by |S| / n."""
    x = tiny_features.x
    rows, w = next(iter(tiny_features.groups.values()))
    extra = np.setdiff1d(np.arange(len(x)), rows)[:15]
    n = len(rows) + len(extra)
    scale = feature_scale(x)
    with_zeros = HeadProblem(np.concatenate([rows, extra]), np.concatenate([w, np.zeros(len(extra))]),
                             tiny_features.anchor)
    rescaled = HeadProblem(rows, w * len(rows) / n, tiny_features.anchor)
    plain = HeadProblem(rows, w, tiny_features.anchor)
    sol = solve_heads(x, [with_zeros, rescaled, plain], [1e-2], scale=scale)
    np.testing.assert_allclose(sol.theta[0], sol.theta[1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sol.loss[0], sol.loss[1], rtol=1e-10)
    assert np.abs(sol.theta[0] - sol.theta[2]).max() > 1e-4  # normalising by sum(w) or dropping zeros would not
    # all weights zero: only the pull is left, the optimum is the anchor
    allzero = solve_heads(x, [HeadProblem(rows, np.zeros(len(rows)), tiny_features.anchor)], [1e-2, 0.0], scale=scale)
    np.testing.assert_allclose(allzero.theta[0], np.stack([tiny_features.anchor] * 2), rtol=1e-12)
    assert allzero.converged.all() and (allzero.loss == 0).all()


def test_empty_problem_is_the_anchor(tiny_features):
    x = tiny_features.x
    empty = HeadProblem(np.zeros(0, dtype=np.int64), np.zeros(0), tiny_features.anchor)
    sol = solve_heads(x, [empty, HeadProblem(np.zeros(0, dtype=np.int64), np.zeros(0))], list(DEFAULT_PULLS),
                      scale=feature_scale(x))
    np.testing.assert_allclose(sol.theta[0], np.stack([tiny_features.anchor] * len(DEFAULT_PULLS)), rtol=1e-12)
    assert (sol.theta[1] == 0).all()
    assert sol.converged.all() and (sol.loss == 0).all() and (sol.iterations == 0).all()
    assert all(h.shape == (1, 2) for h in sol.history[0])


def test_no_pull_on_separable_data_stops_finite_and_says_so():
    rng = np.random.default_rng(0)
    d = 40
    x = rng.normal(size=(25, d)).astype(np.float32)  # 25 pairs in 40 dimensions: separable
    sol = solve_heads(x, [HeadProblem(np.arange(25), np.ones(25))], [1e-2, 0.0])
    assert bool(sol.converged[0, 0]) and not bool(sol.converged[0, 1])
    assert np.isfinite(sol.theta).all() and np.isfinite(sol.loss).all() and np.isfinite(sol.grad_norm).all()
    assert ((x @ sol.theta[0, 1]) > 0).all()  # stopped on the separability certificate
    # without the certificate (max_iter only) still finite, still not converged
    capped = solve_heads(x, [HeadProblem(np.arange(25), np.ones(25))], [0.0], max_iter=5)
    assert not capped.converged[0, 0] and capped.iterations[0, 0] <= 5 and np.isfinite(capped.theta).all()
    # not separable (noisy labels, many pairs): no pull converges to the unregularised optimum
    w_true = rng.normal(size=d)
    x2 = rng.normal(size=(2000, d))
    flip = rng.random(2000) < 1 / (1 + np.exp(x2 @ w_true))
    x2[flip] *= -1
    ok = solve_heads(x2, [HeadProblem(np.arange(2000), np.ones(2000))], [0.0])
    assert ok.converged[0, 0]
    f, _ = objective(x2, np.arange(2000), np.ones(2000), np.zeros(d), 0.0, ok.scale)
    assert np.abs(f(ok.theta[0, 0] * ok.scale)[1]).max() <= 1e-7


def test_history_and_determinism(features):
    rows, w = next(iter(features.groups.values()))
    probs = [HeadProblem(rows, w, features.anchor), HeadProblem(rows[::2], w[::2], features.anchor),
             HeadProblem(rows, w, features.anchor)]  # the third duplicates the first
    a = solve_heads(features.x, probs, list(DEFAULT_PULLS))
    b = solve_heads(features.x, probs, list(DEFAULT_PULLS))
    assert a.distinct_problems == 2
    for name in ("theta", "loss", "grad_norm", "iterations", "converged"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.theta[0], a.theta[2])
    for p in range(3):
        for li in range(len(DEFAULT_PULLS)):
            assert np.array_equal(a.history[p][li], b.history[p][li])
            h = a.history[p][li]
            assert h.shape == (a.iterations[p, li] + 1, 2)
            assert h[-1, 0] == a.loss[p, li] and h[-1, 1] == a.grad_norm[p, li]
            assert (np.diff(h[:, 0]) <= 1e-12 * abs(h[0, 0])).all()  # monotone (line search)
    one = a[0, 3]
    assert one.pull == DEFAULT_PULLS[3] and one.theta.shape == (features.x.shape[1],)


def test_validation_metrics_and_choice(tiny_features):
    x = tiny_features.x
    rows, w = next(iter(tiny_features.groups.values()))
    val = np.setdiff1d(np.arange(len(x)), rows)[:40]
    sol = solve_heads(x, [HeadProblem(rows, w, tiny_features.anchor), HeadProblem(rows, w)], [1.0, 1e-3])
    acc, nll = validation_metrics(x, [val, val[:10]], sol.theta)
    for p, v in enumerate([val, val[:10]]):
        for li in range(2):
            m = x[v] @ sol.theta[p, li]
            assert acc[p, li] == pytest.approx(float((m > 0).mean()))
            assert nll[p, li] == pytest.approx(float(np.logaddexp(0.0, -m).mean()))
    # a zero layer: every margin ties, tie = wrong, log-loss log 2; an empty set gives NaN
    acc0, nll0 = validation_metrics(x, [val, np.zeros(0, dtype=np.int64)], np.zeros((2, x.shape[1])))
    assert acc0[0] == 0.0 and nll0[0] == pytest.approx(np.log(2.0)) and np.isnan(acc0[1]) and np.isnan(nll0[1])

    pulls = [100.0, 1.0, 0.01, 0.0]
    inside = choose_pull(np.array([[0.7, 0.5, 0.6, 0.65], [0.7, 0.52, 0.6, np.nan]]), pulls)
    assert inside.pull == 1.0 and inside.edge is None and inside.score == pytest.approx(0.51)
    assert choose_pull(np.array([[0.4, 0.5, 0.6, 0.65]]), pulls).edge == "largest"
    assert choose_pull(np.array([[0.7, 0.5, 0.6, 0.45]]), pulls).edge == "smallest"
    assert choose_pull(np.array([[0.6, 0.7, 0.6, 0.5]]), pulls, criterion="accuracy").pull == 1.0
    assert choose_pull(np.array([[0.6, 0.5, 0.5, 0.6]]), pulls).pull == 1.0  # ties: the larger pull


def test_newton_head_solver_end_to_end(tmp_path):
    """``--head-solver newton`` through the pipeline: every layer converged, the saved score layers
    give the solver's margins, and the config's default grid is the solver's."""
    import json

    from safetensors.torch import load_file

    from scpo.cli import main
    from scpo.config import TrainConfig
    from scpo.experiment import prepare
    from scpo.fitting import fit
    from scpo.solver import DEFAULT_PULLS

    assert tuple(TrainConfig().head_pulls) == DEFAULT_PULLS
    out = tmp_path / "run"
    args = ["--synthetic-preset", "tiny", "--head-solver", "newton", "--cache-dir", str(tmp_path / "cache")]
    assert main(["run", "--quiet", "--plots", "false", *args, "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["global_model"]["solver"] == "newton" and res["global_model"]["solver_converged"]
    choices = [c for per in res["grid"]["choices"].values() for m in per.values() for c in m.values()]
    assert choices and all(c["solver"]["converged"] or c["pull"] == 0 for c in choices)
    from scpo.config import RunConfig

    cfg = RunConfig().replace(synthetic_preset="tiny", head_solver="newton", cache_dir=str(tmp_path / "cache"),
                              output_dir=str(tmp_path / "again"))
    exp = prepare(cfg, progress=False)
    fitted = fit(exp, ["global", "full", "scpo"], [0], progress=False)
    heads = load_file(str(out / "models" / "heads.safetensors"))
    test = np.flatnonzero(exp.split == "test")
    x = exp.diffs()[test].double().numpy()
    for key, w in heads.items():
        g, m = key.rsplit("/", 1)
        np.testing.assert_allclose(x @ w.double().numpy(), fitted.margins[(g, m, 0)], rtol=1e-5, atol=1e-6)
