"""Step 7 of the pipeline: write the run directory (the markdown is :mod:`scpo.report_md`, the plots :mod:`scpo.plots`).

* ``config.yaml`` — the resolved config;
* ``results.json`` — every number (schema: ``docs/results-schema.md``); strict JSON: NaN is
  written ``null``, infinity the string ``"inf"``;
* ``full_report.json``, ``partial_report.json``, ``edited_ratios.json`` — the reference
  implementation's files: per group and ``avg``, accuracy of the global model (``before``) and of
  SCPO (``after``) on all test pairs (full) and on the distinctive ones (partial), and the share
  of training pairs the filter keeps (edited ratios);
* ``report.md`` — the tables a person reads; ``plots/*.png``: accuracy per group and method with
  CI bars, learning curves, histograms of p and w per group, the cross-group heatmap, the
  tau x beta heatmap (when the run has those);
* ``training_log.json`` — every final fit's training curve (head mode: the Adam steps' loss and
  gradient norm, or the Newton solver's iterations; full/LoRA: the Trainer's log history), by
  group, method, seed and split seed (:func:`training_log`; schema: ``docs/results-schema.md``);
  ``results.json``'s ``training`` holds its summary and ``plots/training.png`` draws it;
* ``models/`` — the artifact: the global model and the group models (:mod:`scpo.artifact`).

Every file is written atomically (temporary name, then rename). ``scpo report RUN_DIR`` rebuilds
report, plots and reference files from ``results.json`` alone (:func:`rebuild`).
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
import transformers

from . import __version__
from .artifact import read_json, save_models
from .config import RunConfig
from .errors import ScpoError
from .instrument import point
from .plots import make_plots
from .report_md import as_float, build_report
from .rundir import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # annotations only: the report reads results, the experiment is only passed on to the artifact writer
    from .experiment import Experiment

__all__ = ["TRAINING_LOG", "rebuild", "reference_files", "strict_json", "training_log", "training_summary", "versions",
           "write_run"]

TRAINING_LOG = "training_log.json"
"""File name of the training curves inside a run directory."""


VERSIONED = ("numpy", "tokenizers", "safetensors", "huggingface_hub", "peft", "accelerate", "pyarrow")
"""Further installed packages whose versions a run records (when installed), read from their metadata."""


def versions() -> dict[str, str]:
    """Versions of scpo, Python and the libraries that determine the numbers (those installed of :data:`VERSIONED` too)."""
    out = {"scpo": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "datasets": datasets.__version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def strict_json(obj: Any) -> Any:
    """A copy of ``obj`` that is strict JSON: NaN -> ``None``, +-inf -> ``"inf"``/``"-inf"``, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [strict_json(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def reference_files(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The reference implementation's three report files, from results."""
    metrics, sel = results["metrics"], results["selection"]
    groups = results["data"]["groups"]
    after = "scpo" if "scpo" in results["methods"] else results["methods"][-1]
    full, partial, ratios = {}, {}, {}
    for g in groups:
        full[g] = {"before": as_float(metrics[g]["global"]["all"]["mean"]) if "global" in metrics[g] else None,
                   "after": as_float(metrics[g][after]["all"]["mean"])}
        partial[g] = {"before": as_float(metrics[g]["global"]["distinctive"]["mean"]) if "global" in metrics[g] else None,
                      "after": as_float(metrics[g][after]["distinctive"]["mean"])}
        ratios[g] = as_float(sel[g]["kept_share"])

    def avg(d: dict) -> Any:
        vals = list(d.values())
        if isinstance(vals[0], dict):
            out = {}
            for k in vals[0]:
                xs = [v[k] for v in vals if v[k] is not None and not math.isnan(v[k])]
                out[k] = float(np.mean(xs)) if xs else None
            return out
        return float(np.nanmean(vals))

    full["avg"], partial["avg"], ratios["avg"] = avg(full), avg(partial), avg(ratios)
    return {name: strict_json(obj) for name, obj in
            {"full_report.json": full, "partial_report.json": partial, "edited_ratios.json": ratios}.items()}


def training_log(cfg: RunConfig, splits: list[tuple[int, dict[Any, Any]]]) -> dict[str, Any]:
    """``training_log.json``: every final fit's curve, from ``(split_seed, FitResult.curves)`` per split.

    One entry per (split seed, group, method, seed) in ``fits``: ``kind`` (``adam_steps``,
    ``newton_iterations``, ``pooler_adam_steps`` or ``trainer_log_history``), ``records`` (``step`` or ``iteration``, ``loss``,
    ``grad_norm`` and, from the Trainer, ``learning_rate`` and ``epoch``) and the fit's other fields
    (its learning rate and pull, the solver's convergence, the Trainer's end-of-training summary).
    """
    tc = cfg.train
    fits = []
    for split_seed, curves in splits:
        for (g, m, seed), c in curves.items():
            fits.append({"split_seed": int(split_seed), "group": g, "method": m, "seed": int(seed), **c})
    return {"scpo_training_log_version": 1, "mode": tc.mode,
            "solver": ("pooler" if tc.head_layers == "pooler" else tc.head_solver) if tc.mode == "head" else "trainer", "fits": strict_json(fits)}


SHOWN_GROUPS = 8
"""``results.json``'s ``training.shown`` keeps at most this many groups' curves per method (the plot's)."""


def training_summary(log: dict[str, Any], trackers: list[str]) -> dict[str, Any]:
    """``results.json``'s ``training``: where the log is, per method the fits and median first/last loss,
    and ``shown``: the curves ``plots/training.png`` draws (the first split seed and training seed, at
    most :data:`SHOWN_GROUPS` groups per method), so the plot is redrawn from ``results.json`` alone."""
    per: dict[str, dict[str, list[float]]] = {}
    for f in log["fits"]:
        recs = [r for r in f["records"] if r.get("loss") is not None]
        d = per.setdefault(f["method"], {"first": [], "last": [], "points": []})
        if recs:
            d["first"].append(recs[0]["loss"])
            d["last"].append(recs[-1]["loss"])
            d["points"].append(len(recs))
    methods = {m: {"fits": len(d["points"]), "median_first_loss": float(np.median(d["first"])) if d["first"] else None,
                   "median_last_loss": float(np.median(d["last"])) if d["last"] else None,
                   "median_points": float(np.median(d["points"])) if d["points"] else None} for m, d in per.items()}
    kinds = sorted({f["kind"] for f in log["fits"]})
    drawn = [f for f in log["fits"] if f["records"]]
    shown = []
    if drawn:
        split0, seed0 = min(f["split_seed"] for f in drawn), min(f["seed"] for f in drawn)
        for m in dict.fromkeys(f["method"] for f in drawn):
            mine = [f for f in drawn if f["method"] == m and f["split_seed"] == split0 and f["seed"] == seed0]
            for f in mine[:SHOWN_GROUPS]:
                x = "iteration" if "iteration" in f["records"][0] else "step"
                shown.append({"group": f["group"], "method": m, "seed": seed0, "split_seed": split0, "x": x,
                              "steps": [r.get(x) for r in f["records"]], "loss": [r.get("loss") for r in f["records"]]})
    out: dict[str, Any] = {"log": TRAINING_LOG, "mode": log["mode"], "solver": log["solver"], "kinds": kinds,
                           "fits": len(log["fits"]), "methods": methods, "report_to": list(trackers), "shown": shown}
    if "tensorboard" in trackers:
        out["tensorboard_dir"] = "tensorboard"
    return out


def write_run(run_dir: str | Path, cfg: RunConfig, results: dict[str, Any], exp: Experiment | None = None,
              models: dict | None = None, training: dict[str, Any] | None = None) -> None:
    """Write config, results, reference files, training log, report, plots and models into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("versions", versions())
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if training is not None:
        atomic_write_json(run_dir / TRAINING_LOG, training)
    if models is not None and exp is not None and cfg.output.save_models:
        save_models(run_dir, exp, models, results)
    saved = strict_json(results)  # the report is built from exactly what results.json holds
    if cfg.output.plots:
        results["plots"] = saved["plots"] = make_plots(run_dir, saved)
    point("report")
    for name, obj in reference_files(saved).items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", build_report(saved))
    atomic_write_json(run_dir / "results.json", saved)  # last: its presence marks a finished run


def rebuild(run_dir: str | Path) -> Path:
    """``scpo report RUN_DIR``: rebuild report and plots from results.json, training nothing.

    A ``results.json`` that is not valid JSON, or not a results file (a truncated copy, another
    file's content), is a :class:`~scpo.errors.ScpoError` naming it; the report and reference files
    are built in memory before anything is written.
    """
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    results = read_json(path)
    try:
        if not isinstance(results, dict):
            raise TypeError(f"expected a JSON object, got {type(results).__name__}")
        refs = reference_files(results)
        build_report(results)  # every table builds before a plot or file is written
        results["plots"] = make_plots(run_dir, results)
        report = build_report(results)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ScpoError(f"{path}: not a results file of a finished scpo run ({what})".splitlines()[0]) from None
    for name, obj in refs.items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", report)
    return run_dir / "report.md"
