"""Full and LoRA mode: one ``Trainer`` job per (group, method, seed), its grid search and its resume.

Each job trains a copy of the global model (LoRA-wrapped in ``lora`` mode) with
:class:`scpo.trainer.SCPOTrainer` on the pairs and weights of its method
(:func:`scpo.selection.method_pairs`). The grid search is :mod:`scpo.grid`'s: every cell is trained
on every validation fold and chosen by the mean validation accuracy, as in head mode. Test margins
come from the one batched forward pass (:func:`scpo.forward.rewards_of`).

Interruptions (see ``docs/reliability.md``): every finished job leaves a record
``WORK_DIR/jobs/<job>.json`` (test margins, pairs, choice, steps, the Trainer's log history) and is
skipped by a re-run; an unfinished job checkpoints every ``save_steps`` under ``WORK_DIR/checkpoints/<job>/`` and a re-run
resumes it from its last *complete* checkpoint (a checkpoint counts once scpo's marker file is
written after the Trainer's save). Records and checkpoints carry a fingerprint of everything that
determines the job (data, training rows, global model, select and train settings): one made under
another config is never reused. Job and folder names carry a group's safe encoding
(:func:`scpo.names.path_component`), never the raw name. Each training step, evaluation forward
pass and skipped or resumed job is counted in the run's work log (:func:`scpo.rundir.log_work`).

Training curves: each final job's ``state.log_history`` becomes its :attr:`FitResult.curves` entry
(:func:`curve_of`; the run writes them to ``training_log.json``); ``--report-to`` trackers see the
final jobs only, TensorBoard writing into ``WORK_DIR/tensorboard/<group>/<method>/seed<seed>/``
(:mod:`scpo.tracking`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from .artifact import MODE_FOLDERS
from .experiment import Experiment, FitResult, PairsUsed
from .forward import rewards_of
from .grid import Choice, GridSpec, choose, folds
from .hashing import stream_seed
from .instrument import point
from .model import PACKAGED_LABEL, RewardModel, find_score_layer, model_label
from .names import path_component, rmtree_inside
from .parallel import is_main_process
from .rundir import atomic_write_json, log_work
from .selection import method_pairs
from .tracking import check_report_to, fit_log_dir
from .trainer import PairCollator, SCPOTrainer, build_pair_dataset, training_arguments

__all__ = ["curve_of", "fit_trainer_jobs", "job_fingerprint", "last_complete_checkpoint"]


COMPLETE_MARKER = "scpo_checkpoint_complete"
"""File scpo writes into a Trainer checkpoint folder once the Trainer has finished saving it."""


JOB_FINGERPRINT_FILE = "scpo_job.json"


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
        point("training")


def _tensorboard_callback(log_dir: Path) -> TrainerCallback:
    """transformers' ``TensorBoardCallback`` writing into ``log_dir`` (not under the job's output folder,
    which is deleted when the job ends); only the main process writes, as the Trainer's own."""
    from transformers.integrations import TensorBoardCallback

    class _RunDirTensorBoard(TensorBoardCallback):
        def _init_summary_writer(self, args: Any, log_dir_: Any = None) -> None:  # 4.x passes a log_dir, 5.x none
            self.tb_writer = self._SummaryWriter(log_dir=str(log_dir))

    return _RunDirTensorBoard()


def curve_of(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """A Trainer job's ``state.log_history`` as a ``training_log.json`` fit: the logged steps as records
    ``{"step", "loss", "grad_norm", "learning_rate", "epoch"}`` (those present), the end-of-training entry
    (``train_loss``, ``train_runtime``, ...) as ``summary``."""
    records, summary = [], {}
    for e in log_history:
        if "loss" in e:
            records.append({"step": int(e.get("step", 0)), "loss": float(e["loss"]),
                            **{k: float(e[k]) for k in ("grad_norm", "learning_rate", "epoch")
                               if isinstance(e.get(k), (int, float))}})
        elif "train_loss" in e:
            summary = {k: v for k, v in e.items() if isinstance(v, (int, float))}
    return {"kind": "trainer_log_history", "records": records, "summary": summary}


def _checkpoint_history(ckpt: Path) -> list[dict[str, Any]]:
    """The log history a checkpoint's ``trainer_state.json`` holds ([] when unreadable)."""
    try:
        hist = json.loads((ckpt / "trainer_state.json").read_text()).get("log_history", [])
    except (OSError, ValueError, AttributeError):
        return []
    return hist if isinstance(hist, list) else []


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


def job_fingerprint(exp: Experiment, key: str, train_rows: np.ndarray, tau: float, beta: float) -> str:
    """Hash of everything that determines one job's result: a record or checkpoint from another
    config (or other data, other training rows, another global model) never matches."""
    cfg = exp.cfg
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in ("cache_dir", "score_batch_size", "device")}
    irrelevant = ("methods", "seeds", "save_steps", "report_to", "dataloader_num_workers")
    train = {k: v for k, v in {**dataclasses.asdict(cfg.train), **dataclasses.asdict(cfg.trainer)}.items()
             if k not in irrelevant}
    rows = hashlib.sha256()
    for arr in (exp.split, exp.group, exp.split_key, exp.delta, train_rows):  # which pairs train and test, their margins
        arr = np.asarray(arr)
        rows.update(np.ascontiguousarray(arr.astype(str) if arr.dtype.kind == "O" else arr).tobytes())
    blob = {
        "job": key, "data": dataclasses.asdict(cfg.data), "model": model, "select": {"tau": tau, "beta": beta},
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


def _make_model(rm: RewardModel, mode: str, trainer_cfg: Any, scratch: bool, seed: int = 0):
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
        from peft import LoraConfig, TaskType, get_peft_model  # PEFT loads only in LoRA mode

        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=trainer_cfg.lora_r, lora_alpha=trainer_cfg.lora_alpha,
            lora_dropout=trainer_cfg.lora_dropout, target_modules=trainer_cfg.lora_target_modules,
            modules_to_save=[rm.score_layer_name.split(".")[-1]],
        )
        # the adapter (its config and PEFT's README) names its base as the user did, not by a folder in site-packages
        model.name_or_path = model.config.name_or_path = model_label(rm.name, packaged=PACKAGED_LABEL)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(model, cfg)
    if trainer_cfg.disable_dropout:  # as TRL's disable_dropout_in_model: every nn.Dropout, LoRA's included
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


