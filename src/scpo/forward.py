"""The one batched forward pass of a reward model: scoring, Trainer-mode evaluation and serving call it.

Texts are tokenised once by the model's :class:`~scpo.model.InputFormatter` into flat arrays
(:class:`Tokens`: Python lists of ints would take about 10x the memory), planned into batches
longest first (:func:`plan`: dynamic padding, and a batch too large for memory fails first), and
run in eval mode under ``torch.inference_mode()`` (:func:`forward`). The pass returns either the
*features* (the score layer's input, which head mode trains on) or the *rewards* (the score
layer's output), both read at the last non-padding token for decoder reward models. Under a
launcher (``accelerate launch``, ``torchrun``) the planned batches are shared between the ranks
(:func:`scpo.parallel.map_batches`): a collective call, which every rank must make.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .instrument import count
from .model import InputFormatter, find_score_layer
from .parallel import map_batches
from .rundir import log_work

__all__ = ["ACCELERATOR_BATCH_SIZE", "CPU_BATCH_SIZE", "ForwardPass", "Tokens", "forward", "plan", "resolve_batch_size",
           "rewards_of", "score_module", "tokenize"]

CPU_BATCH_SIZE = 16
"""Texts per batch on a CPU (``batch_size=0``). On this project's 2-core machine the packaged
encoder scored 600 PRISM-like texts in 9.6 s with batches of 16, 9.8 s with 8, 10.2 s with 32, 11.1 s
with 64 and 15.3 s with 128: beyond a few thousand tokens a batch's activations leave the cache, and
the memory-bound layer norms, GELUs and softmaxes slow down (and longer batches pad more)."""
ACCELERATOR_BATCH_SIZE = 64
"""Texts per batch on a GPU or other accelerator (``batch_size=0``): small batches starve it."""


def resolve_batch_size(batch_size: int, device: torch.device | str) -> int:
    """``batch_size``, or for 0 (auto) :data:`CPU_BATCH_SIZE` on a CPU and :data:`ACCELERATOR_BATCH_SIZE` else."""
    if batch_size > 0:
        return int(batch_size)
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SIZE


def _flat(seqs: list[list[int]], dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """``(every sequence's items one after another, each sequence's length)``."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    return np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(lengths.sum())), lengths


@dataclass
class Tokens:
    """Token ids of many texts in flat arrays."""

    ids: np.ndarray
    types: np.ndarray | None
    offsets: np.ndarray
    """Text ``i``'s tokens are ``ids[offsets[i]:offsets[i + 1]]``."""

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def concat(cls, parts: Sequence[Tokens]) -> Tokens:
        lengths = np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64)
        types = [p.types for p in parts]
        return cls(np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int32),
                   np.concatenate(types) if parts and all(t is not None for t in types) else None,
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def batch(self, rows: np.ndarray, pad: int) -> dict[str, torch.Tensor]:
        """Model inputs of some texts, right-padded to the longest of them."""
        start, n = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        col = np.arange(int(n.max()))
        mask = col < n[:, None]
        at = np.where(mask, start[:, None] + col, 0)
        inputs = {"input_ids": torch.from_numpy(np.where(mask, self.ids[at], pad).astype(np.int64)),
                  "attention_mask": torch.from_numpy(mask.astype(np.int64))}
        if self.types is not None:
            inputs["token_type_ids"] = torch.from_numpy(np.where(mask, self.types[at], 0).astype(np.int64))
        return inputs


def tokenize(formatter: InputFormatter, tokenizer: Any, prompts: list[str], responses: list[str]) -> tuple[Tokens, int]:
    """Tokens of (prompt, response) pairs through the formatter, and the number truncated."""
    ids, types, n_trunc = formatter.encode(tokenizer, prompts, responses)
    flat, n = _flat(ids, np.int32)
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    return Tokens(flat, _flat(types, np.int8)[0] if types is not None else None, offsets), n_trunc


