"""The command line: help, and exit status 2 with a one-line message for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scpo.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scpo", *args], capture_output=True, text=True, timeout=300)


def test_help_documents_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--tau", "--beta", "--global-model", "--mode", "--seeds", "--config", "--dataset", "--output-dir"):
        assert flag in out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tau", "0"], "tau"),
        (["--tau", "1.5"], "tau"),
        (["--beta", "0"], "beta"),
        (["--beta", "-1"], "beta"),
        (["--groups", "group-zz"], "group-zz"),
        (["--mode", "turbo"], "mode"),
        (["--config", "/nonexistent/x.yaml"], "cannot read config"),
        (["--dataset", "pairs", "--data-path", "/nonexistent/p.jsonl"], "p.jsonl"),
    ],
)
def test_bad_input_exit_2(tmp_path, capsys, args, needle):
    code = main(["run", "--quiet", "--synthetic-preset", "tiny", "--output-dir", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "c"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("scpo: error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "results.json").exists()


def test_config_unknown_key_and_yaml_override(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("select:\n  tua: 0.5\n")
    assert main(["run", "--config", str(bad)]) == 2
    assert "select.tua" in capsys.readouterr().err
    from scpo.cli import build_parser
    from scpo.cli.common import config_from_args
    from scpo.config import RunConfig

    good = tmp_path / "good.yaml"
    good.write_text("select:\n  tau: 0.6\n  beta: .inf\ntrain:\n  seeds: [1, 2]\n")
    args = build_parser().parse_args(["run", "--config", str(good), "--tau", "0.65"])
    cfg = config_from_args(args)
    assert cfg.select.tau == 0.65 and cfg.select.beta == float("inf") and cfg.train.seeds == [1, 2]
    assert cfg == RunConfig().replace(tau=0.65, beta=float("inf"), seeds=[1, 2])


def test_empty_data_exit_2(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("")
    p = _run("run", "--quiet", "--dataset", "pairs", "--data-path", str(f), "--output-dir", str(tmp_path / "r"))
    assert p.returncode == 2, p.stderr
    assert "scpo: error:" in p.stderr
