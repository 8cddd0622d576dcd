"""The transformers ``Trainer`` of full and LoRA training: loss, sampler, collator, arguments.

:class:`SCPOTrainer` subclasses ``transformers.Trainer`` and changes only what differs, as TRL's
``RewardTrainer`` does: the loss (the weighted Bradley-Terry loss, chosen and rejected in one
forward pass) and the collator (:class:`PairCollator`: dynamic padding of tokenised pairs, no
padding to a fixed length). Batches are grouped by length. Because it is a ``Trainer``,
``accelerate launch`` (DDP, DeepSpeed, FSDP), bf16, gradient accumulation and checkpointing work
as usual. The jobs it runs (one per group, method and seed), their grid search and their resume
after an interruption are :mod:`scpo.jobs`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

from .model import InputFormatter
from .parallel import has_accelerator, rank_and_world

__all__ = ["PairCollator", "PairSampler", "SCPOTrainer", "build_pair_dataset", "training_arguments"]


def build_pair_dataset(tokenizer: Any, formatter: InputFormatter, prompts: list[str], chosen: list[str], rejected: list[str], weights: np.ndarray):
    """A ``datasets.Dataset`` of tokenised pairs with weights and a ``length`` column."""
    c_ids, c_tt, _ = formatter.encode(tokenizer, prompts, chosen)
    r_ids, r_tt, _ = formatter.encode(tokenizer, prompts, rejected)
    d = {
        "chosen_input_ids": c_ids,
        "rejected_input_ids": r_ids,
        "weight": [float(w) for w in weights],
        "length": [max(len(a), len(b)) for a, b in zip(c_ids, r_ids)],
    }
    if c_tt is not None:
        d["chosen_token_type_ids"], d["rejected_token_type_ids"] = c_tt, r_tt
    return datasets.Dataset.from_dict(d)


@dataclasses.dataclass
class PairCollator:
    """Pads chosen and rejected inputs of a batch together to the batch's longest (dynamic padding)."""

    pad_token_id: int = 0
    pad_to: int | None = None
    """Pad to this fixed length instead (only to benchmark against fixed-length padding)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        T = self.pad_to or max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), T), dtype=torch.long)
        has_tt = "chosen_token_type_ids" in features[0]
        tt = torch.zeros((len(seqs), T), dtype=torch.long) if has_tt else None
        tts = ([f["chosen_token_type_ids"] for f in features] + [f["rejected_token_type_ids"] for f in features]) if has_tt else None
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            if tt is not None:
                tt[i, : len(s)] = torch.tensor(tts[i])
        batch = {"input_ids": ids, "attention_mask": mask, "weight": torch.tensor([f["weight"] for f in features], dtype=torch.float32)}
        if tt is not None:
            batch["token_type_ids"] = tt
        return batch


class PairSampler(torch.utils.data.Sampler):
    """The order in which training visits the pairs: the same on 1 and N processes, and after a resume.

    Passes over the data, each a permutation drawn from ``(seed, pass)`` — length-grouped when
    ``lengths`` is given (transformers' ``get_length_grouped_indices`` over global batches, as its
    ``LengthGroupedSampler`` does, but seeded) — are concatenated into one stream, and epoch ``e``
    is the stream's ``e``-th slice of ``ceil(n / global_batch)`` whole global batches. accelerate
    deals each global batch's per-device batches to the ranks, so any number of processes trains on
    the same global batches, and no rank is ever given a short or wrapped-around last batch (which
    would make N processes differ from one at every epoch's end).
    """

    def __init__(self, n: int, global_batch: int, seed: int, lengths: list[int] | None = None):
        self.n, self.global_batch, self.seed = int(n), max(1, int(global_batch)), int(seed)
        self.lengths = list(lengths) if lengths is not None else None
        self.epoch = 0
        self.epoch_len = -(-self.n // self.global_batch) * self.global_batch if self.n else 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer (through accelerate) before each epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_len

    def one_pass(self, j: int) -> list[int]:
        """Pass ``j`` over the data: a permutation of ``range(n)``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + j)
        if self.lengths is None:
            return torch.randperm(self.n, generator=g).tolist()
        return [int(i) for i in get_length_grouped_indices(self.lengths, self.global_batch, generator=g)]

    def __iter__(self):
        if not self.n:
            return iter(())
        start = self.epoch * self.epoch_len
        first, last = start // self.n, (start + self.epoch_len - 1) // self.n
        stream = [i for j in range(first, last + 1) for i in self.one_pass(j)]
        off = start - first * self.n
        return iter(stream[off : off + self.epoch_len])


