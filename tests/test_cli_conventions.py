"""Issue 14: the command line follows the ecosystem's conventions and a run's artifacts carry no machine paths.

* every parser refuses abbreviated options (``--learning-rate`` is not ``--learning-rates``);
* booleans are bare flags with a negation (``--bf16``, ``--no-plots``), ``--bf16 true`` still works;
* lists take space or comma separated values;
* a finished run directory is refused without ``--overwrite``; ``--resume`` continues an interrupted one;
* ``--quiet`` prints the summary and nothing else; the summary prints on the main process only;
* ``results.json``, the manifest, adapter configs and an export hold no absolute path of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import scpo
from scpo.cli import build_parser, main
from scpo.cli.common import config_from_args

FAST = ["--synthetic-preset", "tiny", "--methods", "global,scpo", "--val-folds", "1", "--global-steps", "50",
        "--learning-rates", "3e-3", "--steps", "20", "--pulls", "0", "--max-length", "48", "--no-plots"]
"""A tiny head-mode run: a few seconds."""


def _parsers(parser: argparse.ArgumentParser, name: str = "scpo") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                out += _parsers(sub, f"{name} {sub_name}")
    return out


def _cfg(*args: str):
    return config_from_args(build_parser().parse_args(["run", *args]))


def _quiet_main(args: list[str]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(args)


# ------------------------------------------------------------------------------------------------
# abbreviations, booleans, lists


def test_every_parser_refuses_abbreviations():
    parsers = _parsers(build_parser())
    assert {"scpo", "scpo run", "scpo data", "scpo data inspect", "scpo serve", "scpo export"} <= {n for n, _ in parsers}
    assert [n for n, p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize("argv, flag", [
    (["run", "--learning-rate", "0.1"], "--learning-rate"),  # the case: not --learning-rates
    (["evaluate", "--seed", "1"], "--seed"),
    (["data", "inspect", "--synthetic", "tiny"], "--synthetic"),
    (["serve", "--model", "m", "--max-item", "3"], "--max-item"),
])
def test_an_abbreviated_option_is_refused(argv, flag, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--output-dir", str(tmp_path / "r")] if argv[0] == "run" else argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and flag in err
    assert not (tmp_path / "r").exists()


def test_boolean_flags_are_bare_with_a_negation_and_still_take_true_or_false(tmp_path):
    assert _cfg().trainer.bf16 is False and _cfg().output.plots is True
    assert _cfg("--bf16").trainer.bf16 is True
    assert _cfg("--bf16", "--no-bf16").trainer.bf16 is False  # the last one wins, as in argparse
    assert _cfg("--bf16", "true").trainer.bf16 is True and _cfg("--bf16", "false").trainer.bf16 is False
    assert _cfg("--no-plots").output.plots is False and _cfg("--plots", "no").output.plots is False
    assert _cfg("--no-save-models", "--no-disable-dropout").trainer.disable_dropout is False
    # a bare flag before another option does not swallow it
    cfg = _cfg("--bf16", "--tau", "0.6")
    assert cfg.trainer.bf16 is True and cfg.select.tau == 0.6
    # and overrides the YAML file
    y = tmp_path / "c.yaml"
    y.write_text("output:\n  plots: false\ntrainer:\n  bf16: true\n")
    cfg = _cfg("--config", str(y), "--plots", "--no-bf16")
    assert cfg.output.plots is True and cfg.trainer.bf16 is False
    assert _cfg("--config", str(y)).trainer.bf16 is True


@pytest.mark.parametrize("argv, needle", [(["--bf16", "maybe"], "--bf16"), (["--no-bf16", "true"], "--no-bf16")])
def test_a_bad_boolean_value_exits_2_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["run", *argv])
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_lists_take_space_or_comma_separated_values():
    assert _cfg("--seeds", "0", "1", "2").train.seeds == [0, 1, 2]
    assert _cfg("--seeds", "0,1,2").train.seeds == [0, 1, 2]
    assert _cfg("--seeds", "0,", "1", "2,3").train.seeds == [0, 1, 2, 3]
    cfg = _cfg("--learning-rates", "1e-3", "3e-3", "--groups", "group-a", "group-b", "--tau", "0.6")
    assert cfg.train.learning_rates == [1e-3, 3e-3] and cfg.data.groups == ["group-a", "group-b"] and cfg.select.tau == 0.6
    assert _cfg("--split-seeds", "").studies.split_seeds == []
    assert _cfg("--methods", "global", "scpo").train.methods == ["global", "scpo"]


def test_help_shows_the_negated_form_and_list_spelling(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--no-plots" in out and "--no-bf16" in out and "space or comma separated" in out
    assert "--overwrite" in out and "--resume" in out


# ------------------------------------------------------------------------------------------------
# no silent overwrite


def _tree(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_finished_run_directory_is_refused_without_overwrite(tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    base = ["run", "--quiet", *FAST, "--output-dir", str(run), "--cache-dir", str(cache)]
    assert _quiet_main(base) == 0
    capsys.readouterr()
    before = _tree(run)
    # the case: another configuration into the finished directory; and the same one again
    for extra, which in ((["--tau", "0.6"], "another config"), ([], "this same config")):
        assert _quiet_main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("scpo: error:") and len(err.splitlines()) == 1
        assert "--overwrite" in err and which in err and str(run) in err
        assert _tree(run) == before  # not a byte changed, not even the work log
    assert _quiet_main([*base, "--resume"]) == 2
    assert "--resume continues only an interrupted run" in capsys.readouterr().err
    assert _tree(run) == before
    with pytest.raises(SystemExit) as e:  # one or the other
        main([*base, "--resume", "--overwrite"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    # asked for: replaced by the new config
    assert _quiet_main([*base, "--tau", "0.6", "--overwrite"]) == 0
    assert json.loads((run / "results.json").read_text())["select"]["tau"] == 0.6


def test_resume_continues_an_interrupted_run_and_refuses_a_directory_with_nothing_to_resume(tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    base = ["run", "--quiet", *FAST, "--output-dir", str(run), "--cache-dir", str(cache)]
    assert _quiet_main([*base, "--resume"]) == 2  # a mistyped directory does not silently start afresh
    err = capsys.readouterr().err
    assert "--resume" in err and "no interrupted run" in err and not run.exists()
    assert _quiet_main(base) == 0
    (run / "results.json").unlink()  # as a run killed before its commit point leaves it
    assert _quiet_main([*base, "--resume"]) == 0
    assert (run / "results.json").is_file()


# ------------------------------------------------------------------------------------------------
# --quiet, one summary per job


def test_quiet_prints_the_summary_alone(tmp_path):
    """A real process (transformers' bars and logging are process-wide): stdout is exactly the summary, stderr empty."""
    from scpo.cli.runs import print_summary

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONWARNINGS": "default"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    cmd = [sys.executable, "-m", "scpo", "run", "--quiet", "--synthetic-preset", "tiny", "--output-dir", "r",
           "--cache-dir", "c"]  # plots on: matplotlib's first import logs too
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    import contextlib
    import io

    expected = io.StringIO()
    with contextlib.redirect_stdout(expected):
        print_summary(results, "r", quiet=True)
    assert p.stderr == ""
    assert p.stdout == expected.getvalue()
    assert p.stdout.startswith("scpo: synthetic") and "[" in p.stdout  # the summary, with its CIs
    assert results["command"] == ["scpo", *cmd[3:]]


