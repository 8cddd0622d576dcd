"""scpo: Steerable Cultural Preference Optimization of reward models.

Turn one global reward model into one reward model per community (country, region, any group),
each faithful to what that community prefers. The pipeline's steps are modules named after them:
:mod:`scpo.load` -> :mod:`scpo.experiment` (model, scoring, margins) -> :mod:`scpo.selection` ->
:mod:`scpo.fitting` -> :mod:`scpo.evaluate` -> :mod:`scpo.report`; :func:`scpo.run` runs them all,
:class:`scpo.SteerableRewardModel` uses what they made.

Names are exported lazily (PEP 562): ``import scpo`` loads nothing heavy, and ``import scpo.serve``
loads the steering and serving code without the training code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ConfigError": "errors", "InputError": "errors", "ScpoError": "errors",
    "DataConfig": "config", "ModelConfig": "config", "OutputConfig": "config", "RunConfig": "config",
    "SelectConfig": "config", "StudyConfig": "config", "TrainConfig": "config", "TrainerConfig": "config",
    "PreferenceData": "load", "load_data": "load",
    "Experiment": "experiment", "prepare": "experiment",
    "fit": "fitting",
    "run": "pipeline",
    "keep_mask": "selection", "scpo_weights": "selection", "select_pairs": "selection", "weighted_bt_loss": "selection",
    "SteerableRewardModel": "steer",
}
"""Public name -> the module (under ``scpo``) that defines it."""

__all__ = [
    "ConfigError",
    "DataConfig",
    "Experiment",
    "InputError",
    "ModelConfig",
    "OutputConfig",
    "PreferenceData",
    "RunConfig",
    "ScpoError",
    "SelectConfig",
    "SteerableRewardModel",
    "StudyConfig",
    "TrainConfig",
    "TrainerConfig",
    "__version__",
    "fit",
    "keep_mask",
    "load_data",
    "prepare",
    "run",
    "scpo_weights",
    "select_pairs",
    "weighted_bt_loss",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .config import (
        DataConfig,
        ModelConfig,
        OutputConfig,
        RunConfig,
        SelectConfig,
        StudyConfig,
        TrainConfig,
        TrainerConfig,
    )
    from .errors import ConfigError, InputError, ScpoError
    from .experiment import Experiment, prepare
    from .fitting import fit
    from .load import PreferenceData, load_data
    from .pipeline import run
    from .selection import keep_mask, scpo_weights, select_pairs, weighted_bt_loss
    from .steer import SteerableRewardModel
