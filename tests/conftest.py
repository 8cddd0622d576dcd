"""Shared fixtures: offline Hub, the packaged encoder loaded once, a tiny synthetic experiment."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def packaged_rm():
    """The packaged all-MiniLM-L6-v2 reward model (zero score layer), loaded once per session."""
    from scpo.config import ModelConfig
    from scpo.model import load_reward_model

    return load_reward_model(ModelConfig(max_length=64))


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory):
    """The tiny synthetic preset, prepared (split, global head trained, features cached)."""
    from scpo.config import RunConfig
    from scpo.experiment import prepare

    root = tmp_path_factory.mktemp("tiny")
    cfg = RunConfig().replace(
        synthetic_preset="tiny", cache_dir=str(root / "cache"), output_dir=str(root / "run"), steps=[20, 60]
    )
    return prepare(cfg, progress=False)
