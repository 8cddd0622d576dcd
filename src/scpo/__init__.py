"""scpo: Steerable Cultural Preference Optimization of reward models.

Turn one global reward model into one reward model per community (country, region, any group),
each faithful to what that community prefers. The pipeline's steps are modules named after them:
:mod:`scpo.load` -> :mod:`scpo.model` -> :mod:`scpo.score` -> :mod:`scpo.select` ->
:mod:`scpo.train` -> :mod:`scpo.evaluate` -> :mod:`scpo.report`; :func:`scpo.run` runs them all.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import DataConfig, ModelConfig, OutputConfig, RunConfig, SelectConfig, TrainConfig
from .errors import ConfigError, InputError, ScpoError
from .load import PreferenceData, load_data
from .pipeline import Experiment, prepare, run
from .select import keep_mask, scpo_weights, select_pairs, weighted_bt_loss
from .steer import SteerableRewardModel

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
    "TrainConfig",
    "__version__",
    "keep_mask",
    "load_data",
    "prepare",
    "run",
    "scpo_weights",
    "select_pairs",
    "weighted_bt_loss",
]
