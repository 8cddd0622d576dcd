"""The population named by the user, end to end (issue 11): ``--population-groups`` trains the global model
on the population's pairs, none of the target's test pairs do, and nothing is dropped from the pooled test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scpo.cli import main


def _pairs(path: Path) -> Path:
    rows = []
    for g, n in (("Pool", 40), ("Target", 24), ("Other", 12)):
        for i in range(n):
            good, vague = f"Plan step one for {g} {i}, then act.", f"Situation {g} {i} is hard to say."
            flip = g == "Target" and i % 3 == 0
            rows.append({"prompt": f"How should I handle {g} situation {i}?", "chosen": vague if flip else good,
                         "rejected": good if flip else vague, "group": g})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ARGS = ["--quiet", "--dataset", "pairs", "--methods", "global,full,scpo", "--val-folds", "1", "--steps", "5",
        "--global-steps", "50", "--plots", "false", "--save-models", "false"]


def test_population_trains_the_global_model_and_pooled_keeps_everyone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from scpo.config import RunConfig
    from scpo.experiment import prepare

    data = _pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--data-path", str(data), "--population-groups", "Pool", "--groups", "Target",
                 "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    gm = res["global_model"]
    assert gm["source"] == "pooled" and set(gm["trained_on_groups"]) == {"Pool"}  # the population only
    assert res["data"]["groups"] == ["Target"]
    pooled = res["data"]["pooled"]
    assert set(pooled["groups"]) == {"Pool", "Target", "Other"} and set(pooled["non_target_groups"]) == {"Pool", "Other"}
    assert "global model: trained on" in printed and "Pool" in printed and "pooled test:" in printed
    # none of the target's test pairs (nor its train pairs) trained the global model; the pooled set holds every
    # group's test pairs and the population's train keys are never tested
    cfg = RunConfig().replace(dataset="pairs", data_path=str(data), population_groups=["Pool"], groups=["Target"],
                              cache_dir=str(tmp_path / "cache"), global_steps=50)
    exp = prepare(cfg, progress=False)
    test = exp.split == "test"
    assert set(exp.group[test]) == {"Pool", "Target", "Other"}
    assert set(exp.group[exp.split == "train"]) == {"Target"}  # only the target's pairs train group models
    assert exp.global_info["trained_on_pairs"] == gm["trained_on_pairs"] < 40  # the population's train keys only
    pool_test_keys = set(exp.split_key[test & (exp.group == "Pool")])
    assert pool_test_keys and len(pool_test_keys) + exp.global_info["trained_on_split_keys"] <= 40
    assert np.isfinite(exp.delta).all()


def test_pooled_of_one_group_alone_is_not_read_as_bias(tmp_path: Path) -> None:
    data = tmp_path / "one.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": f"A careful answer {i}.", "rejected": f"No idea {i}.",
             "group": "Only"} for i in range(30)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--data-path", str(data), "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["pooled"]["groups"] == ["Only"]
    report = (out / "report.md").read_text()
    assert "is here the one target group's own test set" in report
    assert "on pooled:" not in report


def test_pooled_source_without_a_population_names_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _pairs(tmp_path / "pairs.jsonl")
    assert main(["run", *ARGS, "--data-path", str(data), "--global-source", "pooled",
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert "--population-groups" in capsys.readouterr().err
