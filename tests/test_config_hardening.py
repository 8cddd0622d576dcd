"""Configuration input is bounded and every value is checked where it enters (issue 15: the YAML alias
bomb, duplicate sections, NaN and out-of-range training values, capped error lines)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from scpo.cli import main
from scpo.config import RunConfig
from scpo.errors import ConfigError

BOMB = """a: &a ["x","x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
output: {plots: *g}
"""


def _run(tmp_path: Path, *args: str) -> int:
    return main(["run", "--quiet", "--output-dir", str(tmp_path / "run"), *args])


def test_yaml_alias_bomb_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    t = time.perf_counter()
    assert _run(tmp_path, "--config", str(f)) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t < 10 and len(err) < 1000  # no expansion, no 66 MB error line
    assert "aliases" in err and "bomb.yaml" in err and not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("train: {seeds: [1]}\nselect: {tau: 0.6}\ntrain: {seeds: [2]}\n")
    assert _run(tmp_path, "--config", str(f)) == 2
    assert "duplicate key 'train'" in capsys.readouterr().err
    f.write_text("select: {tau: 0.6, tau: 0.5}\n")
    assert _run(tmp_path, "--config", str(f)) == 2
    assert "line 1: duplicate key 'tau'" in capsys.readouterr().err


def test_an_oversized_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    f = tmp_path / "big.yaml"
    f.write_text("train:\n  seeds: [" + ",".join(["1"] * 600_000) + "]\n")
    assert _run(tmp_path, "--config", str(f)) == 2
    assert "1 MiB" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--pulls", "nan", "got NaN"),
    ("--pulls", "inf", "--pulls must be finite"),
    ("--learning-rates", "nan", "got NaN"),
    ("--global-steps", "-5", "--global-steps must be >= 1"),
    ("--global-learning-rate", "-1", "--global-learning-rate must be finite and > 0"),
    ("--global-learning-rate", "nan", "got NaN"),
    ("--seeds", "-1", "--seeds must be >= 0"),
    ("--split-seeds", "0,-2", "--split-seeds must be >= 0"),
    ("--warmup-ratio", "1.5", "--warmup-ratio must be in [0, 1)"),
    ("--lora-r", "0", "--lora-r must be >= 1"),
    ("--n-boot", "3", "--n-boot must be >= 10"),
    ("--tau", "nan", "got NaN"),
    ("--output-dir", "", "--output-dir must name a directory"),
])
def test_invalid_training_values_exit_2_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str,
                                                        value: str, message: str) -> None:
    assert main(["run", "--quiet", flag, value] + ([] if flag == "--output-dir" else
                                                   ["--output-dir", str(tmp_path / "run")])) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_yaml_nan_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "nan.yaml"
    f.write_text("train:\n  pulls: [0.0, .nan]\n")
    with pytest.raises(ConfigError, match=r"nan.yaml: train.pulls: expected a number, got NaN"):
        RunConfig.from_yaml(f)


def test_python_api_checks_the_same_values() -> None:
    with pytest.raises(ConfigError, match="--pulls must be finite"):
        RunConfig().replace(pulls=[float("inf")])
    with pytest.raises(ConfigError, match="got NaN"):
        RunConfig().replace(global_learning_rate=float("nan"))


def test_device_without_such_hardware_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    assert _run(tmp_path, "--synthetic-preset", "tiny", "--device", "cuda", "--cache-dir", str(tmp_path / "c")) == 2
    assert "--device 'cuda': no cuda device on this machine" in capsys.readouterr().err


def test_error_lines_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(tmp_path, "--methods", "x" * 50_000) == 2
    assert len(capsys.readouterr().err) < 2200