def fit_trainer_jobs(exp: Experiment, methods: list[str], seeds: list[int], *, tau: float, beta: float,
                     train_rows: dict[str, np.ndarray], work_dir: Path, save_models: bool, spec: GridSpec,
                     progress: bool = True) -> FitResult:
    """Full / LoRA mode: one Trainer run per (group, method, seed); margins on the pooled test pairs.

    With a grid to search (:attr:`GridSpec.searched`) every cell is trained on each of the k
    validation folds, and :func:`scpo.grid.choose` picks the cell and steps. Finished jobs are
    skipped on a re-run (their test margins are saved under ``work_dir/jobs``); an interrupted job
    resumes from its last checkpoint. ``save_models``: the SCPO model of the first seed of each
    group is kept under ``work_dir/.saved/`` for the run's artifact.
    """
    cfg = exp.cfg
    tc = cfg.train
    trackers = check_report_to(cfg.trainer.report_to, tc.mode)
    run_dir = Path(work_dir)
    jobs_dir = run_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    rm = exp.rm
    test_rows = np.flatnonzero(exp.split == "test")
    # distinct texts of the pooled test pairs, scored once per trained model
    t_index: dict[int, int] = {}
    for r in np.concatenate([exp.chosen_row[test_rows], exp.rejected_row[test_rows]]):
        t_index.setdefault(int(r), len(t_index))
    t_rows = np.asarray(list(t_index), dtype=np.int64)
    tc_pos = np.array([t_index[int(r)] for r in exp.chosen_row[test_rows]], dtype=np.int64)
    tr_pos = np.array([t_index[int(r)] for r in exp.rejected_row[test_rows]], dtype=np.int64)

    def rewards(model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
        return rewards_of(model, rm.tokenizer, rm.formatter, *exp.texts(rows), batch_size=cfg.model.score_batch_size,
                          work="eval_forward_passes")

    def test_margins(model: torch.nn.Module) -> np.ndarray:
        rw = rewards(model, t_rows)
        return rw[tc_pos] - rw[tr_pos]

    def val_accuracy(model: torch.nn.Module, rows: np.ndarray) -> float:
        rw = rewards(model, np.concatenate([exp.chosen_row[rows], exp.rejected_row[rows]]))
        return float((rw[: len(rows)] - rw[len(rows):] > 0).mean())

    def train_one(rows: np.ndarray, m: str, g: str, seed: int, c: Choice, out_dir: Path, fold: Any,
                  val_rows: np.ndarray | None = None, job: str | None = None, fp: str | None = None):
        """Train one model; ``job``/``fp`` (final fits only): checkpoint under ``out_dir`` and resume."""
        rng = np.random.default_rng(stream_seed("subset", g, seed, fold))
        idx, wts = method_pairs(m, exp.delta[rows], tau, beta, rng)
        model = _make_model(rm, tc.mode, cfg.trainer, scratch=(m == "scratch"), seed=seed)
        info: dict[str, Any] = {"steps": c.steps, "steps_run": 0, "resumed_from_step": 0, "log_history": []}
        if len(idx) == 0:
            return model, 0, 0.0, {}, info
        sel = rows[idx]
        (prompts, chosen), (_, rejected) = exp.texts(exp.chosen_row[sel]), exp.texts(exp.rejected_row[sel])
        ds = build_pair_dataset(rm.tokenizer, rm.formatter, prompts, chosen, rejected, wts)
        resumable = val_rows is None and job is not None
        # trackers see the final fits only; TensorBoard writes into the work directory, not the job's folder
        passed = [n for n in trackers if n != "tensorboard"] if resumable else []
        args = training_arguments(str(out_dir), tc, cfg.trainer, learning_rate=c.learning_rate, max_steps=c.steps, seed=seed,
                                  save_steps=cfg.trainer.save_steps if resumable else 0, report_to=passed or "none")
        progress_cb = _ResumeCallback(job or "search")
        callbacks: list[TrainerCallback] = [progress_cb]
        if resumable and "tensorboard" in trackers:
            callbacks.append(_tensorboard_callback(fit_log_dir(run_dir, g, m, seed)))
        cb = None
        if val_rows is not None and len(val_rows):
            cb = _ValCallback(list(spec.steps), lambda mdl: val_accuracy(mdl, val_rows))
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
                    rmtree_inside(stale, run_dir)
                atomic_write_json(stamp, {"job": job, "fingerprint": fp})
        trainer = SCPOTrainer(model=model, args=args, train_dataset=ds, data_collator=PairCollator(rm.tokenizer.pad_token_id or 0),
                              pull=c.pull, callbacks=callbacks)
        if last is not None:
            info["resumed_from_step"] = last_step
            log_work("job_resumed", n=0, job=job, from_step=last_step, steps=max(1, c.steps))
        if last is not None and last_step >= max(1, c.steps):
            # the final step's checkpoint: load it, train nothing more
            trainer._load_from_checkpoint(str(last))
            info["log_history"] = _checkpoint_history(last)
        else:
            trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
            info["log_history"] = list(trainer.state.log_history)  # a resumed job's includes the steps before
        info["steps_run"] = progress_cb.steps_run
        return trainer.model, len(idx), float(np.sum(wts)), (cb.acc if cb else {}), info

    margins: dict[tuple[str, str, int], np.ndarray] = {}
    used: dict[tuple[str, str, int], PairsUsed] = {}
    grid = spec.record()
    models: dict[str, str] = {}
    curves: dict[tuple[str, str, int], dict[str, Any]] = {}
    gm = test_margins(rm.model)
    trained = [m for m in methods if m != "global"]
    for g in exp.groups:
        rows = np.asarray(train_rows[g], dtype=np.int64)
        for seed in seeds:
            margins[(g, "global", seed)] = gm
            used[(g, "global", seed)] = PairsUsed(0, 0.0)
        for m in trained:
            for seed in seeds:
                key = f"{path_component(g)}__{m}__seed{seed}"  # never the raw name: it comes from the data
                fp = job_fingerprint(exp, key, rows, tau, beta)
                done = jobs_dir / f"{key}.json"
                rec = _finished_job(done, fp, run_dir)
                if rec is not None:
                    margins[(g, m, seed)] = np.asarray(rec["margins"])
                    used[(g, m, seed)] = PairsUsed(rec["pairs"], rec["weight_sum"])
                    grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = rec["choice"]
                    curves[(g, m, seed)] = curve_of(rec.get("log_history") or [])
                    if rec.get("model_dir"):
                        models[rec["model_name"]] = rec["model_dir"]
                    log_work("job_skipped", n=0, job=key)
                    if is_main_process():  # a kill between the record and the clean-up leaves checkpoints
                        rmtree_inside(run_dir / "checkpoints" / key, run_dir)
                    continue
                choice = spec.default()
                if spec.searched:
                    search_dir = run_dir / "checkpoints" / "search"
                    fold_list = folds(rows, exp.split_key[rows], spec.val_folds, seed=cfg.data.split_seed)
                    acc = np.full((len(fold_list), len(spec.cells), len(spec.steps)), np.nan)
                    for fi, (fit_rows, val_rows) in enumerate(fold_list):
                        for ci, (lr, pull) in enumerate(spec.cells):
                            cell = Choice(lr, pull, spec.steps[-1])
                            got = train_one(fit_rows, m, g, seed, cell, search_dir, fi, val_rows)[3]
                            acc[fi, ci] = [got.get(s, np.nan) for s in spec.steps]
                    choice = choose(spec, acc)
                    rmtree_inside(search_dir, run_dir)
                out_dir = run_dir / "checkpoints" / key
                model, n_pairs, wsum, _, info = train_one(rows, m, g, seed, choice, out_dir, "final", job=key, fp=fp)
                margins[(g, m, seed)] = test_margins(model)
                used[(g, m, seed)] = PairsUsed(n_pairs, wsum)
                grid["choices"].setdefault(g, {}).setdefault(m, {})[str(seed)] = choice.record()
                curves[(g, m, seed)] = curve_of(info["log_history"])
                rec = {"job": key, "fingerprint": fp, "margins": margins[(g, m, seed)].tolist(), "pairs": n_pairs,
                       "weight_sum": wsum, "choice": choice.record(), **info}
                if m == "scpo" and seed == seeds[0] and save_models:
                    sub = MODE_FOLDERS[tc.mode]
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
                rmtree_inside(out_dir, run_dir)
                point("job")
    return FitResult(margins=margins, used=used, grid=grid, models=models, curves=curves)
