"""Property tests (Hypothesis) of the selection math and the loaders.

Deterministic in CI: every test runs with ``derandomize=True`` (examples drawn from a fixed seed)
and no deadline, so a slow machine never fails a test and a failure always reproduces.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from scpo.config import DataConfig
from scpo.heads import HeadJob, train_heads
from scpo.load import add_split_column, assign_splits, load_data
from scpo.selection import keep_mask, log_sigmoid, scpo_weights, select_pairs, weighted_bt_loss
from scpo.trainer import SCPOTrainer

MATH = settings(derandomize=True, deadline=None, max_examples=300)
LOADERS = settings(derandomize=True, deadline=None, max_examples=60,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

R = 1e4
"""Reward differences (margins) are drawn from [-R, R]; rewards from [-R/2, R/2] for the loss."""

margins = arrays(np.float64, st.integers(1, 64), elements=st.floats(-R, R, allow_nan=False, allow_infinity=False))
taus = st.floats(1e-12, 1.0, exclude_min=False).filter(lambda t: t > 0)
betas = st.one_of(st.floats(1e-6, 1e6), st.just(math.inf))


# ----------------------------------------------------------------------------------------------
# selection math


@MATH
@given(margins, betas)
def test_weights_in_unit_interval_never_nan(delta, beta):
    w = scpo_weights(delta, beta)
    assert w.shape == delta.shape
    assert not np.isnan(w).any()
    assert ((w >= 0.0) & (w <= 1.0)).all()
    assert (w[delta >= 0] == 1.0).all()  # a pair the global model already ranks right keeps weight 1


@MATH
@given(margins, taus, taus)
def test_kept_set_only_grows_with_tau(delta, t1, t2):
    lo, hi = min(t1, t2), max(t1, t2)
    k_lo, k_hi = keep_mask(delta, lo), keep_mask(delta, hi)
    assert not (k_lo & ~k_hi).any()  # kept at the smaller tau => kept at the larger
    assert keep_mask(delta, 1.0).all()  # tau = 1 keeps every finite pair


@MATH
@given(margins, betas, betas)
def test_weights_only_grow_with_beta(delta, b1, b2):
    lo, hi = min(b1, b2), max(b1, b2)
    assert (scpo_weights(delta, lo) <= scpo_weights(delta, hi)).all()


rewards = arrays(np.float64, st.integers(1, 64), elements=st.floats(-R / 2, R / 2, allow_nan=False))


@MATH
@given(st.data(), betas)
def test_loss_is_finite_for_finite_rewards(data, beta):
    chosen = data.draw(rewards)
    rejected = data.draw(arrays(np.float64, chosen.shape, elements=st.floats(-R / 2, R / 2, allow_nan=False)))
    delta = chosen - rejected  # within [-R, R]
    w = scpo_weights(delta, beta)
    for weights in (None, w, np.zeros_like(w)):
        loss = weighted_bt_loss(chosen, rejected, weights)
        assert math.isfinite(loss) and loss >= 0.0
    assert np.isfinite(log_sigmoid(delta)).all()
    # the same loss in the Trainer (float32 torch), from the model's rewards
    loss_t = _trainer_loss(chosen, rejected, w)
    assert math.isfinite(loss_t) and loss_t >= 0.0
    assert abs(loss_t - weighted_bt_loss(chosen, rejected, w)) <= 1e-3 * max(1.0, abs(loss_t))


def _trainer_loss(chosen: np.ndarray, rejected: np.ndarray, w: np.ndarray) -> float:
    """:meth:`SCPOTrainer.compute_loss` on a stand-in model whose rewards are given."""
    logits = torch.tensor(np.concatenate([chosen, rejected]), dtype=torch.float32)[:, None]
    fake_self = SimpleNamespace(_anchor=None, pull=0.0, seen_pairs=0)
    fake_model = lambda **kw: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {"weight": torch.tensor(w, dtype=torch.float32), "input_ids": torch.zeros(2 * len(w), 1)}
    return float(SCPOTrainer.compute_loss(fake_self, fake_model, inputs))


@settings(derandomize=True, deadline=None, max_examples=30)
@given(arrays(np.float32, st.tuples(st.integers(1, 16), st.integers(1, 8)),
              elements=st.floats(-R, R, allow_nan=False, width=32)), betas)
def test_head_training_stays_finite(diffs, beta):
    """Head mode's batched Adam on margins up to R: parameters stay finite."""
    d = torch.from_numpy(diffs)
    n, dim = diffs.shape
    w0 = np.ones(dim, dtype=np.float32) / dim
    delta = diffs.astype(np.float64) @ w0
    job = HeadJob(train_idx=np.arange(n), weights=scpo_weights(delta, beta), init=w0, anchor=w0, lr=1e-2, pull=1.0,
                  stream=1)
    out = train_heads(d, [job], [1, 5], batch_size=4)
    assert np.isfinite(out).all()


@MATH
@given(margins, taus, betas)
def test_selection_is_consistent(delta, tau, beta):
    sel = select_pairs(delta, tau, beta)
    assert sel.n_kept == int(keep_mask(delta, tau).sum())
    assert ((sel.probability >= 0) & (sel.probability <= 1)).all()
    # kept pairs are exactly those with p < tau (away from the float boundary)
    clear = np.abs(sel.probability - tau) > 1e-9
    assert (sel.keep[clear] == (sel.probability[clear] < tau)).all() or tau == 1.0


