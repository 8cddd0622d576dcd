"""Interruptions: SIGKILL at named points (scoring, training, report), then the same command again.

The process kills itself at a named point (``SCPO_KILL_AT``, :func:`scpo.instrument.point`),
not on a timer, so the tests are deterministic. Each resumed run must end with the same results as
an uninterrupted one, having done strictly less work, counted in the run's work log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from scpo.names import path_component
from scpo.rundir import RunLock, work_summary

KILLED = -signal.SIGKILL
COMPARED = ("data", "global_model", "selection", "methods", "seeds", "mode", "grid", "metrics", "summary")
"""Parts of results.json an interrupted and an uninterrupted run must agree on (all but timings
and the scoring/cache counters, which differ by design)."""

TINY = ["--quiet", "--synthetic-preset", "tiny", "--methods", "global,full,scpo", "--val-folds", "1",
        "--global-steps", "200", "--plots", "false"]
HEAD = [*TINY, "--learning-rates", "3e-3", "--steps", "20", "--pulls", "0", "--score-batch-size", "2", "--max-length", "48"]
FULL = [*TINY, "--mode", "full", "--steps", "2", "--batch-size", "4", "--max-length", "48", "--learning-rates", "1e-4",
        "--pulls", "0", "--groups", "group-c", "--save-steps", "1"]


def fresh_run(args: list[str], out: Path, cache: Path) -> dict:
    """The uninterrupted reference run, in this process (the same code path as the CLI)."""
    from scpo.cli import build_parser
    from scpo.cli.common import config_from_args
    from scpo.pipeline import run

    cfg = config_from_args(build_parser().parse_args(["run", *args, "--output-dir", str(out), "--cache-dir", str(cache)]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    return results(out)


def scpo(args: list[str], out: Path, cache: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
    # one intra-op thread, here and in the reference run: the same kernels, and fast on a busy CPU
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("SCPO_KILL_AT", None)
    if kill_at:
        env["SCPO_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "scpo", "run", *args, "--output-dir", str(out), "--cache-dir", str(cache)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def assert_same_results(a: dict, b: dict) -> None:
    for key in COMPARED:
        assert json.dumps(a.get(key), sort_keys=True) == json.dumps(b.get(key), sort_keys=True), key


def counts(attempt: dict, kind: str) -> int:
    return attempt["counts"].get(kind, 0)


def test_head_mode_kill_during_scoring_and_report_resumes(tmp_path):
    """Head mode (the default): kill after the first cache shard, then while writing the report."""
    a = fresh_run(HEAD, tmp_path / "fresh", tmp_path / "cache-fresh")

    out, cache = tmp_path / "run", tmp_path / "cache"
    k1 = scpo(HEAD, out, cache, kill_at="scoring")  # after the first cache shard (20 batches)
    assert k1.returncode == KILLED, k1.stderr[-2000:]
    assert list((cache / "features").glob("*/shard-*.npz")), "the shard written before the kill is kept"
    k2 = scpo(HEAD, out, cache, kill_at="report")
    assert k2.returncode == KILLED, k2.stderr[-2000:]
    assert not (out / "results.json").exists()
    done = scpo(HEAD, out, cache)
    assert done.returncode == 0, done.stderr[-2000:]

    b = results(out)
    assert_same_results(a, b)  # bit-identical: the same batches are computed, from the cache or not
    assert_same_heads(tmp_path / "fresh", out)

    n_fresh = a["scoring"]["forward_passes"]
    a1, a2, a3 = work_summary(out)
    assert [x["finished"] for x in (a1, a2, a3)] == [False, False, True]
    assert counts(a1, "scoring_forward_passes") == 20
    assert 0 < counts(a2, "scoring_forward_passes") < n_fresh
    # nothing computed twice: the kill came right after a shard was written
    assert counts(a1, "scoring_forward_passes") + counts(a2, "scoring_forward_passes") == n_fresh
    assert b["scoring"]["forward_passes"] == counts(a3, "scoring_forward_passes") == 0
    assert b["scoring"]["cached"] == b["scoring"]["distinct"] == a["scoring"]["computed"]


def assert_same_heads(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    ha, hb = load_file(str(a / "models" / "heads.safetensors")), load_file(str(b / "models" / "heads.safetensors"))
    assert ha.keys() == hb.keys()
    for k in ha:
        assert ha[k].numpy().tobytes() == hb[k].numpy().tobytes(), k


def test_full_mode_kill_during_training_resumes_from_the_checkpoint(tmp_path):
    """Full fine-tuning (Trainer), one group, two trained jobs (full, scpo) of 2 steps, a checkpoint a step.

    Kill 1 at the 2nd checkpoint: ``full``'s last step is saved, its record is not written.
    Kill 2 at the 1st checkpoint of that run: ``full`` was finished from its final checkpoint
    (no step run), ``scpo`` is at its step-1 checkpoint. The third run skips ``full`` and resumes
    ``scpo`` at step 1.
    """
    a = fresh_run(FULL, tmp_path / "fresh", tmp_path / "cache-fresh")
    (fresh_work,) = work_summary(tmp_path / "fresh")
    steps_fresh = counts(fresh_work, "training_steps")
    assert steps_fresh == 4

    out, cache = tmp_path / "run", tmp_path / "cache"
    gc = path_component("group-c")  # job names carry the group's safe encoding
    full_job, scpo_job = out / "jobs" / f"{gc}__full__seed0.json", out / "jobs" / f"{gc}__scpo__seed0.json"
    k1 = scpo(FULL, out, cache, kill_at="training:2")
    assert k1.returncode == KILLED, k1.stderr[-2000:]
    assert (out / "checkpoints" / f"{gc}__full__seed0" / "checkpoint-2").is_dir() and not full_job.exists()

    k2 = scpo(FULL, out, cache, kill_at="training:1")
    assert k2.returncode == KILLED, k2.stderr[-2000:]
    assert full_job.exists() and not scpo_job.exists()
    assert (out / "checkpoints" / f"{gc}__scpo__seed0" / "checkpoint-1").is_dir()

    done = scpo(FULL, out, cache)
    assert done.returncode == 0, done.stderr[-2000:]
    a1, a2, a3 = work_summary(out)
    assert [x["finished"] for x in (a1, a2, a3)] == [False, False, True]
    assert a2["jobs"][f"{gc}__full__seed0"] == {"kind": "job_trained", "steps_run": 0, "resumed_from_step": 2}
    assert a3["jobs"][f"{gc}__full__seed0"]["kind"] == "job_skipped"
    assert a3["jobs"][f"{gc}__scpo__seed0"] == {"kind": "job_trained", "steps_run": 1, "resumed_from_step": 1}
    assert [counts(x, "training_steps") for x in (a1, a2, a3)] == [2, 1, 1]  # none lost, none repeated
    for x in (a2, a3):
        assert counts(x, "training_steps") < steps_fresh
        assert counts(x, "scoring_forward_passes") == 0 < counts(fresh_work, "scoring_forward_passes")
    assert counts(a3, "eval_forward_passes") < counts(fresh_work, "eval_forward_passes")

    b = results(out)
    assert_same_results(a, b)
    for job in (f"{path_component('group-c')}__full__seed0", f"{path_component('group-c')}__scpo__seed0"):
        ma = np.array(json.loads((tmp_path / "fresh" / "jobs" / f"{job}.json").read_text())["margins"])
        mb = np.array(json.loads((out / "jobs" / f"{job}.json").read_text())["margins"])
        assert np.max(np.abs(ma - mb)) <= 1e-5, job  # the stated full-mode tolerance (measured: 0.0)
    assert (out / "models" / "groups" / path_component("group-c") / "config.json").exists()
    assert not list((out / "checkpoints").glob("*/checkpoint-*"))
    with RunLock(out):  # the killed runs' lock died with them
        pass


def test_a_locked_run_directory_is_refused(tmp_path, capsys):
    from scpo.cli import main

    out = tmp_path / "run"
    with RunLock(out):
        code = main(["run", *HEAD, "--output-dir", str(out), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "in use by another scpo process" in err and len(err.splitlines()) == 1
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("point", ["nowhere", ""])
def test_kill_points_do_nothing_unless_named(point, monkeypatch):
    from scpo.instrument import point as maybe_kill

    monkeypatch.setenv("SCPO_KILL_AT", point)
    for name in ("scoring", "training", "job", "report"):
        maybe_kill(name)  # still alive