class SCPOTrainer(Trainer):
    """``Trainer`` with the weighted Bradley-Terry loss ``-mean(w * log sigmoid(r+ - r-))``.

    The first half of each batch's rows are the chosen inputs, the second half the rejected ones.
    ``pull`` adds ``pull * ||theta - theta_global||^2`` over the trainable parameters. Pairs are
    visited in a :class:`PairSampler` order (length-grouped when ``length_column_name`` is a column
    and length grouping is on), so 1 and N processes train on the same global batches.
    """

    def __init__(self, *args: Any, pull: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pull = float(pull)
        self._anchor = None
        if self.pull > 0:
            self._anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        self.seen_pairs = 0

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        grouped = getattr(args, "train_sampling_strategy", None) == "group_by_length" or getattr(args, "group_by_length", False)
        lengths = list(ds[args.length_column_name]) if grouped and args.length_column_name in ds.column_names else None
        global_batch = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        seed = args.data_seed if args.data_seed is not None else args.seed
        return PairSampler(len(ds), global_batch, seed, lengths)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        weight = inputs.pop("weight")
        rewards = model(**inputs).logits[:, 0].float()
        n = weight.shape[0]
        margin = rewards[:n] - rewards[n:]
        loss = -(weight * F.logsigmoid(margin)).mean()
        if self._anchor is not None:
            reg = sum(((p - self._anchor[name]) ** 2).sum() for name, p in model.named_parameters() if name in self._anchor)
            loss = loss + self.pull * reg
        self.seen_pairs += n
        if return_outputs:
            return loss, {"margin": margin}
        return loss


def training_arguments(output_dir: str, train_cfg: Any, trainer_cfg: Any, *, learning_rate: float, max_steps: int, seed: int,
                       save_steps: int = 0, **extra: Any) -> TrainingArguments:
    """TrainingArguments from scpo's ``train`` and ``trainer`` sections (works on transformers 4.4x and 5.x).

    ``train_cfg.batch_size`` is the global batch: each of the launcher's processes takes
    ``batch_size / world`` pairs a step. Without a GPU (or MPS/XPU) the Trainer is told
    ``use_cpu``, so that ``accelerate launch`` on a CPU machine trains data-parallel over gloo.
    """
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    world = rank_and_world()[1]
    if train_cfg.batch_size % world:
        warnings.warn(f"--batch-size {train_cfg.batch_size} is not a multiple of the {world} processes: each takes "
                      f"{max(1, train_cfg.batch_size // world)} pairs a step, a global batch of "
                      f"{max(1, train_cfg.batch_size // world) * world}", stacklevel=2)
    kw: dict[str, Any] = dict(
        output_dir=output_dir,
        use_cpu=not has_accelerator(),
        per_device_train_batch_size=max(1, train_cfg.batch_size // world),
        learning_rate=learning_rate,
        max_steps=max(1, max_steps),
        seed=seed,
        data_seed=seed,
        weight_decay=trainer_cfg.weight_decay,
        warmup_ratio=trainer_cfg.warmup_ratio,
        gradient_accumulation_steps=trainer_cfg.gradient_accumulation_steps,
        bf16=trainer_cfg.bf16,
        deepspeed=trainer_cfg.deepspeed,
        report_to=trainer_cfg.report_to,
        dataloader_num_workers=trainer_cfg.dataloader_num_workers,
        remove_unused_columns=False,
        logging_steps=max(1, min(10, max_steps // 10)),  # at least ~10 points of the curve in a short job
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        save_total_limit=1,
        disable_tqdm=True,
        length_column_name="length",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if trainer_cfg.gradient_checkpointing:  # transformers 5 renamed it; the old name warns
        kw["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = True
    if trainer_cfg.group_by_length:
        if "train_sampling_strategy" in fields:
            kw["train_sampling_strategy"] = "group_by_length"
        else:
            kw["group_by_length"] = True
    kw.update(extra)
    return TrainingArguments(**{k: v for k, v in kw.items() if k in fields})
