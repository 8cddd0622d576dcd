"""Run-level safety and reproducibility: atomic writes, the run lock, the work log, kill points,
the feature cache's checks, the Trainer jobs' resume rules, and identical numbers twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scpo import rundir as reliability
from scpo.errors import CacheCorruptWarning, RunLockedError
from scpo.rundir import (
    RunLock,
    atomic_write_json,
    atomic_write_text,
    log_work,
    remove_stale_temporaries,
    work_summary,
)
from scpo.score import FeatureCache


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread while these tests run (restored after): small models, and a busy CPU
    makes several threads far slower than one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ----------------------------------------------------------------------------------------------
# atomic writes


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "sub" / "results.json"
    atomic_write_json(p, {"a": np.float32(1.5), "b": np.arange(2), "c": Path("x")})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [0, 1], "c": "x"}
    atomic_write_text(p, "second")
    assert p.read_text() == "second"
    assert [q.name for q in p.parent.iterdir()] == ["results.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "report.md"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["report.md"]


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"shard-x.npz.tmp{dead.stdout.strip()}").write_bytes(b"half")
    (tmp_path / f"shard-y.npz.tmp{os.getpid()}").write_bytes(b"mine")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [q.name for q in tmp_path.iterdir()] == [f"shard-y.npz.tmp{os.getpid()}"]


# ----------------------------------------------------------------------------------------------
# the run lock and the work log


def test_run_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunLockedError, match=f"in use by another scpo process \\(pid {os.getpid()}\\)"):
            with RunLock(tmp_path / "run"):
                pass
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_run_lock_dies_with_a_killed_holder(tmp_path):
    code = (f"from scpo.instrument import point as maybe_kill\nfrom scpo.rundir import RunLock\n"
            f"with RunLock({str(tmp_path / 'run')!r}):\n    maybe_kill('report')\n")
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SCPO_KILL_AT": "report"})
    assert p.returncode == -9
    with RunLock(tmp_path / "run"):
        pass
    (killed, ok) = work_summary(tmp_path / "run")
    assert not killed["finished"] and ok["finished"]


def test_kill_point_fires_on_the_nth_hit_only(tmp_path):
    code = ("from scpo.instrument import point as maybe_kill\n"
            "for i in range(3):\n    maybe_kill('job'); maybe_kill('report'); print(i, flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SCPO_KILL_AT": "job:2"},
                       capture_output=True, text=True)
    assert p.returncode == -9 and p.stdout.split() == ["0"]


def test_work_log_counts_per_attempt_and_survives_a_torn_line(tmp_path):
    log_work("training_steps")  # outside a locked run: nothing written anywhere
    with RunLock(tmp_path):
        assert reliability.active_run_dir() == tmp_path
        log_work("scoring_forward_passes", 3)
        log_work("training_steps", job="g__scpo__seed0")
        log_work("job_resumed", n=0, job="g__scpo__seed0", from_step=2)
    assert reliability.active_run_dir() is None
    with open(tmp_path / "work.jsonl", "a") as f:
        f.write('{"attempt": "x", "kind": "train')  # a kill mid-write
    (a,) = work_summary(tmp_path)
    assert a["finished"] and a["counts"] == {"scoring_forward_passes": 3, "training_steps": 1}
    assert a["jobs"] == {"g__scpo__seed0": {"kind": "job_resumed", "from_step": 2}}


# ----------------------------------------------------------------------------------------------
# the feature cache never trusts a shard it cannot verify


def _cache_with_one_shard(tmp_path):
    c = FeatureCache(tmp_path, "k")
    c.put(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))
    (shard,) = list(c.dir.glob("shard-*.npz"))
    return c, shard


def test_cache_roundtrip_and_content_addressed_names(tmp_path):
    c, shard = _cache_with_one_shard(tmp_path)
    c.put(["a", "b"], np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32))  # same content: same shard
    assert len(list(c.dir.glob("shard-*.npz"))) == 1
    got = FeatureCache(tmp_path, "k").get(["a", "b", "z"])
    assert set(got) == {"a", "b"} and got["b"].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("damage", ["flip", "nan", "checksum-of-other", "shape"])
def test_cache_rejects_damaged_shards(tmp_path, damage):
    import hashlib
    import io

    c, shard = _cache_with_one_shard(tmp_path)
    sig = shard.with_suffix(".sha256")
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[-30] ^= 0xFF
        shard.write_bytes(bytes(data))
    else:  # well-formed files with a matching checksum, but content that must not be trusted
        buf = io.BytesIO()
        if damage == "nan":
            np.savez(buf, keys=np.array(["a"]), features=np.array([[np.nan, 1.0]], dtype=np.float32))
        elif damage == "shape":
            np.savez(buf, keys=np.array(["a", "b"]), features=np.zeros((1, 2), dtype=np.float32))
        else:
            np.savez(buf, keys=np.array(["a"]), features=np.zeros((1, 2), dtype=np.float32))
        shard.write_bytes(buf.getvalue())
        digest = hashlib.sha256(buf.getvalue()).hexdigest()
        sig.write_text(digest if damage != "checksum-of-other" else hashlib.sha256(b"other").hexdigest())
    c2 = FeatureCache(tmp_path, "k")
    with pytest.warns(CacheCorruptWarning, match=str(shard.name)):
        assert c2.get(["a", "b"]) == {}
    assert c2.corrupt_shards == [str(shard)]
    assert not shard.exists() and not sig.exists()


def test_cache_drops_a_checksum_whose_shard_never_arrived(tmp_path):
    c, shard = _cache_with_one_shard(tmp_path)
    orphan = shard.with_name("shard-0000.sha256")
    orphan.write_text("abc")  # a kill between the checksum's rename and the shard's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(FeatureCache(tmp_path, "k").get(["a", "b"])) == {"a", "b"}
    assert not orphan.exists()


# ----------------------------------------------------------------------------------------------
# Trainer jobs: what a re-run may reuse


def test_only_complete_checkpoints_are_resumed(tmp_path):
    from scpo.jobs import COMPLETE_MARKER, last_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / COMPLETE_MARKER).write_text("{}")
    path, step = last_complete_checkpoint(tmp_path)
    assert (path.name, step) == ("checkpoint-4", 4)
    assert not (tmp_path / "checkpoint-6").exists()  # a save cut short is deleted
    assert last_complete_checkpoint(tmp_path / "none") == (None, 0)


def _fake_exp(tmp_path, **overrides):
    from scpo.config import RunConfig

    cfg = RunConfig().replace(**{"output_dir": str(tmp_path), "mode": "full", **overrides})
    return SimpleNamespace(cfg=cfg, global_info={"fingerprint": "g1"}, data=SimpleNamespace(provenance={"sha256": "d1"}),
                           split=np.array(["train"] * 4 + ["test"]), group=np.array(["g"] * 5),
                           split_key=np.array(list("abcde")), delta=np.linspace(-1, 1, 5))


def test_job_fingerprint_tracks_what_determines_a_job(tmp_path):
    from scpo.jobs import job_fingerprint

    def fp(exp, key="g__scpo__seed0", rows=(0, 1, 2)):
        return job_fingerprint(exp, key, np.asarray(rows), exp.cfg.select.tau, exp.cfg.select.beta)

    base = fp(_fake_exp(tmp_path))
    assert base == fp(_fake_exp(tmp_path))
    # irrelevant to the result: output, cache, scoring batch, checkpoint interval, methods list
    for same in ({"cache_dir": "/elsewhere"}, {"score_batch_size": 7}, {"save_steps": 5}, {"methods": ["scpo"]},
                 {"plots": False}, {"output_dir": str(tmp_path / "other")}):
        assert fp(_fake_exp(tmp_path, **same)) == base, same
    for other in ({"tau": 0.5}, {"beta": 2.0}, {"learning_rates": [1e-5]}, {"steps": [7]}, {"split_seed": 1},
                  {"max_length": 64}, {"batch_size": 3}, {"lora_r": 4}):
        assert fp(_fake_exp(tmp_path, **other)) != base, other
    assert fp(_fake_exp(tmp_path), "g__full__seed0") != base
    assert fp(_fake_exp(tmp_path), rows=(0, 2)) != base  # a learning-curve subset of the training rows
    other_rows = _fake_exp(tmp_path)
    other_rows.split = np.array(["train"] * 3 + ["test", "test"])  # another test set
    assert fp(other_rows) != base
    other_data = _fake_exp(tmp_path)
    other_data.data.provenance = {"sha256": "d2"}  # the same file name, other content
    assert fp(other_data) != base


def test_a_finished_job_of_another_config_is_trained_again(tmp_path):
    from scpo.jobs import _finished_job

    rec = {"margins": [0.5], "pairs": 3, "weight_sum": 2.0, "choice": {}, "fingerprint": "old"}
    done = tmp_path / "jobs" / "g__scpo__seed0.json"
    atomic_write_json(done, rec)
    assert _finished_job(done, "old", tmp_path) == rec
    with pytest.warns(UserWarning, match="another config"):
        assert _finished_job(done, "new", tmp_path) is None
    assert not done.exists()
    done.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert _finished_job(done, "new", tmp_path) is None


def test_a_saved_model_moved_by_a_killed_report_is_found_again(tmp_path):
    """``report.save_models`` moves ``.saved/<name>`` into ``models/<name>``; a re-run after a kill
    puts it back (hard links) so that the report can move it again."""
    from scpo.jobs import _finished_job
    from scpo.names import path_component

    name = f"groups/{path_component('g')}"
    moved = tmp_path / "models" / name
    moved.mkdir(parents=True)
    (moved / "model.safetensors").write_bytes(b"weights")
    rec = {"margins": [0.5], "pairs": 3, "weight_sum": 2.0, "choice": {}, "fingerprint": "f", "group": "g",
           "model_name": name, "model_dir": str(tmp_path / ".saved" / name)}
    done = tmp_path / "jobs" / "g__scpo__seed0.json"
    atomic_write_json(done, rec)
    assert _finished_job(done, "f", tmp_path) == rec
    assert (tmp_path / ".saved" / name / "model.safetensors").read_bytes() == b"weights"
    # lost everywhere: the job is trained again
    import shutil

    shutil.rmtree(tmp_path / ".saved")
    shutil.rmtree(tmp_path / "models")
    with pytest.warns(UserWarning, match="saved model is missing"):
        assert _finished_job(done, "f", tmp_path) is None


# ----------------------------------------------------------------------------------------------
# reproducibility


def _pairs_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(12):
        good, vague = f"Plan step one for {i}, then act today.", f"Situation {i} is not something I can say much about."
        rows.append({"prompt": f"How should I handle situation {i}?", "chosen": good, "rejected": vague, "group": "A"})
        flip = i % 3 == 0  # group B disagrees with the population on a third of the prompts
        rows.append({"prompt": f"How should I handle situation {i}?", "chosen": vague if flip else good,
                     "rejected": good if flip else vague, "group": "B"})
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return f


def test_same_config_and_seed_give_identical_numbers_head_mode(tmp_path):
    """Two runs from scratch (own caches): identical splits, kept sets, weights, heads and metrics."""
    from safetensors.torch import load_file

    from scpo.config import RunConfig
    from scpo.experiment import prepare
    from scpo.load import file_sha256
    from scpo.pipeline import run
    from scpo.selection import select_pairs

    data = _pairs_file(tmp_path)
    outs = []
    for k in range(2):
        cfg = RunConfig().replace(dataset="pairs", data_path=str(data), cache_dir=str(tmp_path / f"cache{k}"),
                                  output_dir=str(tmp_path / f"run{k}"), methods=["global", "full", "scpo"],
                                  learning_rates=[3e-3, 1e-2], steps=[10, 30], pulls=[0.0], val_folds=2,
                                  global_steps=100, plots=False, seeds=[0, 1])
        exp = prepare(cfg, progress=False)
        res = run(cfg, progress=False, exp=exp)
        outs.append((exp, res, load_file(str(tmp_path / f"run{k}" / "models" / "heads.safetensors"))))
    (e1, r1, h1), (e2, r2, h2) = outs
    assert e1.score_stats["computed"] == e2.score_stats["computed"] > 0  # both scored from scratch
    np.testing.assert_array_equal(e1.split, e2.split)
    np.testing.assert_array_equal(e1.split_key, e2.split_key)
    assert e1.features.tobytes() == e2.features.tobytes()
    assert e1.delta.tobytes() == e2.delta.tobytes()
    s1, s2 = select_pairs(e1.delta, 0.7, 1.1), select_pairs(e2.delta, 0.7, 1.1)
    assert s1.keep.tobytes() == s2.keep.tobytes() and s1.weights.tobytes() == s2.weights.tobytes()
    assert 0 < s1.n_kept < len(s1.keep)  # a non-trivial kept set
    assert h1.keys() == h2.keys() and all(h1[k].numpy().tobytes() == h2[k].numpy().tobytes() for k in h1)
    # the files too, byte for byte (issue 15: safetensors wrote its metadata in hash-map order)
    from scpo.artifact import models_fingerprint

    m1, m2 = tmp_path / "run0" / "models", tmp_path / "run1" / "models"
    assert (m1 / "heads.safetensors").read_bytes() == (m2 / "heads.safetensors").read_bytes()
    assert models_fingerprint(m1) == models_fingerprint(m2)
    for key in ("selection", "grid", "metrics", "summary", "global_model"):
        assert json.dumps(r1[key], sort_keys=True) == json.dumps(r2[key], sort_keys=True), key
    # each run records the versions and the data file's hash
    saved = json.loads((tmp_path / "run0" / "results.json").read_text())
    assert {"scpo", "torch", "transformers"} <= set(saved["versions"])
    assert saved["data"]["provenance"]["sha256"] == file_sha256(data)
