"""Exports in TRL's trainers, run for real (trl 1.16, CPU, tiny random models, no download): issue 13 item 1.

* ``RewardTrainer`` continues training an encoder export (string prompt/chosen/rejected) and a chat decoder
  export (conversational message lists), each loaded by TRL from the export's path, as a TRL user would.
* ``GRPOTrainer`` runs 2 steps with an export as ``reward_funcs`` on a tiny random policy, completions longer
  than scpo's limit included, and with ``scpo.export.reward_function`` (scpo's own input, any length).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from interop_helpers import tiny_causal_policy, tiny_chat_artifact
from scpo.export import export_checkpoint, reward_function, trl_inputs
from scpo.steer import SteerableRewardModel
from test_steer import tiny_artifact

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

PROMPTS = ["How should I greet my new neighbour?", "What should I cook for my family tonight?",
           "How do I thank a host?", "What is a good gift for a colleague?"]
CHOSEN = ["Say hello and smile.", "A big pot of stew to share.", "Write a short note.", "A small plant."]
REJECTED = ["Ignore them.", "Whatever is quickest for you alone.", "Say nothing.", "Nothing at all."]


@pytest.fixture(scope="module", autouse=True)
def _quiet() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SteerableRewardModel, Path]:
    srm = SteerableRewardModel.from_pretrained(tiny_artifact(tmp_path_factory), device="cpu")
    return srm, export_checkpoint(srm, tmp_path_factory.mktemp("trl") / "enc", group="group-a")


@pytest.fixture(scope="module")
def chat_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[SteerableRewardModel, Path]:
    srm = SteerableRewardModel.from_pretrained(tiny_chat_artifact(tmp_path_factory), device="cpu")
    with pytest.warns(UserWarning, match="no bias"):
        out = export_checkpoint(srm, tmp_path_factory.mktemp("trl") / "chat", group="group-a")
    return srm, out


def _args(cls, tmp: Path, **kw):
    return cls(output_dir=str(tmp / "out"), report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
               bf16=False, dataloader_num_workers=0, seed=0, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForSequenceClassification

    return {k: v.clone() for k, v in AutoModelForSequenceClassification.from_pretrained(str(path)).state_dict().items()}


def test_encoder_export_tokenizer_is_set_for_trl(encoder_export) -> None:
    from transformers import AutoTokenizer

    srm, path = encoder_export
    tok = AutoTokenizer.from_pretrained(str(path))
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"  # BERT has no EOS: its SEP stands in
    assert tok.model_max_length == srm.formatter.max_length and tok.truncation_side == "left" and tok.padding_side == "right"
    spec = json.loads((path / "scpo_export.json").read_text())
    assert spec["tokenizer"]["eos_token_from"] == "sep_token" and spec["openrlhf"] is None
    assert "value_head_prefix" not in json.loads((path / "config.json").read_text())
    card = (path / "README.md").read_text()
    assert "OpenRLHF's reward-model loader does not fit this checkpoint" in card and "/get_reward" in card
    assert "[CLS] prompt response [SEP] [SEP]" in card


def test_card_carries_the_measured_input_format_effect(encoder_export, tmp_path: Path) -> None:
    srm, _ = encoder_export
    out = export_checkpoint(srm, tmp_path / "measured", group="group-a", eval_pairs=(PROMPTS, CHOSEN, REJECTED))
    effect = json.loads((out / "scpo_export.json").read_text())["input_format_effect"]
    assert set(effect) == {"scpo", "trl_reward_trainer", "trl_grpo"} and effect["scpo"]["pairs"] == len(PROMPTS)
    r = srm.score(PROMPTS + PROMPTS, CHOSEN + REJECTED, group="group-a")
    assert effect["scpo"]["accuracy"] == pytest.approx(np.mean(r[:4] > r[4:]))
    assert all(-1 <= e["pearson_r"] <= 1 for e in effect.values())
    card = (out / "README.md").read_text()
    assert "| TRL GRPOTrainer (string prompts) |" in card and "Measured on 4 held-out preference pairs" in card


def test_reward_trainer_continues_an_encoder_export(encoder_export, tmp_path: Path) -> None:
    """TRL loads the export from its path (no processing_class, no eos_token given) and trains it on string data."""
    srm, path = encoder_export
    data = datasets.Dataset.from_dict({"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED})
    trainer = trl.RewardTrainer(model=str(path), args=_args(trl.RewardConfig, tmp_path, max_steps=3,
                                                           per_device_train_batch_size=2, learning_rate=1e-3),
                                train_dataset=data)
    tok = trainer.processing_class
    # what TRL builds: [CLS] prompt+response [SEP] [SEP] -- trl_inputs (used for the measured figures) says the same
    assert trainer.train_dataset[0]["chosen_ids"] == trl_inputs(tok, PROMPTS[:1], CHOSEN[:1], "reward")[0]
    assert tok.convert_ids_to_tokens(trainer.train_dataset[0]["chosen_ids"])[-2:] == ["[SEP]", "[SEP]"]
    before = _weights(path)
    out = trainer.train()
    assert out.global_step == 3 and np.isfinite(out.training_loss)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k].cpu()) for k in before if k in after)


def test_reward_trainer_continues_a_chat_export(chat_export, tmp_path: Path) -> None:
    """Conversational prompt/chosen/rejected: TRL's token ids are scpo's chat input, and its rewards scpo's."""
    srm, path = chat_export
    data = datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
        "chosen": [[{"role": "assistant", "content": c}] for c in CHOSEN],
        "rejected": [[{"role": "assistant", "content": r}] for r in REJECTED]})
    trainer = trl.RewardTrainer(model=str(path), args=_args(trl.RewardConfig, tmp_path, max_steps=3,
                                                           per_device_train_batch_size=2, learning_rate=1e-3),
                                train_dataset=data)
    tok = trainer.processing_class
    ids, _, _ = srm.formatter.encode(srm.tokenizer, PROMPTS, CHOSEN)
    trl_ids = [list(trainer.train_dataset[i]["chosen_ids"]) for i in range(len(PROMPTS))]
    assert trl_ids == [list(x) for x in ids]
    offset = json.loads((path / "scpo_export.json").read_text())["reward_offset"]
    with torch.inference_mode():
        trainer.model.eval()
        got = [float(trainer.model(input_ids=torch.tensor([x])).logits[0, 0]) + offset for x in trl_ids]
    np.testing.assert_allclose(got, srm.score(PROMPTS, CHOSEN, group="group-a"), atol=1e-4)
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == srm.formatter.max_length
    out = trainer.train()
    assert out.global_step == 3 and np.isfinite(out.training_loss)


