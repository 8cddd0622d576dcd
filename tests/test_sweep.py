"""The tau x beta sweep and the ``scpo sweep`` / ``scpo evaluate`` commands."""

from __future__ import annotations

import math

import pytest

from scpo.cli.runs import EVALUATE_DEFAULTS, SWEEP_DEFAULTS
from scpo.studies.sweep import cell_label
from test_report import tiny_run


def test_sweep_cells_in_a_tiny_run():
    results, _ = tiny_run()
    sw = results["sweep"]
    assert sw["taus"] == [0.7, 1.0] and sw["betas"] == ["inf"]
    cells = {(c["tau"], c["beta"]): c for c in sw["cells"]}
    assert set(cells) == {(0.7, "inf"), (1.0, "inf")}
    # tau = 1 keeps every pair; tau = 0.7 keeps what the run's own filter keeps
    assert cells[(1.0, "inf")]["kept_share"] == pytest.approx(1.0)
    sel = results["selection"]
    groups = results["data"]["groups"]
    want = sum(sel[g]["kept_share"] for g in groups) / len(groups)
    assert cells[(0.7, "inf")]["kept_share"] == pytest.approx(want)
    for c in sw["cells"]:
        row = c["all_groups"]
        lo, hi = row["all_ci95"]
        assert lo <= row["all"] <= hi
        assert 0.0 <= c["val_accuracy"] <= 1.0
        assert row["diff_vs_full"] == pytest.approx(row["all"] - sw["reference"]["full"]["all_groups"]["all"])
        assert 0.0 < row["p_vs_full"] <= 1.0
    # the references are the main comparison's models, not retrained
    assert sw["reference"]["full"]["all_groups"]["all"] == pytest.approx(results["summary"]["all_groups"]["full"]["all"])


def test_cell_label():
    assert cell_label(0.7, 1.1) == "scpo[tau=0.7,beta=1.1]"
    assert cell_label(1.0, math.inf) == "scpo[tau=1,beta=inf]"


def test_sweep_command_parses_lists_and_uses_its_defaults(monkeypatch, capsys):
    import scpo.cli.runs
    from scpo.cli import main

    def nan_for_null(x):  # what run() returns holds NaN where results.json holds null
        if isinstance(x, dict):
            return {k: nan_for_null(v) for k, v in x.items()}
        if isinstance(x, list):
            return [nan_for_null(v) for v in x]
        return math.nan if x is None else x

    results = nan_for_null(tiny_run()[0])
    seen = {}

    def fake_run(cfg, progress=True, **kwargs):
        seen["cfg"] = cfg
        return results

    monkeypatch.setattr(scpo.cli.runs, "run", fake_run)
    assert main(["sweep", "--quiet", "--tau", "0.5,1", "--beta", "1.1,inf", "--seeds", "0,1"]) == 0
    cfg = seen["cfg"]
    assert cfg.studies.sweep_taus == [0.5, 1.0] and cfg.studies.sweep_betas == [1.1, math.inf]
    assert cfg.select.tau == 0.7  # --tau of the sweep does not change the run's own tau
    assert cfg.train.methods == SWEEP_DEFAULTS["methods"] and cfg.train.seeds == [0, 1]
    assert "sweep (all_groups)" in capsys.readouterr().out
    assert main(["sweep", "--quiet"]) == 0
    assert seen["cfg"].studies.sweep_taus == SWEEP_DEFAULTS["sweep_taus"]
    assert seen["cfg"].output.output_dir == "runs/sweep"
    assert main(["evaluate", "--quiet", "--seeds", "3"]) == 0
    cfg = seen["cfg"]
    assert cfg.train.methods == EVALUATE_DEFAULTS["methods"] and cfg.train.seeds == [3]
    assert cfg.studies.curve_fractions == EVALUATE_DEFAULTS["curve_fractions"]


def test_sweep_needs_head_mode(tmp_path):
    from scpo.config import RunConfig
    from scpo.errors import ConfigError

    with pytest.raises(ConfigError, match="head mode"):  # refused where the config is made, before any work
        RunConfig().replace(mode="lora", sweep_taus=[0.7], output_dir=str(tmp_path / "r"))
