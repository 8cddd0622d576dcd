"""Full and LoRA training of group reward models with the transformers ``Trainer``.

:class:`SCPOTrainer` subclasses ``transformers.Trainer`` and changes only what differs, as TRL's
``RewardTrainer`` does: the loss (the weighted Bradley-Terry loss, chosen and rejected in one
forward pass) and the collator (:class:`PairCollator`: dynamic padding of tokenised pairs, no
padding to a fixed length). Batches are grouped by length. Because it is a ``Trainer``,
``accelerate launch`` (DDP, DeepSpeed, FSDP), bf16, gradient accumulation and checkpointing work
as usual. ``lora`` wraps the model with PEFT (the score layer is trained and saved too).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from .model import InputFormatter, RewardModel, find_score_layer
from .reliability import maybe_kill

__all__ = ["PairCollator", "SCPOTrainer", "build_pair_dataset", "fit_trainer_models", "forward_rewards", "training_arguments"]


def build_pair_dataset(tokenizer: Any, formatter: InputFormatter, prompts: list[str], chosen: list[str], rejected: list[str], weights: np.ndarray):
    """A ``datasets.Dataset`` of tokenised pairs with weights and a ``length`` column."""
    import datasets

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


class SCPOTrainer(Trainer):
    """``Trainer`` with the weighted Bradley-Terry loss ``-mean(w * log sigmoid(r+ - r-))``.

    The first half of each batch's rows are the chosen inputs, the second half the rejected ones.
    ``pull`` adds ``pull * ||theta - theta_global||^2`` over the trainable parameters.
    """

    def __init__(self, *args: Any, pull: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pull = float(pull)
        self._anchor = None
        if self.pull > 0:
            self._anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        self.seen_pairs = 0

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


def training_arguments(output_dir: str, train_cfg: Any, *, learning_rate: float, max_steps: int, seed: int, save_steps: int = 0, **extra: Any) -> TrainingArguments:
    """TrainingArguments from scpo's TrainConfig (works on transformers 4.4x and 5.x)."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    kw: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=max(1, train_cfg.batch_size // max(1, int(os.environ.get("WORLD_SIZE", "1")))),
        learning_rate=learning_rate,
        max_steps=max(1, max_steps),
        seed=seed,
        data_seed=seed,
        weight_decay=train_cfg.weight_decay,
        warmup_ratio=train_cfg.warmup_ratio,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        bf16=train_cfg.bf16,
        deepspeed=train_cfg.deepspeed,
        report_to=train_cfg.report_to,
        dataloader_num_workers=train_cfg.dataloader_num_workers,
        remove_unused_columns=False,
        logging_steps=10,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=save_steps if save_steps > 0 else 500,
        save_total_limit=1,
        disable_tqdm=True,
        length_column_name="length",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if train_cfg.gradient_checkpointing:
        kw["gradient_checkpointing"] = True
    if train_cfg.group_by_length:
        if "train_sampling_strategy" in fields:
            kw["train_sampling_strategy"] = "group_by_length"
        else:
            kw["group_by_length"] = True
    kw.update(extra)
    return TrainingArguments(**{k: v for k, v in kw.items() if k in fields})


