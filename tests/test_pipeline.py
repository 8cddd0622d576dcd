"""The main job end to end on a tiny synthetic configuration."""

from __future__ import annotations

import copy
import json

import numpy as np
import yaml

from scpo.config import RunConfig
from scpo.pipeline import run


def test_end_to_end_tiny(tiny_experiment, tmp_path):
    exp = copy.copy(tiny_experiment)
    cfg = exp.cfg.replace(output_dir=str(tmp_path / "run"), methods=["global", "full", "scpo", "scratch"])
    exp.cfg = cfg
    res = run(cfg, progress=False, exp=exp)
    out = tmp_path / "run"
    for name in ("config.yaml", "results.json", "report.md", "full_report.json", "partial_report.json",
                 "edited_ratios.json", "models/manifest.json", "models/heads.safetensors", "models/global/config.json"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["synthetic_data"] is True
    assert set(saved["methods"]) == {"global", "full", "scpo", "scratch"}
    # the resolved config round-trips
    assert RunConfig.from_dict(yaml.safe_load((out / "config.yaml").read_text())) == cfg
    # every group has every method; global accuracy on distinctive pairs is 0 by construction
    for g in exp.groups:
        assert saved["metrics"][g]["global"]["distinctive"]["mean"] in (0.0,) or np.isnan(
            saved["metrics"][g]["global"]["distinctive"]["mean"])
        assert 0.0 <= saved["metrics"][g]["scpo"]["all"]["mean"] <= 1.0
        assert saved["metrics"][g]["oracle"]["all"]["mean"] > 0.5
        assert saved["selection"][g]["kept"] <= saved["selection"][g]["train_pairs"]
    ref = json.loads((out / "full_report.json").read_text())
    assert set(ref) == set(exp.groups) | {"avg"}
    ratios = json.loads((out / "edited_ratios.json").read_text())
    assert 0 < ratios["avg"] <= 1
    # the grid search was done on validation folds, and recorded
    assert saved["grid"]["searched"] and saved["grid"]["choices"]
    assert "report" in (out / "report.md").read_text().lower()
    assert res["summary"]["all_groups"]["scpo"]["pairs_used"] <= res["summary"]["all_groups"]["full"]["pairs_used"]


def test_global_model_never_trained_on_group_pairs(tiny_experiment):
    exp = tiny_experiment
    assert exp.global_info["source"] == "holdout"
    # the held-apart split keys are not among any group's train or test keys
    assert "global" not in set(exp.split)
    assert exp.global_info["trained_on_pairs"] > 0


def test_split_by_key_never_by_pair(tiny_experiment):
    exp = tiny_experiment
    train_keys = set(exp.split_key[exp.split == "train"])
    test_keys = set(exp.split_key[exp.split == "test"])
    assert train_keys and test_keys and not train_keys & test_keys


def test_group_with_no_kept_pair_is_the_global_model(tiny_experiment, tmp_path, recwarn):
    exp = copy.copy(tiny_experiment)
    # tau tiny: (almost) nothing passes the filter; such a group keeps the global model, 0 pairs
    cfg = exp.cfg.replace(tau=1e-6, output_dir=str(tmp_path / "r"), methods=["global", "scpo"], save_models=False,
                          plots=False)
    exp.cfg = cfg
    res = run(cfg, progress=False, exp=exp)
    empty = [g for g in exp.groups if res["selection"][g]["kept"] == 0]
    assert empty, "expected a group with no kept pair"
    assert any("no training pair left" in str(w.message) for w in recwarn.list)
    for g in empty:
        m = res["metrics"][g]
        assert m["scpo"]["pairs_used"] == 0
        assert m["scpo"]["all"]["mean"] == m["global"]["all"]["mean"]
    assert len(res["summary"]["all_groups"]) >= 2  # averages keep every group
