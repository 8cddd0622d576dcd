"""Small models for tests and benchmarks (their rewards mean nothing): a tiny random encoder."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from .model import InputFormatter, RewardModel, packaged_model_path

__all__ = ["tiny_encoder"]


def tiny_encoder(hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0, max_length: int = 256):
    """A randomly initialised BERT of the packaged encoder's architecture, much smaller, with its tokenizer.

    For benchmarks of the data and memory path only (its rewards mean nothing).
    """
    src = packaged_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    model.config.problem_type = "regression"
    tok.padding_side = "right"
    rm = RewardModel(model, tok, InputFormatter.for_tokenizer(tok, "text-pair", max_length), f"tiny-bert-{hidden}x{layers}")
    rm.set_head(torch.zeros(rm.feature_dim), 0.0)
    return rm
