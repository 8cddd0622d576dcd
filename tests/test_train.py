"""Training: the weighted loss in the Trainer, the batched head trainer, and each mode learns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scpo.config import TrainConfig, TrainerConfig
from scpo.forward import rewards_of
from scpo.heads import HeadJob, train_heads, val_accuracy
from scpo.selection import method_pairs
from scpo.trainer import PairCollator, SCPOTrainer, build_pair_dataset, training_arguments


class _Out:
    def __init__(self, logits):
        self.logits = logits


def test_trainer_loss_matches_hand_computation():
    rewards = torch.tensor([[2.0], [0.0], [1.0], [1.0]])  # chosen: 2, 0; rejected: 1, 1

    def model(**_):
        return _Out(rewards)

    loss = SCPOTrainer.compute_loss(
        type("T", (), {"_anchor": None, "seen_pairs": 0, "pull": 0.0})(), model, {"weight": torch.tensor([1.0, 0.5])}
    )
    expected = -(math.log(1 / (1 + math.exp(-1))) + 0.5 * math.log(1 / (1 + math.exp(1)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_method_pairs():
    d = np.array([-3.0, -0.5, 0.2, 2.0, 5.0])
    idx, w = method_pairs("scpo", d, 0.7, 1.1)
    assert idx.tolist() == [0, 1, 2] and w.tolist() == pytest.approx([math.exp(-3 / 1.1), math.exp(-0.5 / 1.1), 1.0])
    idx, w = method_pairs("full", d, 0.7, 1.1)
    assert idx.tolist() == [0, 1, 2, 3, 4] and set(w) == {1.0}
    idx, w = method_pairs("weight-only", d, 0.7, 1.1)
    assert len(idx) == 5 and w[0] < 1
    idx, w = method_pairs("filter-only", d, 0.7, 1.1)
    assert idx.tolist() == [0, 1, 2] and set(w) == {1.0}
    idx, w = method_pairs("inverse", d, 0.7, 1.1)
    assert w.tolist() == pytest.approx([math.exp(3), math.exp(0.5), 1.0])
    idx, w = method_pairs("random-subset", d, 0.7, 1.1, np.random.default_rng(0))
    assert len(idx) == 3 and set(w) == {1.0}


def test_head_trainer_learns_and_is_deterministic():
    rng = np.random.default_rng(0)
    true_w = rng.normal(size=16)
    x = torch.from_numpy(rng.normal(size=(400, 16)).astype(np.float32))
    sign = np.sign(x.numpy() @ true_w)
    diffs = x * torch.from_numpy(sign.astype(np.float32))[:, None]  # every pair: true margin > 0
    tr, va = np.arange(300), np.arange(300, 400)
    job = HeadJob(train_idx=tr, weights=np.ones(300), init=np.zeros(16), anchor=np.zeros(16), lr=0.05, pull=0.0,
                  stream=1, val_idx=va)
    snaps = train_heads(diffs, [job, job], [0, 10, 100], batch_size=16)
    acc = val_accuracy(diffs, [job, job], snaps)
    assert acc[0, 0] == 0.0  # zero head: every margin is a tie, ties count wrong
    assert acc[0, 2] > 0.9
    np.testing.assert_array_equal(snaps[0], snaps[1])  # same stream, same result, whatever the batch
    # a job with zero weights does not move; pull keeps a job at its anchor
    frozen = HeadJob(train_idx=tr, weights=np.zeros(300), init=np.ones(16), anchor=np.ones(16), lr=0.05, pull=0.0,
                     stream=2)
    pulled = HeadJob(train_idx=tr, weights=np.ones(300), init=np.ones(16), anchor=np.ones(16), lr=0.05, pull=1e4,
                     stream=3)
    s = train_heads(diffs, [frozen, pulled], [50], batch_size=16)
    np.testing.assert_allclose(s[0, 0], np.ones(16))
    assert np.abs(s[1, 0] - 1).max() < 0.05


def _rule_data(n: int, seed: int):
    """Pairs where the response with a joke is preferred (a signal the encoder can see)."""
    rng = np.random.default_rng(seed)
    bases = ["Write the steps down.", "Ask a friend for help.", "Start with a small goal.", "Plan the week ahead.",
             "Keep a short diary.", "Take a walk every morning.", "Call your family tonight.", "Make a budget."]
    jokes = ["Even superheroes need a coffee break!", "Worst case, blame the cat.", "Laughter is free, ha ha!"]
    prompts, chosen, rejected = [], [], []
    for _ in range(n):
        b1, b2 = rng.choice(bases, 2, replace=False)
        prompts.append("Any advice?")
        chosen.append(f"{b1} {rng.choice(jokes)}")
        rejected.append(str(b2))
    return prompts, chosen, rejected


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainer_modes_learn(packaged_rm, tmp_path, mode):
    import copy

    from scpo.jobs import _make_model

    torch.manual_seed(0)
    rm = copy.copy(packaged_rm)
    rm.model = copy.deepcopy(packaged_rm.model)
    from scpo.model import find_score_layer

    rm.score_layer_name, rm.score_layer = find_score_layer(rm.model)
    rm.set_head(torch.randn(rm.feature_dim) * 0.05, 0.0)
    p, c, r = _rule_data(48, 0)
    vp, vc, vr = _rule_data(32, 1)
    tc, trc = TrainConfig(batch_size=8, mode=mode), TrainerConfig()

    def val_acc(model):
        rw = rewards_of(model, rm.tokenizer, rm.formatter, vp + vp, vc + vr)
        return float((rw[:32] - rw[32:] > 0).mean())

    start = val_acc(rm.model)
    model = _make_model(rm, mode, trc, scratch=False)
    ds = build_pair_dataset(rm.tokenizer, rm.formatter, p, c, r, np.ones(len(p)))
    args = training_arguments(str(tmp_path / "out"), tc, trc, learning_rate=2e-4 if mode == "full" else 2e-3,
                              max_steps=12, seed=0, logging_steps=1)
    trainer = SCPOTrainer(model=model, args=args, train_dataset=ds, data_collator=PairCollator(0))
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0]
    after = val_acc(trainer.model)
    assert after > start and after >= 0.75, (start, after)
    if mode == "lora":
        trainer.model.save_pretrained(tmp_path / "adapter")
        from safetensors import safe_open

        with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any("classifier" in k for k in keys), keys  # the score layer is saved with the adapter
        assert any("lora_A" in k for k in keys)
