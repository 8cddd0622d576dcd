"""``--head-layers pooler``: the pooler's dense layer and the score layer trained on cached first-token states.

It learns (the objective falls, the validation log-loss at the chosen point beats the global
model's), its features are keyed apart from the score layer's, a model without a pooler fails
clearly, and a run's group model exports as a plain checkpoint with scpo's rewards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def pooler_run(tmp_path_factory):
    """``scpo run --head-layers pooler --synthetic-preset tiny`` through the CLI, end to end."""
    from scpo.cli import main

    root = tmp_path_factory.mktemp("pooler")
    code = main(["run", "--quiet", "--synthetic-preset", "tiny", "--head-layers", "pooler", "--head-solver", "newton",
                 "--output-dir", str(root / "run"), "--cache-dir", str(root / "cache")])
    assert code == 0
    return root


@pytest.fixture(scope="module")
def pooler_experiment(tmp_path_factory):
    from scpo.config import RunConfig
    from scpo.experiment import prepare

    root = tmp_path_factory.mktemp("pooler-exp")
    cfg = RunConfig().replace(synthetic_preset="tiny", cache_dir=str(root / "cache"), output_dir=str(root / "run"),
                              head_layers="pooler", head_solver="newton")
    return prepare(cfg, progress=False)


def test_pooler_fit_learns_and_beats_the_start_on_validation(pooler_experiment) -> None:
    from scpo.fitting import _fit_heads_newton, fit, train_rows_of
    from scpo.model import PoolerHead

    exp = pooler_experiment
    assert exp.pooler_inputs is not None and exp.pooler_inputs.shape == exp.features.shape
    # the global model is the same as in score mode: its features go through its own pooler
    head = exp.rm.pooler_head()
    np.testing.assert_allclose(head.pooled(exp.pooler_inputs[:20], "tanh"), exp.features[:20], atol=1e-6)
    res = fit(exp, ["global", "full", "scpo"], [0, 1], progress=False)
    newton = _fit_heads_newton(exp, ["global", "full", "scpo"], [0], exp.cfg.select.tau, exp.cfg.select.beta,
                               train_rows_of(exp), False)
    test = np.flatnonzero(exp.split == "test")
    trained, beat_global, beat_score = 0, 0, 0
    for g in exp.groups:
        for m in ("full", "scpo"):
            key = (g, m, 0)
            rec, c, model = res.curves[key], res.grid["choices"][g][m]["0"], res.models[key]
            curve = rec["records"]
            assert rec["kind"] == "pooler_adam_steps" and rec["pull"] == c["pull"]
            assert isinstance(model, PoolerHead) and [p["step"] for p in curve] == list(range(c["steps"] + 1))
            assert c["val_log_loss"] <= c["val_log_loss_score_layer"] + 1e-12  # step 0 (stage 1 alone) is on the grid
            beat_global += c["val_log_loss"] < c["val_log_loss_global"] - 1e-6
            if c["steps"] > 0:  # the pooler trained: its objective fell and it beat the score layer alone on the folds
                trained += 1
                assert curve[-1]["loss"] < curve[0]["loss"] - 1e-6
                assert not np.array_equal(model.weight, head.weight)
                beat_score += c["val_log_loss"] < c["val_log_loss_score_layer"] - 1e-6
            else:  # nothing gained on the folds: the global pooler with the newton score layer
                np.testing.assert_array_equal(model.weight, head.weight)
                np.testing.assert_allclose(res.margins[key], newton.margins[key], atol=1e-4)
            if c["steps"] > 0 and res.grid["choices"][g][m]["1"]["steps"] > 0:  # the seed draws B: another model
                assert not np.array_equal(model.weight, res.models[(g, m, 1)].weight)
            # the test margins are the model's own: through its pooler
            r_c = model.rewards(exp.pooler_inputs[exp.chosen_row[test]], "tanh")
            r_r = model.rewards(exp.pooler_inputs[exp.rejected_row[test]], "tanh")
            np.testing.assert_allclose(res.margins[key], r_c - r_r, atol=1e-9)
        np.testing.assert_array_equal(res.margins[(g, "global", 0)], exp.delta[test])
    n = 2 * len(exp.groups)
    assert trained >= 1 and beat_score == trained, (trained, beat_score)
    assert beat_global >= n - 1, f"validation beat the global model in only {beat_global} of {n} fits"


def test_train_poolers_recovers_a_teacher() -> None:
    """On pairs labelled by another pooler, Adam from the start lowers the loss and the validation log-loss."""
    from scpo.model import PoolerHead
    from scpo.pooler import PoolerJob, train_poolers

    rng = np.random.default_rng(0)
    h, n_text = 8, 400
    x = rng.normal(size=(n_text, h)).astype(np.float32)
    start = PoolerHead((rng.normal(size=(h, h)) / np.sqrt(h)).astype(np.float32), np.zeros(h, np.float32),
                       rng.normal(size=h).astype(np.float32))
    teacher = PoolerHead((rng.normal(size=(h, h)) / np.sqrt(h)).astype(np.float32), np.zeros(h, np.float32), start.score * 3)
    r = teacher.rewards(x, "tanh")
    a, b = rng.integers(0, n_text, 3000), rng.integers(0, n_text, 3000)
    a, b = a[a != b], b[a != b]
    chosen, rejected = np.where(r[a] > r[b], a, b), np.where(r[a] > r[b], b, a)
    job = PoolerJob(chosen[:2000], rejected[:2000], np.ones(2000), start, 0.0,
                    val_chosen=chosen[2000:], val_rejected=rejected[2000:])
    run = train_poolers(x, [job], [0, 50, 200], "tanh", lr=0.02)
    assert run.curves[0][-1] < 0.8 * run.curves[0][0]
    assert np.all(np.diff(run.val_log_loss[0]) < 0), run.val_log_loss
    assert run.val_accuracy[0, -1] > run.val_accuracy[0, 0] + 0.05
    # a job whose stop is 0 is the start; identical inputs give identical outputs
    again = train_poolers(x, [job, PoolerJob(job.chosen, job.rejected, job.weights, start, 0.0, stop=0)],
                          [0, 50, 200], "tanh", lr=0.02)
    np.testing.assert_array_equal(again.heads[1].weight, start.weight)
    np.testing.assert_allclose(again.heads[0].weight, run.heads[0].weight, atol=1e-5)  # batch padding: rounding only


def test_cache_keys_score_and_pooler_apart_and_second_run_hits(tmp_path) -> None:
    from scpo.config import RunConfig
    from scpo.experiment import prepare
    from scpo.testing import tiny_encoder

    rm = tiny_encoder(hidden=16, layers=1)
    key = rm.feature_key("pooler")
    assert key != rm.feature_key("score")
    with torch.no_grad():  # the trained layers do not key the pooler's inputs; the layers below do
        rm.pooler_layer_of().weight.add_(1.0)
        rm.score_layer.weight.add_(1.0)
    assert rm.feature_key("pooler") == key
    with torch.no_grad():
        rm.model.bert.encoder.layer[0].output.dense.bias.add_(1.0)
    assert tiny_encoder(hidden=16, layers=1).feature_key("pooler") == key
    assert rm.feature_key("pooler") != key
    cfg = RunConfig().replace(synthetic_preset="tiny", cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "r"),
                              head_layers="pooler")
    first = prepare(cfg, progress=False, rm=tiny_encoder(hidden=16, layers=1))
    again = prepare(cfg, progress=False, rm=tiny_encoder(hidden=16, layers=1))
    assert first.score_stats["computed"] > 0 and again.score_stats["computed"] == 0
    np.testing.assert_array_equal(first.pooler_inputs, again.pooler_inputs)
    score = prepare(cfg.replace(head_layers="score"), progress=False, rm=tiny_encoder(hidden=16, layers=1))
    assert score.score_stats["computed"] == first.score_stats["computed"]  # its own cache folder, nothing shared
    assert score.pooler_inputs is None
    np.testing.assert_allclose(score.features, first.features, atol=1e-5)  # the same global features either way
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 2


def test_model_without_pooler_and_wrong_mode_fail_clearly(tmp_path, capsys) -> None:
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from scpo.cli import main
    from scpo.config import RunConfig
    from scpo.errors import ConfigError
    from scpo.model import find_pooler, packaged_model_path

    tok = AutoTokenizer.from_pretrained(packaged_model_path())
    net = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2,
                                                               hidden_dim=32, num_labels=1))
    with pytest.raises(ConfigError, match="no pooler dense layer"):
        find_pooler(net, "distil")
    path = tmp_path / "distil"
    net.save_pretrained(path)
    tok.save_pretrained(path)
    code = main(["run", "--quiet", "--synthetic-preset", "tiny", "--head-layers", "pooler", "--global-model", str(path),
                 "--output-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "no pooler dense layer" in err and str(path) in err and "DistilBert" in err
    with pytest.raises(ConfigError, match="--mode head"):
        RunConfig().replace(head_layers="pooler", mode="full")
    with pytest.raises(ConfigError, match="score or pooler"):
        RunConfig().replace(head_layers="all")


def test_pooler_run_saves_poolers_and_exports_identical_rewards(pooler_run, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scpo.errors import ScpoError
    from scpo.export import export_checkpoint
    from scpo.steer import SteerableRewardModel

    run = pooler_run / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["grid"]["solver"] == "pooler-adam" and res["global_model"]["pooler"]["name"] == "bert.pooler.dense"
    manifest = json.loads((run / "models" / "manifest.json").read_text())
    assert manifest["head_layers"] == "pooler" and (run / "models" / "poolers.safetensors").is_file()
    srm = SteerableRewardModel.from_pretrained(run, device="cpu")

    prompts = ["How should I save money for a holiday?", "Can you give me advice on how to get better sleep?",
               "What is the best way to plan a family dinner?"]
    responses = ["Make a budget and put a little aside every week.", "Go to bed at the same time. " * 20,
                 "Ask everyone what they like and cook together as a community."]
    steps = {grp: res["grid"]["choices"][grp]["scpo"]["0"]["steps"] for grp in srm.groups}
    g = next(grp for grp, st in steps.items() if st > 0)  # a group whose pooler trained
    pw, _ = srm.pooler(srm.model_id(g))
    assert not np.allclose(pw, srm.pooler("global")[0])
    for group, out in ((g, tmp_path / "group"), (None, tmp_path / "global")):
        export_checkpoint(srm, out, group=group)
        tok = AutoTokenizer.from_pretrained(out)
        net = AutoModelForSequenceClassification.from_pretrained(out).eval()
        with torch.no_grad():
            theirs = np.array([net(**tok(p, r, return_tensors="pt")).logits[0, 0].item() for p, r in zip(prompts, responses)])
        np.testing.assert_allclose(theirs, srm.score(prompts, responses, group=group), atol=1e-5)
        if group is not None:
            np.testing.assert_allclose(net.bert.pooler.dense.weight.detach().numpy(), pw, atol=1e-7)
    # blends of models with their own poolers mix rewards in the API, but are not one checkpoint
    half = srm.score(prompts, responses, group=g, strength=0.5)
    np.testing.assert_allclose(half, 0.5 * srm.score(prompts, responses) + 0.5 * srm.score(prompts, responses, group=g))
    with pytest.raises(ScpoError, match="not one checkpoint"):
        export_checkpoint(srm, tmp_path / "blend", group=g, strength=0.5)
    # the stored calibration (computed from the run's cached states) is the one serving recomputes
    fresh = SteerableRewardModel.from_pretrained(run, device="cpu", recalibrate=True)
    for m, c in srm.calibration.items():
        assert c.mean == pytest.approx(fresh.calibration[m].mean, abs=1e-4), m
        assert c.scale == pytest.approx(fresh.calibration[m].scale, rel=1e-4), m



@pytest.mark.parametrize("kind", ["bert", "roberta", "deberta-v2"])
def test_the_pooler_is_found_in_bert_roberta_and_deberta(kind) -> None:
    """Tiny random models built from configs (offline): the dense layer, activation and score layer
    that :func:`scpo.model.find_pooler` finds reproduce the model's own reward from the first
    token's last hidden state -- the computation ``--head-layers pooler`` trains."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from scpo.model import POOLER_ACTIVATIONS, find_pooler, find_score_layer

    torch.manual_seed(0)
    common = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  num_labels=1, max_position_embeddings=40)
    model = {"bert": lambda: BertForSequenceClassification(BertConfig(**common)),
             "roberta": lambda: RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=1)),
             "deberta-v2": lambda: DebertaV2ForSequenceClassification(
                 DebertaV2Config(**common, pooler_hidden_size=16, pooler_hidden_act="gelu"))}[kind]().eval()
    spec = find_pooler(model)
    assert (spec.name, spec.activation) == {"bert": ("bert.pooler.dense", "tanh"),
                                            "roberta": ("classifier.dense", "tanh"),
                                            "deberta-v2": ("pooler.dense", "gelu")}[kind]
    _, score = find_score_layer(model)
    ids = torch.randint(3, 60, (3, 7))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        x = out.hidden_states[-1][:, 0]
        mine = score(POOLER_ACTIVATIONS[spec.activation](model.get_submodule(spec.name)(x)))[:, 0]
    np.testing.assert_allclose(mine.numpy(), out.logits[:, 0].numpy(), atol=1e-6)