def _grpo(tmp: Path, policy: Path, reward_funcs, data, max_completion_length: int):
    from transformers import AutoTokenizer

    args = _args(trl.GRPOConfig, tmp, max_steps=2, per_device_train_batch_size=4, num_generations=2,
                 max_completion_length=max_completion_length, learning_rate=1e-4, temperature=1.0)
    tok = AutoTokenizer.from_pretrained(str(policy))
    trainer = trl.GRPOTrainer(model=str(policy), reward_funcs=reward_funcs, args=args, train_dataset=data,
                              processing_class=tok)
    out = trainer.train()
    return trainer, out


def test_grpo_with_exports_as_reward_models(encoder_export, chat_export, tmp_path: Path) -> None:
    """Both exports as reward models (TRL loads them from their paths), string prompts (an encoder export has no
    chat template for conversational ones); completions longer than scpo's limits."""
    policy = tiny_causal_policy(tmp_path / "policy")
    data = datasets.Dataset.from_dict({"prompt": PROMPTS})
    # 300 policy tokens: longer than scpo's 256 (encoder) and 192 (chat) token limits, within BERT's 512 positions
    trainer, out = _grpo(tmp_path, policy, [str(encoder_export[1]), str(chat_export[1])], data, 300)
    assert out.global_step == 2
    logs = [h for h in trainer.state.log_history if "completions/max_length" in h]
    assert logs and max(h["completions/max_length"] for h in logs) > 256
    assert all(np.isfinite(h["reward"]) for h in logs)


def test_grpo_conversational_and_scpo_reward_function(encoder_export, chat_export, tmp_path: Path) -> None:
    """Conversational prompts: the chat export scores the chat template; scpo's reward function scores the encoder
    export with scpo's input and truncation, so 600-token completions (> BERT's 512 positions) are scored."""
    srm, path = encoder_export
    policy = tiny_causal_policy(tmp_path / "policy")
    fn = reward_function(path)
    assert fn(PROMPTS[:2], CHOSEN[:2]) == pytest.approx(list(srm.score(PROMPTS[:2], CHOSEN[:2], group="group-a")), abs=2e-5)
    conv = fn([[{"role": "user", "content": p}] for p in PROMPTS[:2]], [[{"role": "assistant", "content": c}] for c in CHOSEN[:2]])
    assert conv == pytest.approx(fn(PROMPTS[:2], CHOSEN[:2]))
    data = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    trainer, out = _grpo(tmp_path, policy, [str(chat_export[1]), fn], data, 600)
    assert out.global_step == 2
    logs = [h for h in trainer.state.log_history if "completions/max_length" in h]
    assert max(h["completions/max_length"] for h in logs) > 512 and all(np.isfinite(h["reward"]) for h in logs)
