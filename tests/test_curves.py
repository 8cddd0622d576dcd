"""Learning curves and the efficiency ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scpo.studies.curves import efficiency_ratio, reach_point, subsample_positions
from test_report import tiny_run


def test_reach_point_interpolates_on_a_hand_made_curve():
    xs, accs = [10, 20, 40], [0.60, 0.70, 0.80]
    assert reach_point(xs, accs, 0.75) == (pytest.approx(30.0), "interpolated")
    assert reach_point(xs, accs, 0.70) == (pytest.approx(20.0), "interpolated")
    assert reach_point(xs, accs, 0.62) == (pytest.approx(12.0), "interpolated")
    assert reach_point(xs, accs, 0.55) == (10.0, "at_first_point")
    x, status = reach_point(xs, accs, 0.85)
    assert math.isinf(x) and status == "not_reached"


def test_reach_point_takes_the_first_crossing_of_a_noisy_curve():
    # 0.7 first reached between 10 and 20 (at 15), although the curve dips again at 30
    assert reach_point([10, 20, 30, 40], [0.6, 0.8, 0.65, 0.9], 0.7) == (pytest.approx(15.0), "interpolated")


def test_efficiency_ratio():
    # full fine-tuning needs 30 pairs for what SCPO reaches with 10: ratio 3 (the paper's "300%")
    assert efficiency_ratio([10, 20, 40], [0.6, 0.7, 0.8], 10, 0.75) == (pytest.approx(3.0), "interpolated")
    r, status = efficiency_ratio([10, 20, 40], [0.6, 0.7, 0.8], 40, 0.9)
    assert math.isinf(r) and status == "not_reached"
    assert efficiency_ratio([10, 20, 40], [0.6, 0.7, 0.8], 20, 0.5) == (0.5, "at_first_point")


def test_subsamples_are_nested_and_sized():
    sizes = []
    prev: set[int] = set()
    for f in (0.1, 0.25, 0.5, 1.0):
        pos = subsample_positions(200, f, np.random.default_rng(7))
        assert len(pos) == round(200 * f) and np.all(np.diff(pos) > 0)
        assert prev <= set(pos.tolist())
        prev = set(pos.tolist())
        sizes.append(len(pos))
    assert sizes == [20, 50, 100, 200]
    assert len(subsample_positions(3, 0.01, np.random.default_rng(0))) == 1


def test_curves_in_a_tiny_run():
    tiny_results, _ = tiny_run()
    cv = tiny_results["curves"]
    assert cv["fractions"] == [0.5, 1.0]
    for g, rows in cv["per_group"].items():
        m = tiny_results["metrics"][g]
        for method in ("full", "scpo"):
            r = rows[method]
            assert r["raw_pairs"][1] == tiny_results["selection"][g]["train_pairs"]
            assert r["raw_pairs"][0] == pytest.approx(round(0.5 * r["raw_pairs"][1]))
            # the 100% point is the main comparison's model
            assert r["accuracy"][1] == pytest.approx(m[method]["all"]["mean"])
        assert rows["scpo"]["pairs_trained"][1] == pytest.approx(m["scpo"]["pairs_used"])
        assert rows["scpo"]["pairs_trained"][0] <= rows["full"]["pairs_trained"][0]
    eff = cv["efficiency"]
    for pts in list(eff["per_group"].values()) + list(eff["group_sets"].values()):
        assert [e["fraction"] for e in pts] == [0.5, 1.0]
        for e in pts:
            assert e["status"] in ("interpolated", "at_first_point", "not_reached")
            assert (e["ratio"] is None) == (e["status"] == "not_reached")
