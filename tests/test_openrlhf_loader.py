"""Exports in OpenRLHF's reward-model loader (issue 13 item 1).

OpenRLHF cannot be installed here (it needs DeepSpeed, flash-attn, Ray), so ``interop_helpers.openrlhf_reward_model``
re-implements its loading and ``forward`` from ``openrlhf/models/model.py`` (``get_llm_for_sequence_regression``,
``_get_reward_model``): AutoModel's base network, a bias-free value head named ``value_head_prefix``, the reward at the
last attended token, ``(reward - mean) / std`` with ``--normalize_reward``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from interop_helpers import openrlhf_reward_model, tiny_chat_artifact
from scpo.export import export_checkpoint
from scpo.steer import SteerableRewardModel
from test_steer import tiny_artifact

PROMPTS = ["How should I greet my new neighbour?", "What should I cook for my family tonight?", "How do I thank a host?"]
RESPONSES = ["Say hello and smile, then bring a small gift.", "Stew.", "Write a short note and send it the next day."]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(ids: list[list[int]], pad: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, ids))
    inp = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), n), dtype=torch.long)
    for i, x in enumerate(ids):
        sl = slice(n - len(x), n) if left else slice(0, len(x))
        inp[i, sl], mask[i, sl] = torch.tensor(x), 1
    return inp, mask


def test_decoder_export_loads_in_openrlhf_with_scpo_rewards(tmp_path_factory: pytest.TempPathFactory) -> None:
    srm = SteerableRewardModel.from_pretrained(tiny_chat_artifact(tmp_path_factory), device="cpu")
    with pytest.warns(UserWarning, match="no bias"):
        path = export_checkpoint(srm, tmp_path_factory.mktemp("orl") / "chat", group={"group-a": 0.5, "group-b": 0.5})
    config = json.loads((path / "config.json").read_text())
    spec = json.loads((path / "scpo_export.json").read_text())
    assert config["value_head_prefix"] == "score" == spec["openrlhf"]["value_head_prefix"]
    assert config["mean"] == pytest.approx(-spec["reward_offset"]) and config["std"] == 1.0
    card = (path / "README.md").read_text()
    assert "--value_head_prefix score" in card
    expected = srm.score(PROMPTS, RESPONSES, group={"group-a": 0.5, "group-b": 0.5})
    ids, _, _ = srm.formatter.encode(srm.tokenizer, PROMPTS, RESPONSES)
    pad = srm.tokenizer.pad_token_id
    for normalize in (False, True):
        model, info = openrlhf_reward_model(path, config["value_head_prefix"], normalize_reward=normalize)
        assert not info["missing_keys"] and not info["unexpected_keys"]  # every weight loaded, the head included
        for left in (False, True):  # right padding (reward-model training), left padding (the actor's prompts)
            with torch.inference_mode():
                got = model(*_batch(ids, pad, left)).double().numpy()
            # OpenRLHF's head has no bias: scpo's rewards minus the offset; with --normalize_reward exactly scpo's
            np.testing.assert_allclose(got, expected - (0.0 if normalize else spec["reward_offset"]), atol=1e-4)


def test_encoder_export_does_not_fit_openrlhf_loader(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What the card and README say: with either prefix OpenRLHF's loader does not give an encoder export's rewards."""
    srm = SteerableRewardModel.from_pretrained(tiny_artifact(tmp_path_factory), device="cpu")
    path = export_checkpoint(srm, tmp_path_factory.mktemp("orl") / "enc", group="group-a")
    assert "value_head_prefix" not in json.loads((path / "config.json").read_text())
    assert "does not fit" in (path / "README.md").read_text()
    expected = srm.score(PROMPTS, RESPONSES, group="group-a")
    ids = srm.tokenizer(PROMPTS, RESPONSES)["input_ids"]
    _, info = openrlhf_reward_model(path, "score")
    assert "score.weight" in info["missing_keys"]  # OpenRLHF's default prefix: a randomly initialised head
    model, info = openrlhf_reward_model(path, "classifier")
    assert "classifier.bias" in info["unexpected_keys"]  # the bias is dropped, the [CLS] pooler bypassed
    with torch.inference_mode():
        got = model(*_batch(ids, srm.tokenizer.pad_token_id, False)).double().numpy()
    assert not np.allclose(got, expected, atol=1e-2)
