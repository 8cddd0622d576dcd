"""Helpers for the TRL / OpenRLHF interop tests: a tiny chat decoder reward model, its run, and a
re-implementation of OpenRLHF's reward-model loader (OpenRLHF cannot be installed here).

Everything is built from configs and the packaged BERT vocabulary: no download.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
import torch
from torch import nn

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer():
    """A Qwen-style tokenizer (no BOS, ``<|im_end|>`` EOS, ``<|endoftext|>`` pad, a ChatML template) over the
    packaged encoder's WordPiece vocabulary, without BERT's [CLS]/[SEP] post-processor."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from scpo.model import packaged_model_path

    vocab = Path(packaged_model_path()) / "vocab.txt"
    wp = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def tiny_chat_reward_model(out: Path, seed: int = 0) -> Path:
    """A random tiny Llama sequence-classification reward model (``score`` layer, no bias) with the chat tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = chat_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=1024, num_labels=1, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=False)
    model = LlamaForSequenceClassification(cfg)
    model.config.problem_type = "regression"
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def tiny_causal_policy(out: Path, seed: int = 1) -> Path:
    """A random tiny Llama causal LM with the same chat tokenizer (the GRPO policy)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = chat_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def tiny_chat_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic preset run (head mode) with the tiny chat decoder as global model, made once per session."""
    from scpo import RunConfig, run
    from scpo.export import export_artifact

    base = tmp_path_factory.getbasetemp()
    run_dir, art = base / "scpo-chat-run", base / "scpo-chat-artifact"
    with open(base / "scpo-chat.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (art / "README.md").is_file():
            model = tiny_chat_reward_model(base / "tiny-chat-rm")
            cfg = RunConfig().replace(synthetic_preset="tiny", steps=[20], output_dir=str(run_dir), global_model=str(model),
                                      cache_dir=str(base / "scpo-chat-cache"), plots=False, max_length=192)
            run(cfg, progress=False)
            export_artifact(run_dir, art)
    return art


# --- OpenRLHF's reward model, re-implemented from openrlhf/models/model.py (get_llm_for_sequence_regression,
# _get_reward_model; OpenRLHF 0.4-0.11 keep this logic): the base model (AutoModel's class for the config) under the
# class's base_model_prefix, a bias-free nn.Linear(hidden, 1) named value_head_prefix, the value at the last position
# whose attention mask is 1, positions = cumsum(mask) - 1, and (reward - config.mean) / config.std when
# normalize_reward is on.


def openrlhf_reward_model(path: str | Path, value_head_prefix: str = "score", normalize_reward: bool = False):
    """(model, loading info) as ``get_llm_for_sequence_regression(path, "reward", value_head_prefix=...)`` builds it."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(path))
    config.normalize_reward = normalize_reward
    base_class = AutoModel._model_mapping[type(config)]
    base_pretrained = base_class.__base__

    class RewardModel(base_pretrained):
        def __init__(self, config):
            super().__init__(config)
            setattr(self, self.base_model_prefix, base_class(config))
            self.value_head_prefix = value_head_prefix
            setattr(self, value_head_prefix, nn.Linear(config.hidden_size, 1, bias=False))
            self.normalize_reward = config.normalize_reward
            self.register_buffer("mean", torch.zeros(1), persistent=False)
            self.register_buffer("std", torch.ones(1), persistent=False)
            if hasattr(config, "mean"):
                self.mean[0] = config.mean
                self.std[0] = config.std
            self.post_init()

        def forward(self, input_ids, attention_mask):
            position_ids = attention_mask.long().cumsum(-1) - 1
            position_ids.masked_fill_(attention_mask == 0, 1)
            out = getattr(self, self.base_model_prefix)(input_ids, attention_mask=attention_mask, position_ids=position_ids)
            values = getattr(self, self.value_head_prefix)(out["last_hidden_state"]).squeeze(-1)
            last = attention_mask.size(1) - 1 - attention_mask.long().fliplr().argmax(dim=1, keepdim=True)
            reward = values.gather(dim=1, index=last).squeeze(1)
            if not self.training and self.normalize_reward:
                reward = (reward - self.mean) / self.std
            return reward

    model, info = RewardModel.from_pretrained(str(path), config=config, dtype=torch.float32, output_loading_info=True)
    # transformers 5 builds the model on the meta device, so the non-persistent mean/std buffers set in __init__
    # come back uninitialised: set them as OpenRLHF's __init__ means to (whether OpenRLHF itself hits this depends
    # on the transformers version it runs with; not checked here)
    with torch.no_grad():
        model.mean.fill_(float(getattr(config, "mean", 0.0)))
        model.std.fill_(float(getattr(config, "std", 1.0)))
    return model.eval(), info
