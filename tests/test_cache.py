"""Caching: a second run of the same experiment with another tau or beta runs no encoder forward pass."""

from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scpo.config import RunConfig  # noqa: E402
from scpo.experiment import prepare  # noqa: E402
from scpo.instrument import COUNTS  # noqa: E402
from scpo.pipeline import run  # noqa: E402


def _cfg(tmp_path, **kw) -> RunConfig:
    base = dict(
        synthetic_preset="tiny", cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "run"),
        methods=["global", "full", "scpo"], learning_rates=[3e-3], steps=[20], pulls=[0.0], val_folds=1,
        global_steps=100, plots=False, save_models=False,
    )
    base.update(kw)
    return RunConfig().replace(**base)


def test_second_run_with_other_tau_and_beta_runs_no_forward_pass(tmp_path):
    before = COUNTS["scoring_forward_passes"]
    first = run(_cfg(tmp_path), progress=False)
    first_passes = COUNTS["scoring_forward_passes"] - before
    assert first_passes > 0
    assert first["scoring"]["computed"] > 0

    mid = COUNTS["scoring_forward_passes"]
    second = run(_cfg(tmp_path, tau=0.55, beta=0.5, output_dir=str(tmp_path / "run2")), progress=False)
    assert COUNTS["scoring_forward_passes"] - mid == 0
    assert second["scoring"]["computed"] == 0
    assert second["scoring"]["cached"] == second["scoring"]["distinct"] > 0
    assert second["scoring"]["forward_passes"] == 0


def test_prepare_reuses_features_by_model_fingerprint_and_text_hash(tmp_path):
    exp1 = prepare(_cfg(tmp_path), progress=False)
    for change in ({"tau": 0.6}, {"beta": 3.0}, {"methods": ["global", "scpo", "weight-only"]}):
        mid = COUNTS["scoring_forward_passes"]
        exp2 = prepare(_cfg(tmp_path, **change), rm=exp1.rm if "beta" in change else None, progress=False)
        assert COUNTS["scoring_forward_passes"] - mid == 0, change
        assert exp2.score_stats["computed"] == 0
        # the cached features are the same numbers, so the global model and its margins are too
        np.testing.assert_array_equal(exp1.features, exp2.features)
        np.testing.assert_allclose(exp1.delta, exp2.delta)


def test_another_cache_dir_recomputes(tmp_path):
    prepare(_cfg(tmp_path), progress=False)
    mid = COUNTS["scoring_forward_passes"]
    exp = prepare(_cfg(tmp_path, cache_dir=str(tmp_path / "other")), progress=False)
    assert COUNTS["scoring_forward_passes"] - mid > 0
    assert exp.score_stats["cached"] == 0
