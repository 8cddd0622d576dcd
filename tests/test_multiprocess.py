"""Two-process CPU training under ``accelerate launch``: disjoint batches, identical weights, same metrics.

Runs ``tests/mp_train_script.py`` (a few SCPOTrainer steps of scpo's tiny BERT on the synthetic
``tiny`` preset; the model has dropout, the trainer's default ``disable_dropout`` turns it off) once
under ``accelerate launch --config_file configs/accelerate/cpu_2proc.yaml`` (2 processes; without
``ACCELERATE_USE_CPU``: scpo asks for the CPU/gloo mode itself) and once as one plain process, then checks:

* every step, the two ranks trained on disjoint pairs (and together on the whole global batch);
* both ranks ended with bit-identical trainable weights (DDP keeps the replicas in sync);
* 2 processes train on the global batches of 1 (scpo's seeded ``PairSampler``, length-grouped or
  not), and give the metrics of 1: the
  mean of the ranks' losses equals the single process's loss within 1e-5 and the trained model's
  margins on the training pairs agree within 1e-4 (absolute; the margins are ~0.1) — full and LoRA;
* those margins (``forward_rewards``) are computed half by each rank and reach both;
* the global model's scoring (``encode_features``): each rank computes half of the batches, both end
  with every feature, equal to one process's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mp_train_script.py"
CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
LOSS_TOL = 1e-5
MARGIN_TOL = 1e-4


def _accelerate() -> list[str] | None:
    exe = Path(sys.executable).with_name("accelerate")
    if exe.exists():
        return [str(exe)]
    if shutil.which("accelerate"):
        return ["accelerate"]
    return None


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # no ACCELERATE_USE_CPU: without a GPU, training_arguments asks the Trainer for use_cpu (gloo) itself
    env = {k: v for k, v in env.items() if k != "ACCELERATE_USE_CPU"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.glob("rank*.json"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    launcher = _accelerate()
    if launcher is None:
        pytest.skip("accelerate's launcher is not installed")
    base = tmp_path_factory.mktemp("mp")
    two, one = base / "two", base / "one"
    cmd = launcher + ["launch", "--config_file", str(CONFIG), "--main_process_port", str(_free_port()), str(SCRIPT),
                      "--out", str(two), "--variants", "full-grouped,full-random,lora-random,score"]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(one), "--variants", "full-grouped,full-random,lora-random,score"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    return two, one


@pytest.mark.parametrize("variant", ["full-grouped", "full-random", "lora-random"])
def test_two_ranks_see_disjoint_batches_and_end_with_identical_weights(runs, variant):
    two, _ = runs
    recs = _load(two / variant)
    assert [r["rank"] for r in recs] == [0, 1]
    assert all(r["world_size"] == 2 and r["per_device_batch"] == 4 for r in recs)
    steps = len(recs[0]["seen"])
    assert steps == 3 and len(recs[1]["seen"]) == steps
    for s in range(steps):
        a, b = set(recs[0]["seen"][s]), set(recs[1]["seen"][s])
        assert len(a) == len(b) == 4
        assert not a & b, f"step {s}: both ranks trained on {sorted(a & b)}"
    assert recs[0]["weights_sha256"] == recs[1]["weights_sha256"]


@pytest.mark.parametrize("variant", ["full-grouped", "full-random", "lora-random"])
def test_two_processes_give_the_metrics_of_one(runs, variant):
    two, one = runs
    r0, r1 = _load(two / variant)
    (single,) = _load(one / variant)
    assert single["world_size"] == 1 and single["per_device_batch"] == 8
    # the same global batches: rank 0's and rank 1's pairs of a step are the single process's batch
    for s, batch in enumerate(single["seen"]):
        assert sorted(r0["seen"][s] + r1["seen"][s]) == sorted(batch)
    # DDP averages the ranks' gradients: the mean of their losses is the single process's loss
    mean_loss = (np.array(r0["losses"]) + np.array(r1["losses"])) / 2
    np.testing.assert_allclose(mean_loss, single["losses"], atol=LOSS_TOL, rtol=0)
    np.testing.assert_allclose(r0["margins"], single["margins"], atol=MARGIN_TOL, rtol=0)
    # rewards computed by the two ranks in turn (scpo.parallel.map_batches) reach both ranks alike
    assert r0["margins"] == r1["margins"]
    assert r0["eval_forward_passes"] + r1["eval_forward_passes"] == single["eval_forward_passes"]
    assert r0["eval_forward_passes"] == r1["eval_forward_passes"] > 0
    # and training moved the model: the comparison is not between two untouched models
    assert single["losses"][0] != single["losses"][-1]


def test_two_processes_share_the_scoring_and_get_the_features_of_one(runs):
    two, one = runs
    r0, r1 = _load(two / "score")
    (single,) = _load(one / "score")
    assert r0["computed"] == r1["computed"] == single["computed"] > 0
    # every batch computed once: half by each rank, none by both
    assert r0["forward_passes"] + r1["forward_passes"] == single["forward_passes"]
    assert abs(r0["forward_passes"] - r1["forward_passes"]) <= 1
    # both ranks end with every feature, the same as one process's
    assert r0["features_sha256"] == r1["features_sha256"]
    np.testing.assert_allclose(np.load(two / "score" / "features.npy"), np.load(one / "score" / "features.npy"),
                               atol=1e-6, rtol=0)