def test_the_summary_prints_on_the_main_process_only(tmp_path, capsys, monkeypatch):
    import scpo.cli.runs as runs

    fake = {"summary": {}, "data": {"name": "x"}, "synthetic_data": True, "mode": "head", "seeds": [0], "wall_time_s": 1.0}
    monkeypatch.setattr(runs, "run", lambda cfg, **kw: fake)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--quiet", "--output-dir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "--quiet", "--output-dir", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.startswith("scpo: x (synthetic data)")


def test_one_summary_under_accelerate_launch(tmp_path):
    """Two real processes (``accelerate launch``, gloo on the CPU): the summary prints once, nothing else."""
    import shutil

    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("accelerate")
    launcher = [str(exe)] if exe.exists() else (["accelerate"] if shutil.which("accelerate") else None)
    if launcher is None:
        pytest.skip("accelerate's launcher is not installed")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")]))
    cmd = [*launcher, "launch", "--config_file", str(root / "configs" / "accelerate" / "cpu_2proc.yaml"), "-m", "scpo",
           "run", "--quiet", "--synthetic-preset", "tiny", "--no-plots", "--output-dir", "r", "--cache-dir", "c"]
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("scpo: synthetic") == 1 and p.stdout.count("  report: r/report.md") == 1, p.stdout
    assert p.stderr == ""


# ------------------------------------------------------------------------------------------------
# no absolute machine paths in what scpo writes for others


def _machine_paths(tmp_path: Path) -> list[str]:
    home = str(Path.home())
    out = [str(tmp_path), str(tmp_path.resolve()), sys.prefix, os.path.realpath(sys.prefix),
           str(Path(scpo.__file__).resolve().parents[2])]
    if home not in ("/", ""):
        out.append(home)
    return sorted(set(out), key=len, reverse=True)


def _assert_clean(folders: list[Path], tmp_path: Path) -> int:
    needles = [n.encode() for n in _machine_paths(tmp_path)]
    files = [p for f in folders for p in f.rglob("*") if p.is_file()]
    bad = [(str(p.relative_to(tmp_path)), n.decode()) for p in files for n in needles if n in p.read_bytes()]
    assert bad == [], bad
    return len(files)