def plan(lengths: np.ndarray, batch_size: int, todo: np.ndarray | None = None) -> list[np.ndarray]:
    """Batches of row indices by length, longest first; rows not in ``todo`` (a mask) are left out
    of their batch (the plan is the same whatever a cache holds)."""
    order = np.argsort(lengths, kind="stable")[::-1]
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    if todo is None:
        return batches
    return [b[todo[b]] for b in batches if todo[b].any()]


def score_module(model: nn.Module, name: str | None = None) -> nn.Module:
    """The score layer: the outermost module named ``name`` (or ``*.name``: PEFT wraps the model),
    else the last one-output linear layer (:func:`scpo.model.find_score_layer`)."""
    if name:
        found = [(n, m) for n, m in model.named_modules() if n == name or n.endswith("." + name)]
        if found:
            return min(found, key=lambda x: len(x[0]))[1]
    return find_score_layer(model)[1]


@torch.inference_mode()
def _run_batch(model: nn.Module, module: nn.Module, inputs: dict[str, torch.Tensor],
               output: Literal["features", "rewards"]) -> np.ndarray:
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        store["x"], store["y"] = inp[0], out

    device = next(model.parameters()).device
    handle = module.register_forward_hook(hook)
    try:
        model(**{k: v.to(device) for k, v in inputs.items()})
    finally:
        handle.remove()
    x = store["x"] if output == "features" else store["y"]
    if x.dim() == 3:  # decoder reward models: the last non-padding token
        last = inputs["attention_mask"].sum(1).to(x.device) - 1
        x = x[torch.arange(x.shape[0], device=x.device), last]
    if output == "rewards":
        return x.reshape(x.shape[0], -1)[:, :1].float().cpu().numpy()
    return x.float().cpu().numpy()


class ForwardPass:
    """An iterable of ``(i, result of batches[i])``; :attr:`computed` counts the batches this process ran."""

    def __init__(self, model: nn.Module, tokens: Tokens, batches: Sequence[np.ndarray], pad_id: int,
                 output: Literal["features", "rewards"], module: nn.Module | None, work: str | None):
        self.model, self.tokens, self.batches, self.pad_id, self.output = model, tokens, batches, pad_id, output
        self.module = module if module is not None else score_module(model)
        self.work = work
        self.computed = 0

    def _run(self, b: np.ndarray) -> np.ndarray:
        self.computed += 1
        if self.work:
            count(self.work)
            log_work(self.work, texts=len(b))
        return _run_batch(self.model, self.module, self.tokens.batch(b, self.pad_id), self.output)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        width = self.module.in_features if self.output == "features" else 1
        was_training = self.model.training
        self.model.eval()
        try:
            yield from map_batches(self.batches, self._run, width)
        finally:
            self.model.train(was_training)


def forward(model: nn.Module, tokens: Tokens, batches: Sequence[np.ndarray], *, pad_id: int,
            output: Literal["features", "rewards"], module: nn.Module | None = None,
            work: str | None = None) -> ForwardPass:
    """``(i, result of batches[i])`` for every planned batch: float32 features ``[len, dim]`` or rewards ``[len, 1]``.

    The model runs in eval mode (restored afterwards). ``module`` is the score layer (found when
    not given). ``work`` names the event each computed batch is counted as (the run's work log and
    :mod:`scpo.instrument`). Each batch is computed by one rank and seen by every rank.
    """
    return ForwardPass(model, tokens, batches, pad_id, output, module, work)


def rewards_of(model: nn.Module, tokenizer: Any, formatter: InputFormatter, prompts: list[str], responses: list[str], *,
               batch_size: int = 0, module: nn.Module | None = None, work: str | None = None) -> np.ndarray:
    """Rewards (float64 ``[n]``) of (prompt, response) pairs: tokenise, plan, one pass per batch."""
    tokens, _ = tokenize(formatter, tokenizer, prompts, responses)
    out = np.zeros(len(tokens))
    if not len(tokens):
        return out
    batches = plan(tokens.lengths, resolve_batch_size(batch_size, next(model.parameters()).device))
    for i, r in forward(model, tokens, batches, pad_id=tokenizer.pad_token_id or 0, output="rewards",
                        module=module, work=work):
        out[batches[i]] = r[:, 0]
    return out
