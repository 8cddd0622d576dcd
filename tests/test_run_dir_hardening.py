"""The run directory keeps its promises (issue 15 items 3, 8 and 9): one commit point per directory,
export refuses parts of different runs, ``scpo: error:`` + exit 2 instead of tracebacks for file
system and split problems, no write through a symlinked lock, nothing left by a failed run,
deterministic model files, and the data seeds and preset checked where they enter."""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from scpo.cli import main
from scpo.errors import ScpoError
from scpo.rundir import RUN_OUTPUTS, RunLock, invalidate_other_run, work_summary

TINY = ["--quiet", "--synthetic-preset", "tiny", "--methods", "global,full,scpo", "--val-folds", "1",
        "--global-steps", "50", "--learning-rates", "3e-3", "--steps", "20", "--pulls", "0", "--plots", "false",
        "--max-length", "48"]


def _run(out: Path, cache: Path, *extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["run", *TINY, "--output-dir", str(out), "--cache-dir", str(cache), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """One finished tiny run (head mode) and its cache; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    assert _run(root / "run", root / "cache") == 0
    return root / "run", root / "cache"


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(finished[0], dst, symlinks=True)
    return dst


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


# ------------------------------------------------------------------------------------------------
# item 3: one commit point per run directory


def test_results_and_manifest_carry_the_run_fingerprint(finished):
    import yaml

    from scpo.rundir import run_fingerprint

    run, _ = finished
    fp = _results(run)["run_fingerprint"]
    assert fp == json.loads((run / "models" / "manifest.json").read_text())["run_fingerprint"]
    assert fp == run_fingerprint(yaml.safe_load((run / "config.yaml").read_text()))
    # where and how fast are not what: another output or cache directory is the same run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["output"]["output_dir"], cfg["model"]["cache_dir"] = "elsewhere", "other-cache"
    assert run_fingerprint(cfg) == fp
    cfg["select"]["tau"] = 0.6
    assert run_fingerprint(cfg) != fp


def test_invalidate_other_run_removes_every_output_results_first(tmp_path):
    run = tmp_path / "run"
    (run / "models" / "global").mkdir(parents=True)
    (run / "plots").mkdir()
    (run / "tensorboard").mkdir()
    (run / "jobs").mkdir()
    for name in ("report.md", "full_report.json", "partial_report.json", "edited_ratios.json", "config.yaml",
                 "training_log.json"):
        (run / name).write_text("old")
    (run / "results.json").write_text(json.dumps({"run_fingerprint": "aaaa"}))
    (run / ".trash-1-2").mkdir()  # left by a killed invalidation
    assert invalidate_other_run(run, "aaaa") == []  # this config's results stay
    assert (run / "results.json").exists() and not (run / ".trash-1-2").exists()
    gone = invalidate_other_run(run, "bbbb")
    assert gone[0] == "results.json" and set(gone) == set(RUN_OUTPUTS)
    assert sorted(p.name for p in run.iterdir()) == ["jobs"]  # job records carry their own fingerprints
    # a results.json without a fingerprint (or unreadable) is not this config's either
    (run / "results.json").write_text("{trunc")
    assert invalidate_other_run(run, "bbbb") == ["results.json"]


def test_killed_rerun_with_another_config_leaves_no_old_results(finished, tmp_path, monkeypatch):
    """A rerun with another config into a finished directory, killed before its report: the old
    results.json, report.md, reference files and models are gone, so nothing claims a finished run."""
    import scpo.pipeline

    run, cache = _copy(finished, tmp_path), finished[1]
    old_models = (run / "models").exists()

    def killed(*a, **k):
        assert not (run / "results.json").exists() and not (run / "models").exists()  # invalidated first
        raise KeyboardInterrupt  # the kill, before anything of the new run is written

    monkeypatch.setattr(scpo.pipeline, "write_run", killed)
    assert old_models
    assert _run(run, cache, "--tau", "0.6", "--overwrite") == 130
    for name in RUN_OUTPUTS:
        assert not (run / name).exists(), name
    assert not list(run.glob(".trash-*"))
    # export has nothing to mix: no finished run, no models
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 2


def test_rerun_with_another_config_sigkilled_in_its_report_leaves_one_run(finished, tmp_path):
    """The issue's case for real: SIGKILL (``SCPO_KILL_AT=report``, models written, results.json not)
    of a ``--tau 0.6`` rerun into a finished ``--tau 0.7`` directory. What is left is one run: the new
    config and models, no results or report of the old one; export takes the models alone."""
    import signal
    import subprocess
    import sys

    import yaml

    from scpo.rundir import run_fingerprint

    run, cache = _copy(finished, tmp_path), finished[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "SCPO_KILL_AT": "report"}
    cmd = [sys.executable, "-m", "scpo", "run", *TINY, "--tau", "0.6", "--overwrite", "--output-dir", str(run),
           "--cache-dir", str(cache)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    for name in ("results.json", "report.md", "full_report.json", "partial_report.json", "edited_ratios.json"):
        assert not (run / name).exists(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["select"]["tau"] == 0.6
    assert json.loads((run / "models" / "manifest.json").read_text())["run_fingerprint"] == run_fingerprint(cfg)
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert "accuracy" not in json.loads((tmp_path / "exp" / "manifest.json").read_text())  # no old results mixed in


def test_rerun_with_the_same_config_keeps_the_finished_results(finished, tmp_path, monkeypatch):
    import scpo.pipeline

    run, cache = _copy(finished, tmp_path), finished[1]
    monkeypatch.setattr(scpo.pipeline, "write_run", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert _run(run, cache, "--overwrite") == 130
    assert (run / "results.json").exists() and (run / "models" / "manifest.json").exists()


def test_export_refuses_an_artifact_whose_parts_disagree(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    res = _results(run)
    res["run_fingerprint"] = "0123456789abcdef"
    (run / "results.json").write_text(json.dumps(res))
    assert main(["export", str(run), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "parts come from different runs" in err and "results.json is run 0123456789abcdef" in err
    assert "manifest.json is run" in err and not (tmp_path / "a").exists()
    # config.yaml of another config beside matching results and models
    shutil.copy(finished[0] / "results.json", run / "results.json")
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("tau: 0.7", "tau: 0.6"))
    assert main(["export", str(run), "--out", str(tmp_path / "b")]) == 2
    assert "config.yaml is run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# item 8: scpo: error: and exit 2, not a traceback


def _pairs(path: Path, counts: dict[str, int]) -> Path:
    rows = [{"prompt": f"{g} question {i}?", "chosen": f"good answer {i} {g}", "rejected": f"bad answer {i}", "group": g}
            for g, n in counts.items() for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_split_without_held_apart_pairs_is_an_error(tmp_path, capsys):
    """Two prompts and 90% test keys leave the global model no held-apart pair (was an IndexError)."""
    data = _pairs(tmp_path / "p.jsonl", {"A": 2, "B": 1})
    out = tmp_path / "new" / "run"
    rc = main(["run", "--quiet", "--dataset", "pairs", "--data-path", str(data), "--test-fraction", "0.9",
               "--plots", "false", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 2
    assert "no held-apart pair to train the global model" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # item 9: a failed run leaves no new directory (nor its parents)


@pytest.mark.parametrize("flag", ["--output-dir", "--cache-dir"])
def test_directory_flag_naming_a_file(tmp_path, capsys, flag):
    f = tmp_path / "afile"
    f.write_text("x")
    args = {"--output-dir": str(tmp_path / "run"), "--cache-dir": str(tmp_path / "cache"), flag: str(f)}
    assert main(["run", "--quiet", *[x for kv in args.items() for x in kv]]) == 2
    assert f"{flag} {f}: exists and is not a directory" in capsys.readouterr().err
    # below a file, too
    args[flag] = str(f / "sub")
    assert main(["run", "--quiet", *[x for kv in args.items() for x in kv]]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert f.read_text() == "x" and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ['{"scpo_results_version": 2, "da', "[1, 2]", "{}", '{"metrics": 3}'])
def test_report_on_a_truncated_or_invalid_results_json(finished, tmp_path, capsys, content):
    run = _copy(finished, tmp_path)
    (run / "results.json").write_text(content)
    before = (run / "report.md").read_bytes()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scpo: error:") and "results.json" in err and len(err.splitlines()) == 1
    assert (run / "report.md").read_bytes() == before  # nothing rewritten


def test_export_out_naming_a_file(finished, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    for extra in ([], ["--group", "group-c"]):
        assert main(["export", str(finished[0]), "--out", str(f), *extra]) == 2
        assert "exists and is not a directory" in capsys.readouterr().err
    assert f.read_text() == "x"


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_full_disk_while_writing_the_cache_leaves_no_orphan_checksum(tmp_path, capsys, monkeypatch):
    import scpo.score

    real = scpo.score.atomic_write_bytes

    def full(path, data):
        if str(path).endswith(".npz"):
            raise _enospc(path)
        return real(path, data)

    monkeypatch.setattr(scpo.score, "atomic_write_bytes", full)
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert _run(out, cache) == 2
    err = capsys.readouterr().err
    assert "scpo: error:" in err and "No space left on device" in err and ".npz" in err
    assert not list(cache.rglob("*.sha256")) and not list(cache.rglob("*.tmp*"))
    assert not out.exists()  # failed before writing anything


def test_full_disk_while_saving_the_models_leaves_no_temporary_folder(finished, tmp_path, capsys, monkeypatch):
    import scpo.artifact

    def full(*a, **k):
        raise _enospc(tmp_path / "run" / ".models.tmp" / "heads.safetensors")

    monkeypatch.setattr(scpo.artifact, "safetensors_bytes", full)
    run = tmp_path / "run"
    assert _run(run, finished[1]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not (run / ".models.tmp").exists() and not (run / "results.json").exists()


# ------------------------------------------------------------------------------------------------
# item 9


def test_a_symlinked_lock_is_replaced_never_written_through(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / ".lock").symlink_to(victim)
    (run / "work.jsonl").symlink_to(victim)
    with RunLock(run):
        pass
    assert victim.read_text() == "precious"
    assert not (run / ".lock").is_symlink() and (run / ".lock").is_file()
    assert not (run / "work.jsonl").is_symlink()
    (run / ".lock").unlink()
    (run / ".lock").mkdir()
    with pytest.raises(ScpoError, match="cannot open the run lock: Is a directory"), RunLock(run):
        pass
    (run / ".lock").rmdir()
    os.mkfifo(run / ".lock")  # opened without blocking, then refused
    with pytest.raises(ScpoError, match="not a regular file"), RunLock(run):
        pass


def test_a_failed_run_removes_only_the_directory_it_created(tmp_path, capsys):
    new = tmp_path / "a" / "b"
    assert main(["run", "--quiet", "--groups", "no-such-group", "--synthetic-preset", "tiny", "--output-dir", str(new),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "no-such-group" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["run", "--quiet", "--groups", "no-such-group", "--synthetic-preset", "tiny", "--output-dir",
                 str(existing), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert existing.is_dir()  # not ours to remove; its lock and log of the failed attempt stay


def test_a_finished_run_says_its_own_attempt_finished(finished):
    run, _ = finished
    work = _results(run)["work"]
    assert work[-1]["finished"] is True
    assert [a["finished"] for a in work_summary(run)] == [a["finished"] for a in work]


def test_model_files_are_byte_for_byte_deterministic():
    import torch
    from safetensors.torch import load

    from scpo.artifact import safetensors_bytes

    t = {"b/scpo": torch.arange(6, dtype=torch.float32), "a/full": torch.ones(3, dtype=torch.float32)}
    meta = {"seed": "0", "bias": "0.25"}
    blobs = {safetensors_bytes(t, meta) for _ in range(20)} | {safetensors_bytes(dict(reversed(t.items())),
                                                                                 dict(reversed(meta.items())))}
    assert len(blobs) == 1
    blob = blobs.pop()
    back = load(blob)
    assert all(torch.equal(back[k], t[k]) for k in t)
    header_len = int.from_bytes(blob[:8], "little")
    assert header_len % 8 == 0 and json.loads(blob[8:8 + header_len])["__metadata__"] == {"bias": "0.25", "seed": "0"}


def test_export_keeps_a_temporary_folder_that_is_not_its_own(finished, tmp_path):
    foreign = tmp_path / ".exp.tmp"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("someone else's")
    assert main(["export", str(finished[0]), "--out", str(tmp_path / "exp")]) == 0
    assert (foreign / "keep.txt").read_text() == "someone else's"
    assert (tmp_path / "exp" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".exp.tmp", "exp"]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--split-seed", "-1", "--split-seed must be an integer >= 0, got -1"),
    ("--synthetic-seed", "-1", "--synthetic-seed must be an integer >= 0, got -1"),
    ("--synthetic-preset", "bogus", "--synthetic-preset must be one of default, no-outliers, no-deviation, tiny"),
])
def test_data_seeds_and_preset_are_checked(tmp_path, capsys, flag, value, message):
    assert main(["run", "--quiet", flag, value, "--output-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_synthetic_presets_of_the_config_are_the_generators():
    from scpo.config import SYNTHETIC_PRESETS
    from scpo.load.synthetic import PRESETS

    assert set(SYNTHETIC_PRESETS) == set(PRESETS)