@torch.inference_mode()
def forward_rewards(model: torch.nn.Module, tokenizer: Any, formatter: InputFormatter, prompts: list[str], responses: list[str], batch_size: int = 64) -> np.ndarray:
    """Rewards (logit 0) of a sequence-classification model, length-sorted batches, eval mode."""
    was_training = model.training
    model.eval()
    ids, tt, _ = formatter.encode(tokenizer, prompts, responses)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros(len(ids))
    coll = PairCollator(pad_token_id=tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    for s in range(0, len(order), batch_size):
        b = order[s : s + batch_size]
        feats = [{"chosen_input_ids": ids[i], "rejected_input_ids": [], "weight": 0.0} for i in b]
        if tt is not None:
            for f, i in zip(feats, b):
                f["chosen_token_type_ids"], f["rejected_token_type_ids"] = tt[i], []
        batch = coll(feats)
        n = len(b)
        inputs = {k: v[:n].to(device) for k, v in batch.items() if k != "weight"}
        out[b] = model(**inputs).logits[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


class _ValCallback(TrainerCallback):
    """Evaluates validation accuracy at the steps of the grid."""

    def __init__(self, steps: list[int], fn):
        self.steps, self.fn, self.acc = set(steps), fn, {}

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step in self.steps:
            self.acc[state.global_step] = self.fn(model)


def _make_model(rm: RewardModel, mode: str, train_cfg: Any, scratch: bool):
    model = copy.deepcopy(rm.model)
    if scratch:
        _, layer = find_score_layer(model)
        with torch.no_grad():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
    if mode == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=train_cfg.lora_r, lora_alpha=train_cfg.lora_alpha,
            lora_dropout=train_cfg.lora_dropout, target_modules=train_cfg.lora_target_modules,
            modules_to_save=[rm.score_layer_name.split(".")[-1]],
        )
        model = get_peft_model(model, cfg)
    model.train()
    return model


def fit_trainer_models(exp: Any, methods: list[str], seeds: list[int], progress: bool = True):
    """Full / LoRA mode: one Trainer run per (group, method, seed); margins on the pooled test pairs.

    Grid search (if any grid has more than one value and ``val_folds > 1``) uses the first
    validation fold only, to bound cost. Finished jobs are skipped on a re-run (their test margins
    are saved under ``RUN_DIR/jobs``); an interrupted job resumes from its last checkpoint.
    """
    from .load import kfold_keys
    from .pipeline import _stream
    from .train import grid_cells, method_pairs

    cfg = exp.cfg
    tc = cfg.train
    run_dir = Path(cfg.output.output_dir)
    jobs_dir = run_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    rm = exp.rm
    test_rows = np.flatnonzero(exp.split == "test")
    # distinct texts of the pooled test pairs, scored once per trained model
    t_index: dict[int, int] = {}
    for r in np.concatenate([exp.chosen_row[test_rows], exp.rejected_row[test_rows]]):
        t_index.setdefault(int(r), len(t_index))
    t_rows = list(t_index)
    tc_pos = np.array([t_index[int(r)] for r in exp.chosen_row[test_rows]])
    tr_pos = np.array([t_index[int(r)] for r in exp.rejected_row[test_rows]])

    def test_margins(model) -> np.ndarray:
        rw = forward_rewards(model, rm.tokenizer, rm.formatter, [exp.prompts[i] for i in t_rows], [exp.responses[i] for i in t_rows], cfg.model.score_batch_size)
        return rw[tc_pos] - rw[tr_pos]

    def margins_on(model, rows) -> np.ndarray:
        c, r = exp.chosen_row[rows], exp.rejected_row[rows]
        rw = forward_rewards(model, rm.tokenizer, rm.formatter, [exp.prompts[i] for i in c] + [exp.prompts[i] for i in r],
                             [exp.responses[i] for i in c] + [exp.responses[i] for i in r], cfg.model.score_batch_size)
        return rw[: len(rows)] - rw[len(rows):]

    def dataset_for(rows, idx, wts):
        sel = rows[idx]
        return build_pair_dataset(rm.tokenizer, rm.formatter, [exp.prompts[i] for i in exp.chosen_row[sel]],
                                  [exp.responses[i] for i in exp.chosen_row[sel]], [exp.responses[i] for i in exp.rejected_row[sel]], wts)

    def train_one(rows, m, g, seed, lr, pull, max_steps, out_dir, val_rows=None, val_steps=()):
        rng = np.random.default_rng(_stream("subset", g, seed, "final" if val_rows is None else 0))
        idx, wts = method_pairs(m, exp.delta[rows], cfg.select.tau, cfg.select.beta, rng)
        model = _make_model(rm, tc.mode, tc, scratch=(m == "scratch"))
        if len(idx) == 0:
            return model, 0, 0.0, {}
        ds = dataset_for(rows, idx, wts)
        args = training_arguments(str(out_dir), tc, learning_rate=lr, max_steps=max_steps, seed=seed,
                                  save_steps=tc.save_steps if val_rows is None else 0)
        callbacks = []
        cb = None
        if val_rows is not None and len(val_rows):
            cb = _ValCallback(list(val_steps), lambda mdl: float((margins_on(mdl, val_rows) > 0).mean()))
            callbacks.append(cb)
        trainer = SCPOTrainer(model=model, args=args, train_dataset=ds, data_collator=PairCollator(rm.tokenizer.pad_token_id or 0),
                              pull=pull, callbacks=callbacks)
        last = None
        if val_rows is None and out_dir.exists():
            ckpts = sorted(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
            last = str(ckpts[-1]) if ckpts else None
        trainer.train(resume_from_checkpoint=last)
        return trainer.model, len(idx), float(np.sum(wts)), (cb.acc if cb else {})

    cells = grid_cells(tc.learning_rates, tc.pulls)
    steps = sorted(set(tc.steps))
    search = tc.val_folds > 1 and (len(cells) > 1 or len(steps) > 1)
    margins: dict[tuple, np.ndarray] = {}
    used: dict[tuple, tuple[int, float]] = {}
    grid: dict[str, Any] = {"cells": [{"learning_rate": lr, "pull": p} for lr, p in cells], "steps": steps,
                            "val_folds": tc.val_folds, "searched": search, "search_folds_used": 1 if search else 0, "choices": {}}
    models: dict[str, str] = {}
    gm = test_margins(rm.model)
    trained = [m for m in methods if m != "global"]
    for g in exp.groups:
        train_m = (exp.group == g) & (exp.split == "train")
        rows = np.flatnonzero(train_m)
        for seed in seeds:
            margins[(g, "global", seed)] = gm
            used[(g, "global", seed)] = (0, 0.0)
        for m in trained:
            for seed in seeds:
                key = f"{g}__{m}__seed{seed}".replace("/", "_")
                done = jobs_dir / f"{key}.json"
                if done.exists():
                    rec = json.loads(done.read_text())
                    margins[(g, m, seed)] = np.asarray(rec["margins"])
                    used[(g, m, seed)] = (rec["pairs"], rec["weight_sum"])
                    grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = rec["choice"]
                    if rec.get("model_dir"):
                        models[rec["model_name"]] = rec["model_dir"]
                    continue
                lr, pull, st = cells[0][0], cells[0][1], steps[-1]
                choice: dict[str, Any] = {"learning_rate": lr, "pull": pull, "steps": st}
                if search:
                    folds = kfold_keys(sorted(set(exp.split_key[rows])), tc.val_folds, seed=cfg.data.split_seed)
                    val_m = train_m & np.isin(exp.split_key, folds[0])
                    best = (-1.0, 0, 0)
                    table = []
                    for ci, (clr, cpull) in enumerate(cells):
                        _, _, _, acc = train_one(np.flatnonzero(train_m & ~val_m), m, g, seed, clr, cpull, steps[-1],
                                                 run_dir / "checkpoints" / "search", np.flatnonzero(val_m), steps)
                        table.append([acc.get(s, float("nan")) for s in steps])
                        for si, s in enumerate(steps):
                            a = acc.get(s, -1.0)
                            if a > best[0]:
                                best = (a, ci, si)
                    lr, pull = cells[best[1]]
                    st = steps[best[2]]
                    choice = {"learning_rate": lr, "pull": pull, "steps": st, "val_accuracy": best[0], "val_accuracy_grid": table}
                    shutil.rmtree(run_dir / "checkpoints" / "search", ignore_errors=True)
                out_dir = run_dir / "checkpoints" / key
                model, n_pairs, wsum = train_one(rows, m, g, seed, lr, pull, st, out_dir)[:3]
                margins[(g, m, seed)] = test_margins(model)
                used[(g, m, seed)] = (n_pairs, wsum)
                grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = choice
                rec = {"margins": margins[(g, m, seed)].tolist(), "pairs": n_pairs, "weight_sum": wsum, "choice": choice}
                if m == "scpo" and seed == seeds[0] and cfg.output.save_models:
                    sub = "adapters" if tc.mode == "lora" else "groups"
                    mdir = run_dir / ".saved" / sub / g
                    shutil.rmtree(mdir, ignore_errors=True)
                    model.save_pretrained(mdir)
                    if tc.mode != "lora":
                        rm.tokenizer.save_pretrained(mdir)
                    rec["model_name"], rec["model_dir"] = f"{sub}/{g}", str(mdir)
                    models[rec["model_name"]] = str(mdir)
                tmp = done.with_name(done.name + ".tmp")
                tmp.write_text(json.dumps(rec))
                os.replace(tmp, done)
                shutil.rmtree(out_dir, ignore_errors=True)
                maybe_kill("training")
    return margins, used, grid, models