# ----------------------------------------------------------------------------------------------
# loaders never produce a pair that crosses the train/test split

words = st.sampled_from(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"])
texts = st.lists(words, min_size=1, max_size=3).map(" ".join)
groups = st.sampled_from(["A", "B", "Mexico", "S. Africa", "South Africa"])


def _split_sides(pairs, seed: float) -> dict[str, str]:
    keys = sorted(set(pairs["split_key"]))
    return assign_splits(keys, seed=seed, test_fraction=0.3, global_fraction=0.2)


def _assert_no_crossing(pairs, assignment, unit: str) -> None:
    """Every pair lies on one side, and no unit (prompt, session, question) lies on two."""
    split = add_split_column(pairs, assignment)
    side_of_unit: dict[str, str] = {}
    for key, side, u in zip(split["split_key"], split["split"], pairs[unit]):
        assert assignment[key] == side
        assert side_of_unit.setdefault(u, side) == side, f"{unit} {u!r} on two sides"


@LOADERS
@given(st.lists(st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts, "group": groups}),
                min_size=1, max_size=25),
       st.integers(0, 2**16), st.sampled_from([".jsonl", ".csv"]))
def test_pairs_loader_never_crosses_the_split(rows, seed, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / f"pairs{suffix}", rows)
        try:
            data = load_data(DataConfig(dataset="pairs", data_path=str(path)))
        except Exception as e:  # only "nothing usable" may stop it: every row is valid text
            assert "no usable pairs" in str(e), e
            assert all(r["chosen"] == r["rejected"] for r in rows)
            return
    pairs = data.pairs
    assert list(pairs["split_key"]) == list(pairs["prompt"])  # default split key: the prompt
    assert all(c != r for c, r in zip(pairs["chosen"], pairs["rejected"]))
    _assert_no_crossing(pairs, _split_sides(pairs, seed), "prompt")


rating_rows = st.lists(
    st.fixed_dictionaries({"prompt": st.sampled_from(["p1", "p2"]), "response": texts,
                           "score": st.integers(1, 5), "group": st.sampled_from(["A", "Mexico"]),
                           "session": st.sampled_from("stuv")}),
    min_size=2, max_size=30)


@LOADERS
@given(rating_rows, st.integers(0, 2**16), st.booleans())
def test_ratings_loader_never_crosses_the_split(rows, seed, with_user):
    if with_user:  # a user column as split key: one user per session
        rows = [{**r, "user": "user-" + str("stuv".index(r["session"]) % 2)} for r in rows]
    with tempfile.TemporaryDirectory() as d:
        path = _write(Path(d) / "ratings.jsonl", rows)
        cols = {"split_key": "user"} if with_user else {}
        try:
            data = load_data(DataConfig(dataset="ratings", data_path=str(path), columns=cols))
        except Exception as e:
            assert "no usable pairs" in str(e), e
            return
    pairs = data.pairs
    # both responses of a pair come from rows of the same session and split key as the pair
    by_row = {i + 1: r for i, r in enumerate(rows)}
    for pid, key in zip(pairs["pair_id"], pairs["split_key"]):
        a, b = (int(x) for x in pid.split("-")[1:3])
        ra, rb = by_row[a], by_row[b]
        assert ra["session"] == rb["session"] and ra["prompt"] == rb["prompt"]
        assert key == (ra["user"] if with_user else ra["session"]) == (rb["user"] if with_user else rb["session"])
    sessions = [pid_session(by_row, pid) for pid in pairs["pair_id"]]
    pairs = pairs.add_column("session", sessions)
    _assert_no_crossing(pairs, _split_sides(pairs, seed), "session")


def pid_session(by_row, pid: str) -> str:
    return by_row[int(pid.split("-")[1])]["session"]


shares3 = st.lists(st.integers(0, 10), min_size=3, max_size=3)
goqa_rows = st.lists(
    st.tuples(st.sampled_from(["Q one?", "Q two?", "Q three?", "Q four?"]),
              st.builds(lambda mx, rest: {"Mexico": mx, **rest}, shares3,  # a default group is always there
                        st.dictionaries(st.sampled_from(["Chile", "Britain", "Great Britain"]), shares3, max_size=3))),
    min_size=1, max_size=12)


@LOADERS
@given(goqa_rows, st.integers(0, 2**16))
def test_goqa_loader_never_crosses_the_split(rows, seed):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "goqa.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["question", "selections", "options", "source"])
            for q, dist in rows:
                shares = {c: [x / sum(v) if sum(v) else 0.0 for x in v] for c, v in dist.items()}
                w.writerow([q, f"defaultdict(<class 'list'>, {shares!r})", "['a', 'b', 'c']", ""])
        data = load_data(DataConfig(dataset="goqa", data_path=str(path), groups=None))
    for ds in (data.pairs, data.global_pairs):
        if len(ds) == 0:
            continue
        assert list(ds["split_key"]) == list(ds["prompt"])  # split by question
        _assert_no_crossing(ds, _split_sides(ds, seed), "prompt")


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path
