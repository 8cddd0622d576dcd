"""Full and LoRA training of group reward models with the transformers ``Trainer``.

:class:`SCPOTrainer` subclasses ``transformers.Trainer`` and changes only what differs, as TRL's
``RewardTrainer`` does: the loss (the weighted Bradley-Terry loss, chosen and rejected in one
forward pass) and the collator (:class:`PairCollator`: dynamic padding of tokenised pairs, no
padding to a fixed length). Batches are grouped by length. Because it is a ``Trainer``,
``accelerate launch`` (DDP, DeepSpeed, FSDP), bf16, gradient accumulation and checkpointing work
as usual. ``lora`` wraps the model with PEFT (the score layer is trained and saved too).

Interruptions (see ``docs/reliability.md``): every finished (group, method, seed) job leaves a
record ``RUN_DIR/jobs/<job>.json`` (test margins, pairs, choice, steps) and is skipped by a re-run;
an unfinished job checkpoints every ``save_steps`` under ``RUN_DIR/checkpoints/<job>/`` and a
re-run resumes it from its last *complete* checkpoint (a checkpoint counts once scpo's marker file
is written after the Trainer's save). Records and checkpoints carry a fingerprint of everything
that determines the job (data, global model, select and train settings): one made under another
config is never reused. Each training step, evaluation forward pass and skipped or resumed job is
counted in the run's work log (:func:`scpo.reliability.log_work`).
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
from .names import path_component, rmtree_inside
from .parallel import has_accelerator, is_main_process, map_batches, rank_and_world
from .reliability import atomic_write_json, log_work, maybe_kill

COMPLETE_MARKER = "scpo_checkpoint_complete"
"""File scpo writes into a Trainer checkpoint folder once the Trainer has finished saving it."""
JOB_FINGERPRINT_FILE = "scpo_job.json"

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
        from transformers.trainer_pt_utils import get_length_grouped_indices

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


def training_arguments(output_dir: str, train_cfg: Any, *, learning_rate: float, max_steps: int, seed: int, save_steps: int = 0, **extra: Any) -> TrainingArguments:
    """TrainingArguments from scpo's TrainConfig (works on transformers 4.4x and 5.x).

    ``train_cfg.batch_size`` is the global batch: each of the launcher's processes takes
    ``batch_size / world`` pairs a step. Without a GPU (or MPS/XPU) the Trainer is told
    ``use_cpu``, so that ``accelerate launch`` on a CPU machine trains data-parallel over gloo.
    """
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    world = rank_and_world()[1]
    if train_cfg.batch_size % world:
        import warnings

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
    if train_cfg.gradient_checkpointing:  # transformers 5 renamed it; the old name warns
        kw["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = True
    if train_cfg.group_by_length:
        if "train_sampling_strategy" in fields:
            kw["train_sampling_strategy"] = "group_by_length"
        else:
            kw["group_by_length"] = True
    kw.update(extra)
    return TrainingArguments(**{k: v for k, v in kw.items() if k in fields})


@torch.inference_mode()
def forward_rewards(model: torch.nn.Module, tokenizer: Any, formatter: InputFormatter, prompts: list[str], responses: list[str], batch_size: int = 0) -> np.ndarray:
    """Rewards (logit 0) of a sequence-classification model, length-sorted batches, eval mode.

    Under a launcher the batches are shared between the ranks (:func:`scpo.parallel.map_batches`)
    and every rank returns every reward: a collective call, which every rank must make.
    """
    from .score import resolve_batch_size

    was_training = model.training
    model.eval()
    ids, tt, _ = formatter.encode(tokenizer, prompts, responses)
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.zeros(len(ids))
    coll = PairCollator(pad_token_id=tokenizer.pad_token_id or 0)
    device = next(model.parameters()).device
    batch_size = resolve_batch_size(batch_size, device)  # 0: auto, as for scoring

    def rewards(b: np.ndarray) -> np.ndarray:
        feats = [{"chosen_input_ids": ids[i], "rejected_input_ids": [], "weight": 0.0} for i in b]
        if tt is not None:
            for f, i in zip(feats, b):
                f["chosen_token_type_ids"], f["rejected_token_type_ids"] = tt[i], []
        batch = coll(feats)
        n = len(b)
        inputs = {k: v[:n].to(device) for k, v in batch.items() if k != "weight"}
        log_work("eval_forward_passes", texts=n)
        return model(**inputs).logits[:, :1].float().cpu().numpy()

    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    for i, r in map_batches(batches, rewards, 1):
        out[batches[i]] = r[:, 0]
    model.train(was_training)
    return out


class _ValCallback(TrainerCallback):
    """Evaluates validation accuracy at the steps of the grid."""

    def __init__(self, steps: list[int], fn):
        self.steps, self.fn, self.acc = set(steps), fn, {}

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step in self.steps:
            self.acc[state.global_step] = self.fn(model)


class _ResumeCallback(TrainerCallback):
    """Counts training steps in the work log; marks each checkpoint complete once the Trainer saved it."""

    def __init__(self, job: str):
        self.job = job
        self.steps_run = 0

    def on_step_end(self, args, state, control, **kw):
        self.steps_run += 1
        log_work("training_steps", job=self.job)

    def on_save(self, args, state, control, **kw):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            atomic_write_json(ckpt / COMPLETE_MARKER, {"step": state.global_step})
        maybe_kill("training")


def last_complete_checkpoint(out_dir: Path) -> tuple[Path | None, int]:
    """The newest checkpoint under ``out_dir`` that scpo marked complete, and its step (0: none).

    Checkpoints without the marker (a save cut short by a kill) are ignored, and deleted by the
    main process.
    """
    best: tuple[Path | None, int] = (None, 0)
    if not out_dir.is_dir():
        return best
    for ckpt in out_dir.glob("checkpoint-*"):
        try:
            step = int(ckpt.name.rsplit("-", 1)[-1])
        except ValueError:
            continue
        if not (ckpt / COMPLETE_MARKER).exists():
            if is_main_process():
                shutil.rmtree(ckpt, ignore_errors=True)
            continue
        if step > best[1]:
            best = (ckpt, step)
    return best


def job_fingerprint(exp: Any, key: str) -> str:
    """Hash of everything that determines one job's result: a record or checkpoint from another
    config (or other data, another global model) never matches."""
    import hashlib

    cfg = exp.cfg
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("cache_dir", "score_batch_size", "device")}
    irrelevant = ("methods", "seeds", "save_steps", "report_to", "dataloader_num_workers", "split_seeds",
                  "curve_fractions", "curve_methods", "sweep_taus", "sweep_betas")
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in irrelevant}
    rows = hashlib.sha256()
    for arr in (exp.split, exp.group, exp.split_key, exp.delta):  # which pairs train and test, and their margins
        arr = np.asarray(arr)
        rows.update(np.ascontiguousarray(arr.astype(str) if arr.dtype.kind == "O" else arr).tobytes())
    blob = {
        "job": key, "data": dataclasses.asdict(cfg.data), "model": model, "select": dataclasses.asdict(cfg.select),
        "train": train, "global": exp.global_info.get("fingerprint"), "provenance": exp.data.provenance,
        "rows": rows.hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _restore_saved_model(run_dir: Path, rec: dict[str, Any]) -> bool:
    """Put a finished job's saved model back at ``rec["model_dir"]`` if writing the report moved it.

    ``report.save_models`` moves ``RUN_DIR/.saved/<name>`` into ``RUN_DIR/models/<name>`` (via
    ``RUN_DIR/.models.tmp``); a run killed after that and re-run finds it there. False when lost.
    """
    name = str(rec.get("model_name", ""))
    target = run_dir / ".saved" / name
    parts = Path(name).parts
    if len(parts) != 2 or parts[0] not in ("groups", "adapters") or parts[1] != path_component(str(rec.get("group", ""))):
        return False  # a record of an older layout, or not written by this code: retrain the job
    rec["model_dir"] = str(target)
    if target.exists():
        return True
    for place in (run_dir / ".models.tmp" / rec["model_name"], run_dir / "models" / rec["model_name"]):
        if place.is_dir():
            if not is_main_process():  # only rank 0 writes the report; the others only need the answer
                return True
            target.parent.mkdir(parents=True, exist_ok=True)
            try:  # hard links: instant and no extra space; the report moves them again
                shutil.copytree(place, target, copy_function=os.link)
            except OSError:
                rmtree_inside(target, run_dir)
                shutil.copytree(place, target)
            return True
    return False


def _make_model(rm: RewardModel, mode: str, train_cfg: Any, scratch: bool, seed: int = 0):
    """The model one job trains: a copy of the global model (score layer zeroed for ``scratch``),
    LoRA-wrapped in ``lora`` mode, dropout off unless ``disable_dropout`` is false.

    LoRA's random initialisation is drawn from ``seed`` alone (not from whatever the global RNG went
    through before), so a job starts from the same weights in any process count, order or resume.
    """
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, cfg)
    if train_cfg.disable_dropout:  # as TRL's disable_dropout_in_model: every nn.Dropout, LoRA's included
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model.train()
    return model


def _finished_job(done: Path, fp: str, run_dir: Path) -> dict[str, Any] | None:
    """The record of a job finished by an earlier attempt of this run, or None (then it is trained).

    A record from another config (fingerprint mismatch), an unreadable one, or one whose saved
    model is lost, is discarded with a warning.
    """
    import warnings

    if not done.exists():
        return None
    try:
        rec = json.loads(done.read_text())
        ok = isinstance(rec, dict) and all(k in rec for k in ("margins", "pairs", "weight_sum", "choice"))
    except (OSError, ValueError):
        ok = False
    why = None
    if not ok:
        why = "unreadable"
    elif rec.get("fingerprint") != fp:
        why = "made under another config or other data"
    elif rec.get("model_dir") and not _restore_saved_model(run_dir, rec):
        why = "its saved model is missing"
    if why is not None:
        if is_main_process():
            warnings.warn(f"{done}: finished-job record {why}: the job is trained again", stacklevel=3)
            done.unlink(missing_ok=True)
        return None
    return rec


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
        rw = forward_rewards(model, rm.tokenizer, rm.formatter, *exp.texts(np.asarray(t_rows)), cfg.model.score_batch_size)
        return rw[tc_pos] - rw[tr_pos]

    def margins_on(model, rows) -> np.ndarray:
        c, r = exp.chosen_row[rows], exp.rejected_row[rows]
        rw = forward_rewards(model, rm.tokenizer, rm.formatter, *exp.texts(np.concatenate([c, r])), cfg.model.score_batch_size)
        return rw[: len(rows)] - rw[len(rows):]

    def dataset_for(rows, idx, wts):
        sel = rows[idx]
        (prompts, chosen), (_, rejected) = exp.texts(exp.chosen_row[sel]), exp.texts(exp.rejected_row[sel])
        return build_pair_dataset(rm.tokenizer, rm.formatter, prompts, chosen, rejected, wts)

    def train_one(rows, m, g, seed, lr, pull, max_steps, out_dir, val_rows=None, val_steps=(), job=None, fp=None):
        """Train one model; ``job``/``fp`` (final fits only): checkpoint under ``out_dir`` and resume."""
        rng = np.random.default_rng(_stream("subset", g, seed, "final" if val_rows is None else 0))
        idx, wts = method_pairs(m, exp.delta[rows], cfg.select.tau, cfg.select.beta, rng)
        model = _make_model(rm, tc.mode, tc, scratch=(m == "scratch"), seed=seed)
        info = {"steps": max_steps, "steps_run": 0, "resumed_from_step": 0}
        if len(idx) == 0:
            return model, 0, 0.0, {}, info
        ds = dataset_for(rows, idx, wts)
        resumable = val_rows is None and job is not None
        args = training_arguments(str(out_dir), tc, learning_rate=lr, max_steps=max_steps, seed=seed,
                                  save_steps=tc.save_steps if resumable else 0)
        progress_cb = _ResumeCallback(job or "search")
        callbacks = [progress_cb]
        cb = None
        if val_rows is not None and len(val_rows):
            cb = _ValCallback(list(val_steps), lambda mdl: float((margins_on(mdl, val_rows) > 0).mean()))
            callbacks.append(cb)
        last, last_step = None, 0
        if resumable:
            stamp = out_dir / JOB_FINGERPRINT_FILE
            try:
                same = json.loads(stamp.read_text()).get("fingerprint") == fp
            except (OSError, ValueError):
                same = False
            if same:
                last, last_step = last_complete_checkpoint(out_dir)
            elif is_main_process():  # checkpoints of another config (or unreadable): never resumed
                if out_dir.exists():  # renamed first: other ranks never see a half-deleted folder
                    stale = out_dir.with_name(f".{out_dir.name}.stale{os.getpid()}")
                    os.replace(out_dir, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                atomic_write_json(stamp, {"job": job, "fingerprint": fp})
        trainer = SCPOTrainer(model=model, args=args, train_dataset=ds, data_collator=PairCollator(rm.tokenizer.pad_token_id or 0),
                              pull=pull, callbacks=callbacks)
        if last is not None:
            info["resumed_from_step"] = last_step
            log_work("job_resumed", n=0, job=job, from_step=last_step, steps=max(1, max_steps))
        if last is not None and last_step >= max(1, max_steps):
            # the final step's checkpoint: load it, train nothing more
            trainer._load_from_checkpoint(str(last))
        else:
            trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
        info["steps_run"] = progress_cb.steps_run
        return trainer.model, len(idx), float(np.sum(wts)), (cb.acc if cb else {}), info

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
                key = f"{path_component(g)}__{m}__seed{seed}"  # never the raw name: it comes from the data
                fp = job_fingerprint(exp, key)
                done = jobs_dir / f"{key}.json"
                rec = _finished_job(done, fp, run_dir)
                if rec is not None:
                    margins[(g, m, seed)] = np.asarray(rec["margins"])
                    used[(g, m, seed)] = (rec["pairs"], rec["weight_sum"])
                    grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = rec["choice"]
                    if rec.get("model_dir"):
                        models[rec["model_name"]] = rec["model_dir"]
                    log_work("job_skipped", n=0, job=key)
                    if is_main_process():  # a kill between the record and the clean-up leaves checkpoints
                        shutil.rmtree(run_dir / "checkpoints" / key, ignore_errors=True)
                    continue
                lr, pull, st = cells[0][0], cells[0][1], steps[-1]
                choice: dict[str, Any] = {"learning_rate": lr, "pull": pull, "steps": st}
                if search:
                    folds = kfold_keys(sorted(set(exp.split_key[rows])), tc.val_folds, seed=cfg.data.split_seed)
                    val_m = train_m & np.isin(exp.split_key, folds[0])
                    best = (-1.0, 0, 0)
                    table = []
                    for ci, (clr, cpull) in enumerate(cells):
                        acc = train_one(np.flatnonzero(train_m & ~val_m), m, g, seed, clr, cpull, steps[-1],
                                        run_dir / "checkpoints" / "search", np.flatnonzero(val_m), steps)[3]
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
                model, n_pairs, wsum, _, info = train_one(rows, m, g, seed, lr, pull, st, out_dir, job=key, fp=fp)
                margins[(g, m, seed)] = test_margins(model)
                used[(g, m, seed)] = (n_pairs, wsum)
                grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = choice
                rec = {"job": key, "fingerprint": fp, "margins": margins[(g, m, seed)].tolist(), "pairs": n_pairs,
                       "weight_sum": wsum, "choice": choice, **info}
                if m == "scpo" and seed == seeds[0] and cfg.output.save_models:
                    sub = "adapters" if tc.mode == "lora" else "groups"
                    name = f"{sub}/{path_component(g)}"
                    mdir = run_dir / ".saved" / name
                    rmtree_inside(mdir, run_dir)
                    model.save_pretrained(mdir)
                    if tc.mode != "lora":
                        rm.tokenizer.save_pretrained(mdir)
                    rec["model_name"], rec["model_dir"], rec["group"] = name, str(mdir), g
                    models[rec["model_name"]] = str(mdir)
                atomic_write_json(done, rec)
                log_work("job_trained", n=0, job=key, steps_run=info["steps_run"], resumed_from_step=info["resumed_from_step"])
                shutil.rmtree(out_dir, ignore_errors=True)
                maybe_kill("job")
    return margins, used, grid, models
