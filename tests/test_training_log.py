"""Training you can watch: every fit's curve in ``training_log.json``, ``--report-to`` in every mode
(TensorBoard event files read back with TensorBoard's own reader), a clear error for a missing tracker."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo.cli import main
from scpo.heads import HeadJob, train_heads, train_heads_logged
from scpo.names import path_component

TINY = ["--quiet", "--synthetic-preset", "tiny", "--methods", "global,full,scpo", "--val-folds", "1",
        "--global-steps", "50", "--learning-rates", "3e-3", "--pulls", "0", "--max-length", "48"]
FULL = [*TINY, "--mode", "full", "--steps", "12", "--batch-size", "4", "--learning-rates", "1e-4",
        "--groups", "group-c", "--methods", "global,scpo", "--save-steps", "0", "--plots", "false"]


def _run(out: Path, cache: Path, *args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["run", *args, "--output-dir", str(out), "--cache-dir", str(cache)])


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` in the TensorBoard event files under ``log_dir``, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    assert tag in acc.Tags()["scalars"], (log_dir, acc.Tags())
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_logged_head_training_is_the_same_training_and_logs_its_objective():
    """train_heads_logged: weights bit for bit those of train_heads; the first step's objective at
    w = 0 is log 2 (every margin 0); the loss falls; a job without pairs logs NaN."""
    g = torch.Generator().manual_seed(0)
    diffs = torch.randn(200, 8, generator=g) + 0.5
    job = HeadJob(train_idx=np.arange(150), weights=np.ones(150), init=np.zeros(8), anchor=np.zeros(8),
                  lr=0.05, pull=0.0, stream=3)
    empty = HeadJob(train_idx=np.zeros(0, np.int64), weights=np.zeros(0), init=np.zeros(8), anchor=np.zeros(8),
                    lr=0.05, pull=0.0, stream=4)
    plain = train_heads(diffs, [job, empty], [40], batch_size=16)
    snaps, log = train_heads_logged(diffs, [job, empty], [40], batch_size=16, log_every=1)
    assert np.array_equal(plain, snaps)
    assert log.steps.tolist() == list(range(1, 41))
    assert log.loss[0, 0] == pytest.approx(math.log(2), abs=1e-6)  # float32 margins
    assert log.loss[0, -5:].mean() < 0.8 * math.log(2)
    assert np.all(np.isfinite(log.grad_norm[0])) and log.grad_norm[0, -1] < log.grad_norm[0, 0]
    every = train_heads_logged(diffs, [job], [40], batch_size=16, log_every=15)[1]
    assert np.isnan(log.loss[1]).all() and np.isnan(log.grad_norm[1]).all()
    assert every.steps.tolist() == [15, 30, 40]  # and the last step
    assert every.loss[0, 0] == pytest.approx(log.loss[0, :15].mean(), rel=1e-6)  # the window's mean (float32 sums)
    assert log.records(0)[0] == {"step": 1, "loss": log.loss[0, 0], "grad_norm": log.grad_norm[0, 0]}


def test_head_mode_writes_the_curves_and_tensorboard_event_files(tmp_path):
    """The default mode: training_log.json holds one curve per (group, trained method, seed), the
    report has a Training section and plot, and --report-to tensorboard writes event files with the
    same points."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _run(out, cache, *TINY, "--head-solver", "adam", "--steps", "40", "--seeds", "0,1", "--report-to", "tensorboard") == 0
    log = json.loads((out / "training_log.json").read_text())
    res = json.loads((out / "results.json").read_text())
    groups = res["data"]["groups"]
    assert log["mode"] == "head" and log["solver"] == "adam"
    keys = {(f["group"], f["method"], f["seed"]) for f in log["fits"]}
    assert keys == {(g, m, s) for g in groups for m in ("full", "scpo") for s in (0, 1)}
    fit = next(f for f in log["fits"] if f["method"] == "full")
    assert fit["kind"] == "adam_steps" and [r["step"] for r in fit["records"]][-1] == 40
    assert all(r["loss"] > 0 and r["grad_norm"] >= 0 for r in fit["records"])
    assert res["training"]["fits"] == len(log["fits"]) and res["training"]["report_to"] == ["tensorboard"]
    assert "plots/training.png" in res["plots"] and (out / "plots" / "training.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Training" in report and "plots/training.png" in report
    tb = out / "tensorboard" / path_component(fit["group"]) / "full" / f"seed{fit['seed']}"
    got = _scalars(tb, "train/loss")
    assert [s for s, _ in got] == [r["step"] for r in fit["records"]]
    assert np.allclose([v for _, v in got], [r["loss"] for r in fit["records"]], rtol=1e-6)


def test_newton_head_fits_record_every_iteration(tiny_experiment):
    import dataclasses

    from scpo.fitting import fit

    exp = tiny_experiment  # shared: fit a shallow copy with the Newton solver's config
    exp = dataclasses.replace(exp, cfg=exp.cfg.replace(head_solver="newton", val_folds=1))
    res = fit(exp, ["global", "scpo"], [0], progress=False)
    assert set(res.curves) == {(g, "scpo", 0) for g in exp.groups}
    for key, c in res.curves.items():
        sol = res.grid["choices"][key[0]]["scpo"]["0"]["solver"]
        assert c["kind"] == "newton_iterations"
        assert [r["iteration"] for r in c["records"]] == list(range(sol["iterations"] + 1))
        assert c["records"][-1]["loss"] == pytest.approx(sol["loss"]) and c["records"][-1]["grad_norm"] == pytest.approx(sol["grad_norm"])
        assert c["records"][-1]["loss"] <= c["records"][0]["loss"]


def test_full_mode_keeps_the_trainer_log_history_and_writes_tensorboard(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _run(out, cache, *FULL, "--report-to", "tensorboard") == 0
    log = json.loads((out / "training_log.json").read_text())
    (fit,) = [f for f in log["fits"] if f["method"] == "scpo"]
    assert log["solver"] == "trainer" and fit["kind"] == "trainer_log_history" and fit["group"] == "group-c"
    steps = [r["step"] for r in fit["records"]]
    assert steps == list(range(1, 13))  # a 12-step job logs every step (at least ~10 points a job)
    assert all({"loss", "grad_norm", "learning_rate"} <= set(r) for r in fit["records"])
    assert fit["summary"]["train_loss"] > 0
    job = json.loads((out / "jobs" / f"{path_component('group-c')}__scpo__seed0.json").read_text())
    assert [e["step"] for e in job["log_history"] if "loss" in e] == steps  # a re-run that skips the job keeps it
    got = _scalars(out / "tensorboard" / path_component("group-c") / "scpo" / "seed0", "train/loss")
    assert [s for s, _ in got] == steps
    assert np.allclose([v for _, v in got], [r["loss"] for r in fit["records"]], rtol=1e-5)


@pytest.mark.parametrize("mode", ["head", "full"])
def test_a_tracker_that_is_not_installed_or_unknown_is_a_clear_error(tmp_path, capsys, mode):
    pytest.importorskip("tensorboard")
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    out = tmp_path / "run"
    assert _run(out, tmp_path / "cache", *TINY, "--mode", mode, "--report-to", "tensorboard,wandb") == 2
    err = capsys.readouterr().err
    assert "--report-to wandb" in err and "pip install wandb" in err
    assert not (out / "results.json").exists() and not (tmp_path / "cache").exists()  # nothing ran
    assert _run(out, tmp_path / "cache", *TINY, "--mode", mode, "--report-to", "tensorbored") == 2
    err = capsys.readouterr().err
    assert "--report-to tensorbored: not a tracker" in err and "tensorboard" in err