def _pairs(path: Path) -> Path:
    rows = []
    for i in range(12):
        good, vague = f"Plan step one for {i}, then act today.", f"Situation {i} is not something I can say much about."
        rows.append({"prompt": f"How should I handle situation {i}?", "chosen": good, "rejected": vague, "group": "A"})
        flip = i % 3 == 0
        rows.append({"prompt": f"How should I handle situation {i}?", "chosen": vague if flip else good,
                     "rejected": good if flip else vague, "group": "B"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_lora_run_and_its_export_hold_no_machine_path(tmp_path, monkeypatch):
    """The issue's case: LoRA over the packaged model (whose weights lie in site-packages), on a local
    pairs file named as a user types it: results, report, manifest, adapter configs, export."""
    from scpo.load import file_sha256

    monkeypatch.chdir(tmp_path)
    _pairs(tmp_path / "pairs.jsonl")
    args = ["run", "--quiet", "--dataset", "pairs", "--data-path", "pairs.jsonl", "--global-steps", "50",
            "--mode", "lora", "--methods", "global,scpo", "--steps", "2", "--batch-size", "4", "--max-length", "32",
            "--learning-rates", "1e-3", "--pulls", "0", "--val-folds", "1", "--no-plots", "--save-steps", "0",
            "--output-dir", "r", "--cache-dir", "c"]
    assert _quiet_main(args) == 0
    assert _quiet_main(["export", "r", "--out", "e"]) == 0
    assert _assert_clean([tmp_path / "r", tmp_path / "e"], tmp_path) > 10
    res = json.loads(Path("r/results.json").read_text())
    assert res["data"]["provenance"]["file"] == "pairs.jsonl"
    assert res["data"]["provenance"]["sha256"] == file_sha256(tmp_path / "pairs.jsonl")
    assert res["command"] == ["scpo", *args]
    adapters = list(Path("r/models").rglob("adapter_config.json")) + list(Path("e").rglob("adapter_config.json"))
    assert len(adapters) == 4  # groups A and B, in the run and in the export
    assert {json.loads(a.read_text())["base_model_name_or_path"] for a in adapters} == {"packaged:all-MiniLM-L6-v2"}
    code = res["code"]  # run from this checkout (tests run from the source tree)
    assert code is None or (len(code["commit"]) == 40 and isinstance(code["dirty"], bool))


def test_a_head_run_on_the_packaged_model_holds_no_machine_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _quiet_main(["run", "--quiet", *FAST, "--output-dir", "r", "--cache-dir", "c"]) == 0
    assert _quiet_main(["export", "r", "--out", "e"]) == 0
    assert _assert_clean([tmp_path / "r", tmp_path / "e"], tmp_path) > 5


def test_data_provenance_of_an_absolute_path_is_portable(tmp_path, monkeypatch):
    from scpo.config import DataConfig
    from scpo.load.sources import read_source

    (tmp_path / "sub").mkdir()
    data = _pairs(tmp_path / "sub" / "pairs.jsonl")
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        _pairs(shards / f"train-{k}.jsonl")
    monkeypatch.chdir(tmp_path)
    assert read_source(DataConfig(dataset="pairs", data_path=str(data)))[1]["file"] == "sub/pairs.jsonl"
    prov = read_source(DataConfig(dataset="pairs", data_path=str(shards)))[1]
    assert prov["file"] == "shards" and sorted(prov["files"]) == ["train-0.jsonl", "train-1.jsonl"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(elsewhere))  # neither below the working nor the home directory: the name alone
    assert read_source(DataConfig(dataset="pairs", data_path=str(data)))[1]["file"] == "pairs.jsonl"


def test_portable_path_and_command_line():
    from scpo.provenance import command_line, portable_path

    assert portable_path("data/x.jsonl") == "data/x.jsonl" and portable_path("../x.jsonl") == "../x.jsonl"
    assert portable_path("/srv/a/x.jsonl", cwd="/srv") == "a/x.jsonl"
    assert portable_path("/srv", cwd="/srv") == "."
    assert portable_path("/elsewhere/x.jsonl", cwd="/") == "x.jsonl"  # "/" is no base to be relative to
    home = Path.home()
    if str(home) != "/":
        assert portable_path(home / "d" / "x.jsonl", cwd="/nowhere") == "~/d/x.jsonl"
    cwd = Path.cwd()
    assert command_line(["run", "--data-path", str(cwd / "p.jsonl"), f"--output-dir={cwd}/r", "--tau", "0.6"]) == \
        ["scpo", "run", "--data-path", "p.jsonl", "--output-dir=r", "--tau", "0.6"]


def test_code_revision_only_for_a_checkout_of_scpo(tmp_path):
    from scpo.provenance import code_revision

    (tmp_path / "src" / "scpo").mkdir(parents=True)
    assert code_revision(tmp_path / "src" / "scpo") is None  # not a git repository
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    (tmp_path / "src" / "scpo" / "__init__.py").write_text("")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "x"], check=True, env=env)
    rev = code_revision(tmp_path / "src" / "scpo")
    assert rev is not None and len(rev["commit"]) == 40 and rev["dirty"] is False
    (tmp_path / "src" / "scpo" / "__init__.py").write_text("x = 1\n")
    assert code_revision(tmp_path / "src" / "scpo")["dirty"] is True
    (tmp_path / "lib" / "scpo").mkdir(parents=True)  # a package inside some other repository is not its code
    assert code_revision(tmp_path / "lib" / "scpo") is None
