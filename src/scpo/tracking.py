"""Experiment trackers (``--report-to``) and the names of the training records in a run directory.

``--report-to`` takes what ``TrainingArguments(report_to=...)`` takes: ``none`` (the default), ``all``
(every installed tracker) or a comma-separated list of names. It is checked before a run starts
(:func:`check_report_to`): a name neither transformers nor accelerate knows, or a tracker whose package
is not installed, is a :class:`~scpo.errors.ScpoError` (exit 2 on the CLI) saying what to ``pip install``
-- never silently ignored.

* **full / LoRA** mode: each final Trainer job reports through the Trainer's own integrations
  (``TrainingArguments.report_to``); TensorBoard writes into ``WORK_DIR/tensorboard/<group>/<method>/seed<seed>/``
  (:func:`fit_log_dir`) instead of the job's temporary output folder (which is deleted when the job ends).
* **head** mode has no Trainer: every final fit's curve (:attr:`scpo.experiment.FitResult.curves`) is sent
  through ``accelerate``'s trackers (:func:`log_head_curves`), TensorBoard into the same folders.

The grid search's fold fits are not reported (one tracker run per fold and cell would drown the rest).
Learning-curve fits (``--curve-fractions``) are final fits of their own in full/LoRA mode and report
under their work folder (``RUN_DIR/curves/<fraction>/tensorboard/``); head mode reports the main fits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ScpoError
from .names import path_component

__all__ = ["PIP_NAMES", "TENSORBOARD_DIR", "check_report_to", "fit_log_dir", "fit_run_name", "log_head_curves",
           "parse_report_to"]

TENSORBOARD_DIR = "tensorboard"
"""Folder of a run (or split's work) directory that holds TensorBoard's event files."""

PIP_NAMES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
             "clearml": "clearml", "dvclive": "dvclive", "aim": "aim", "swanlab": "swanlab", "trackio": "trackio",
             "neptune": "neptune", "azure_ml": "azureml-core", "codecarbon": "codecarbon", "dagshub": "dagshub",
             "flyte": "flytekit", "kubeflow": "kubeflow"}
"""What to ``pip install`` for each tracker name."""


def parse_report_to(value: str | list[str] | None) -> list[str]:
    """``"none"``/``None`` -> ``[]``; ``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (``"all"`` kept as is)."""
    if value is None:
        return []
    parts = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [p.strip().lower() for p in parts if p.strip()]
    return [n for n in dict.fromkeys(names) if n != "none"]


def _known_and_available(mode: str) -> tuple[list[str], list[str], str]:
    if mode == "head":
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        return list(LOGGER_TYPE_TO_CLASS), [str(getattr(t, "value", t)) for t in get_available_trackers()], \
            "head mode reports through accelerate's trackers"
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    return list(INTEGRATION_TO_CALLBACK), list(get_available_reporting_integrations()), \
        f"{mode} mode reports through the transformers Trainer's integrations"


def check_report_to(value: str | list[str] | None, mode: str) -> list[str]:
    """The trackers ``--report-to value`` names, each known and installed for ``mode``; else a ScpoError.

    ``all`` is every installed tracker (possibly none). The message of an error names the tracker, why
    (unknown here, or not installed) and what to install.
    """
    names = parse_report_to(value)
    if not names:
        return []
    known, available, how = _known_and_available(mode)
    if "all" in names:
        return [n for n in available if n in known]
    for n in names:
        if n not in known:
            raise ScpoError(f"--report-to {n}: not a tracker scpo can report to ({how}: {', '.join(known)})")
        if n not in available:
            pkg = PIP_NAMES.get(n, n)
            extra = " (or pip install 'scpo[tensorboard]')" if n == "tensorboard" else ""
            raise ScpoError(f"--report-to {n}: {n} is not installed; pip install {pkg}{extra}, or drop it from --report-to")
    return names


def fit_run_name(group: str, method: str, seed: int) -> str:
    """A fit's name as a relative path, ``<group>/<method>/seed<seed>``; the group name made safe
    (:func:`scpo.names.path_component`): it comes from the data."""
    return f"{path_component(group)}/{method}/seed{int(seed)}"


def fit_log_dir(work_dir: str | Path, group: str, method: str, seed: int) -> Path:
    """Where TensorBoard's event files of one fit go: ``WORK_DIR/tensorboard/<group>/<method>/seed<seed>``."""
    return Path(work_dir) / TENSORBOARD_DIR / fit_run_name(group, method, seed)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def log_head_curves(work_dir: str | Path, curves: Mapping[tuple[str, str, int], Mapping[str, Any]],
                    trackers: list[str]) -> int:
    """Send every head-mode fit's curve through accelerate's trackers; returns the fits sent.

    One tracker run per fit, as the Trainer modes have one per job: TensorBoard's in
    :func:`fit_log_dir`, with scalars ``train/loss`` and ``train/grad_norm`` at each recorded step
    (Adam) or iteration (Newton); other trackers get the run name ``scpo-<group>-<method>-seed<seed>``.
    """
    if not trackers:
        return 0
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    sent = 0
    for (g, m, seed), c in curves.items():
        records = c.get("records") or []
        if not records:
            continue
        for name in trackers:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if getattr(cls, "requires_logging_directory", False):
                tracker = cls(fit_run_name(g, m, seed), str(Path(work_dir) / TENSORBOARD_DIR))
            else:
                tracker = cls(f"scpo-{path_component(g)}-{m}-seed{seed}")
            if hasattr(tracker, "start"):  # accelerate >= 1.3 starts a tracker explicitly
                tracker.start()
            for r in records:
                step = int(r.get("step", r.get("iteration", 0)))
                values = {f"train/{k}": float(v) for k, v in r.items() if k not in ("step", "iteration") and _finite(v)}
                if values:
                    tracker.log(values, step=step)
            tracker.finish()
        sent += 1
    return sent
