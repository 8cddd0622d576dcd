"""The SCPO selection math against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scpo.selection import (
    inverse_weights,
    keep_mask,
    logit,
    preference_probability,
    scpo_weights,
    select_pairs,
    validate_beta,
    validate_tau,
    weighted_bt_loss,
)


def test_weight_hand_values():
    # delta = -1, beta = 1.1: w = exp(-1/1.1) = 0.40289...
    assert scpo_weights(np.array([-1.0]), 1.1)[0] == pytest.approx(0.402890321529133, abs=1e-12)
    # positive margins are capped at 1
    assert scpo_weights(np.array([0.0, 0.5, 30.0]), 1.1).tolist() == [1.0, 1.0, 1.0]
    assert scpo_weights(np.array([-2.2]), 1.1)[0] == pytest.approx(math.exp(-2.0))


def test_filter_hand_values():
    # sigmoid(0.84) = 0.69847 < 0.7 kept; sigmoid(0.85) = 0.70057 dropped
    assert preference_probability(np.array([0.84]))[0] == pytest.approx(0.6984652160025387)
    assert preference_probability(np.array([0.85]))[0] == pytest.approx(0.7005671424739729)
    assert keep_mask(np.array([0.84, 0.85, -5.0]), 0.7).tolist() == [True, False, True]
    assert logit(0.7) == pytest.approx(math.log(0.7 / 0.3))


def test_explicit_off_switches():
    big = np.array([17.0, 100.0, 1e4, -1e4])
    # tau = 1 keeps everything, even where float32 sigmoid would round to 1.0
    assert keep_mask(big, 1.0).all()
    # beta = inf weighs everything 1, even extremely negative margins
    assert scpo_weights(big, math.inf).tolist() == [1.0] * 4


def test_extreme_margins_no_nan_no_overflow():
    d = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    w = scpo_weights(d, 1.1)
    assert np.isfinite(w).all() and (w >= 0).all() and (w <= 1).all()
    p = preference_probability(d)
    assert np.isfinite(p).all() and p[0] == 0.0 and p[-1] == 1.0
    assert np.isfinite(inverse_weights(d)).all()


def test_inverse_weights_hand_values():
    assert inverse_weights(np.array([-1.0, 0.0, 2.0])).tolist() == pytest.approx([math.e, 1.0, 1.0])


def test_select_pairs_modes():
    d = np.array([-1.0, 0.5, 2.0])
    s = select_pairs(d, 0.7, 1.1)
    assert s.keep.tolist() == [True, True, False]
    assert s.n_kept == 2
    assert s.kept_weights.tolist() == pytest.approx([math.exp(-1 / 1.1), 1.0])
    assert select_pairs(d, 0.7, 1.1, "none").weights.tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        select_pairs(d, 0.7, 1.1, "bogus")


def test_weighted_loss_hand_computation():
    # margins 1 and -1, weights 1 and 0.5: -(log s(1) + 0.5 log s(-1)) / 2
    expected = -(math.log(1 / (1 + math.exp(-1))) + 0.5 * math.log(1 / (1 + math.exp(1)))) / 2
    assert weighted_bt_loss(np.array([2.0, 0.0]), np.array([1.0, 1.0]), np.array([1.0, 0.5])) == pytest.approx(expected)
    # zero-weight pairs still count in the mean (the paper's code: mean over the whole batch)
    assert weighted_bt_loss(np.array([1.0, 5.0]), np.array([0.0, 5.0]), np.array([1.0, 0.0])) == pytest.approx(
        -math.log(1 / (1 + math.exp(-1))) / 2
    )
    assert math.isfinite(weighted_bt_loss(np.array([-1e4]), np.array([1e4])))


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.01, float("nan")])
def test_bad_tau(tau):
    with pytest.raises(ValueError):
        validate_tau(tau)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_bad_beta(beta):
    with pytest.raises(ValueError):
        validate_beta(beta)
