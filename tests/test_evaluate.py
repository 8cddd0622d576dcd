"""Statistics of scpo.evaluate on hand-checkable inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scpo.evaluate import (
    ClusterBootstrap,
    SplitMargins,
    bootstrap_ci,
    bootstrap_p_value,
    cluster_bootstrap_ci,
    evaluate_splits,
    mcnemar,
    mean_std,
    percentile_ci,
)


def _clustered(n_units: int, per_unit: int, p: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    unit_p = np.clip(rng.normal(p, 0.15, size=n_units), 0, 1)  # units differ: clustering matters
    correct = (rng.random((n_units, per_unit)) < unit_p[:, None]).astype(float).reshape(-1)
    return correct, np.repeat(np.arange(n_units), per_unit)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    small, cs = _clustered(20, 5, 0.7)
    large, cl = _clustered(500, 5, 0.7)
    for correct, clusters in ((small, cs), (large, cl)):
        lo, hi = cluster_bootstrap_ci(correct, clusters, n_boot=1000)
        assert lo <= correct.mean() <= hi
        lo2, hi2 = bootstrap_ci(correct, n_boot=1000)
        assert lo2 <= correct.mean() <= hi2
    w_small = np.diff(cluster_bootstrap_ci(small, cs, n_boot=1000))[0]
    w_large = np.diff(cluster_bootstrap_ci(large, cl, n_boot=1000))[0]
    assert w_large < w_small / 3  # ~ 1/sqrt(25) = 1/5 of the width


def test_cluster_ci_wider_than_pair_ci_when_units_differ():
    correct, clusters = _clustered(40, 20, 0.6, seed=3)
    pair = np.diff(bootstrap_ci(correct, n_boot=2000))[0]
    clus = np.diff(cluster_bootstrap_ci(correct, clusters, n_boot=2000))[0]
    assert clus > 1.5 * pair


def test_cluster_bootstrap_hand_case():
    # two units: one all right (3 pairs), one all wrong (1 pair). Replicates can only be 1, 3/4, 0.
    correct = np.array([1, 1, 1, 0.0])
    boot = ClusterBootstrap(np.array(["a", "a", "a", "b"]), n_boot=4000, seed=1)
    reps = boot.replicates(correct)
    assert set(np.round(np.unique(reps), 6)) <= {0.0, 0.75, 1.0}
    assert abs(np.mean(reps == 0.75) - 0.5) < 0.05  # {a, b} drawn in either order: probability 1/2
    # one unit cannot show how much units vary: no CI
    one = ClusterBootstrap(np.array(["a", "a"]), n_boot=100)
    assert np.isnan(one.replicates(np.array([1.0, 0.0]))).all()


def test_seed_resampling_covers_seed_variance():
    clusters = np.repeat(np.arange(200), 2)
    runs = np.stack([np.ones(400), np.zeros(400)])  # seed 0 always right, seed 1 always wrong
    with_seeds = ClusterBootstrap(clusters, n_runs=2, n_boot=2000, seed=0).replicates(runs)
    without = ClusterBootstrap(clusters, n_runs=2, n_boot=2000, seed=0, resample_runs=False).replicates(runs)
    assert np.allclose(without, 0.5)  # units alone: no variance at all
    assert set(np.unique(with_seeds)) == {0.0, 0.5, 1.0}  # seeds drawn with replacement


def test_mcnemar_known_table():
    r = mcnemar(10, 2)  # 12 discordant pairs
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # exact binomial: 0.0386
    assert r["statistic"] == pytest.approx((10 - 2 - 1) ** 2 / 12)
    assert mcnemar(5, 5)["p_value"] == 1.0
    assert mcnemar(0, 0)["p_value"] == 1.0
    assert mcnemar(3000, 2900)["p_value"] < 1.0  # large n stays finite


def test_bootstrap_p_value_agrees_with_percentile_ci():
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.01, 0.03, 0.1):
        reps = rng.normal(shift, 0.02, size=4000)
        lo, hi = percentile_ci(reps)
        p = bootstrap_p_value(float(np.mean(reps)), reps)
        if lo > 0 or hi < 0:
            assert p < 0.055
        else:
            assert p >= 0.045
    assert bootstrap_p_value(0.0, np.zeros(100)) == 1.0
    assert math.isnan(bootstrap_p_value(0.1, np.full(10, np.nan)))


def test_percentile_ci_with_infinite_replicates():
    lo, hi = percentile_ci(np.array([1.0, 2.0, np.inf, np.inf] * 50))
    assert lo == pytest.approx(1.0) and math.isinf(hi)


def test_mean_std():
    assert mean_std([0.5, 0.7]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414213), "n": 2}
    assert mean_std([0.5])["std"] == 0.0
    assert mean_std([float("nan")])["n"] == 0


def _split(split_seed: int = 0) -> SplitMargins:
    """Two groups, 4 units each of 3 pairs; A's model right everywhere, B's wrong on unit 0 of g1."""
    group = np.array(["g1"] * 12 + ["g2"] * 12)
    clusters = np.array([f"u{i // 3}" for i in range(24)])
    gm = np.where(np.arange(24) % 3 == 0, -1.0, 1.0)  # global wrong on the first pair of each unit
    margins = {}
    for g in ("g1", "g2"):
        for s in (0, 1):
            margins[(g, "global", s)] = gm.copy()
            margins[(g, "a", s)] = np.ones(24)
            b = np.ones(24)
            b[:3] = -1.0  # unit u0 (of g1) wrong
            margins[(g, "b", s)] = b
    used = {k: (10, 10.0) for k in margins}
    return SplitMargins(split_seed=split_seed, test_group=group, clusters=clusters, global_margin=gm,
                        margins=margins, used=used, contested=np.arange(24) % 2 == 0)


def test_evaluate_splits_hand_case():
    out, _ = evaluate_splits([_split()], ["g1", "g2"], ["global", "a", "b"], [0, 1], n_boot=500,
                          comparisons=[("a", "b"), ("a", "global")])
    m = out["metrics"]
    assert m["g1"]["global"]["all"]["mean"] == pytest.approx(8 / 12)
    assert m["g1"]["global"]["distinctive"]["mean"] == 0.0  # by construction
    assert m["g1"]["global"]["agreeing"]["mean"] == 1.0
    assert m["g1"]["a"]["all"]["mean"] == 1.0
    assert m["g1"]["b"]["all"]["mean"] == pytest.approx(9 / 12)
    assert m["g2"]["b"]["all"]["mean"] == 1.0
    assert m["g1"]["b"]["pooled"]["mean"] == pytest.approx(21 / 24)
    assert m["g1"]["test_pairs"] == {"all": 12, "distinctive": 4, "agreeing": 8, "contested": 6, "pooled": 24}
    assert m["g1"]["test_units"] == 4 and m["g1"]["few_units"]
    lo, hi = m["g1"]["b"]["all"]["ci95"]
    assert lo <= 9 / 12 <= hi
    assert out["cross_group"]["b"]["g1"] == {"g1": pytest.approx(0.75), "g2": 1.0, "pooled": pytest.approx(21 / 24)}
    t = out["tests"]["per_group"]["a vs b"]
    assert t["g1"]["all"]["diff"] == pytest.approx(0.25)
    assert t["g2"]["all"]["diff"] == 0.0 and t["g2"]["all"]["p_value"] == 1.0
    assert t["g1"]["all"]["mcnemar"]["b"] == 3 and t["g1"]["all"]["mcnemar"]["c"] == 0
    s = out["summary"]["all_groups"]
    assert s["b"]["all"] == pytest.approx((0.75 + 1.0) / 2)
    assert out["tests"]["group_sets"]["a vs b"]["all_groups"]["all"]["diff"] == pytest.approx(0.125)
    assert "training seeds" in out["ci"]["resamples"]
    assert any("split variance" in x for x in out["ci"]["does_not_cover"])
    assert len(out["runs"]) == 2


def test_evaluate_several_splits_covers_split_variance():
    out, _ = evaluate_splits([_split(0), _split(1)], ["g1", "g2"], ["global", "a", "b"], [0, 1], n_boot=300)
    assert any("split" in x for x in out["ci"]["resamples"])
    e = out["metrics"]["g1"]["b"]["all"]
    assert len(e["per_run"]) == 4 and e["mean"] == pytest.approx(0.75)
    assert e["std_between_splits"] == 0.0


def test_clustered_test_is_not_fooled_by_one_unit_mcnemar_is():
    # 20 units of 10 pairs; model b is wrong on every pair of unit 0 and right elsewhere, a always right
    group = np.array(["g"] * 200)
    clusters = np.repeat(np.arange(20), 10)
    b = np.ones(200)
    b[:10] = -1.0
    sp = SplitMargins(split_seed=0, test_group=group, clusters=clusters, global_margin=np.ones(200),
                      margins={("g", "a", 0): np.ones(200), ("g", "b", 0): b})
    t = evaluate_splits([sp], ["g"], ["a", "b"], [0], n_boot=2000, comparisons=[("a", "b")])[0]["tests"]
    res = t["per_group"]["a vs b"]["g"]["all"]
    assert res["diff"] == pytest.approx(0.05)
    assert res["mcnemar"]["p_value"] < 0.01  # 10 discordant pairs, all one way
    assert res["p_value"] > 0.3  # but they are one unit: unit 0 is absent from ~36% of replicates
