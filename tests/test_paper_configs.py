"""The paper's ready configs parse and build their pipeline (model swapped for the packaged encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scpo.config import RunConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("paper_*.yaml"))


def _prism_fixture(root: Path) -> Path:
    countries = ["Chile", "South Africa", "New Zealand", "Australia", "Mexico", "Israel", "Canada"]
    survey, utts = [], []
    for ci, c in enumerate(countries):
        for u in range(8):
            uid = f"user{ci}-{u}"
            survey.append({"user_id": uid, "location": {"reside_country": c, "birth_country": c}, "age": "x"})
            for k in range(2):
                inter = f"{uid}-i{k}"
                for j, s in enumerate([90, 60, 30]):
                    utts.append({"utterance_id": f"{inter}-{j}", "user_id": uid, "interaction_id": inter,
                                 "user_prompt": f"Question {k} from {c}?", "model_response": f"Answer {j} {'!' * j}",
                                 "score": s, "turn": 0})
    root.mkdir(parents=True, exist_ok=True)
    (root / "survey.jsonl").write_text("\n".join(json.dumps(r) for r in survey))
    (root / "utterances.jsonl").write_text("\n".join(json.dumps(r) for r in utts))
    return root


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_builds(path, tmp_path):
    from scpo.experiment import prepare
    from scpo.jobs import _make_model
    from scpo.trainer import training_arguments

    cfg = RunConfig.from_yaml(path)
    assert cfg.select.tau == 0.7 and cfg.select.beta == 1.1 and cfg.data.dataset == "prism"
    assert cfg.train.batch_size == 8 and cfg.train.steps == [1024]
    # swap what cannot run here: the Hub model for the packaged encoder, the Hub data for a fixture
    cfg = cfg.replace(global_model="packaged", global_source="holdout", data_path=str(_prism_fixture(tmp_path / "p")),
                      cache_dir=str(tmp_path / "c"), output_dir=str(tmp_path / "r"), torch_dtype="float32",
                      input_format="text-pair", max_length=64, bf16=False)
    exp = prepare(cfg, progress=False)
    assert sorted(exp.groups) == sorted(["Chile", "South Africa", "New Zealand", "Australia", "Mexico", "Israel",
                                         "Canada"])
    assert np.isfinite(exp.delta).all()
    model = _make_model(exp.rm, cfg.train.mode, cfg.trainer, scratch=False)
    args = training_arguments(str(tmp_path / "out"), cfg.train, cfg.trainer, learning_rate=cfg.train.learning_rates[0],
                              max_steps=cfg.train.steps[0], seed=0)
    assert args.max_steps == 1024 and args.learning_rate == cfg.train.learning_rates[0]
    if cfg.train.mode == "lora":
        assert any("lora_" in n for n, _ in model.named_parameters())
