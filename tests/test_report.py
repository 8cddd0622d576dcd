"""The run directory: report.md and plots build from a saved results.json; every plot is written.

``tiny_run()`` runs one small evaluation (tiny synthetic preset, 2 seeds, curves, a 2-cell sweep)
once per test session; test_curves.py and test_sweep.py use it too.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest

from scpo.plots import PLOT_FILES
from scpo.report import rebuild, strict_json
from scpo.report_md import build_report

TINY_ARGS = [
    "--quiet", "--synthetic-preset", "tiny", "--methods", "global,full,scpo,filter-only,weight-only",
    "--seeds", "0,1", "--curve-fractions", "0.5,1", "--sweep-taus", "0.7,1", "--sweep-betas", "inf",
    "--global-steps", "300", "--learning-rates", "3e-3,1e-2", "--steps", "60", "--pulls", "0",
    "--val-folds", "2", "--n-boot", "200", "--downstream-n", "2,8",
]


@functools.lru_cache(maxsize=1)
def tiny_run() -> tuple[dict, Path]:
    """(results.json as saved, run directory) of ``scpo evaluate`` on the tiny preset; once per session."""
    import torch

    from scpo.cli import main

    tmp = Path(tempfile.mkdtemp(prefix="scpo-test-eval-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    run_dir = tmp / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched ops: one thread is much faster on a shared machine
    try:
        rc = main(["evaluate", *TINY_ARGS, "--cache-dir", str(tmp / "cache"), "--output-dir", str(run_dir)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return json.loads((run_dir / "results.json").read_text()), run_dir


@pytest.fixture
def tiny_results() -> dict:
    return tiny_run()[0]


def test_results_json_is_strict_json_with_the_documented_sections(tiny_results):
    _, run_dir = tiny_run()
    text = (run_dir / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    for key in ("scpo_results_version", "metrics", "summary", "tests", "ci", "runs", "cross_group", "curves",
                "sweep", "selection", "splits", "timing_s"):
        assert key in tiny_results, key
    assert tiny_results["scpo_results_version"] == 2
    assert len(tiny_results["runs"]) == 2
    g = tiny_results["data"]["groups"][0]
    e = tiny_results["metrics"][g]["scpo"]["all"]
    assert len(e["per_run"]) == 2 and len(e["ci95"]) == 2
    assert "scpo vs full" in tiny_results["tests"]["per_group"]
    assert "weight-only vs full" in tiny_results["tests"]["group_sets"]


def test_every_plot_is_written_and_not_empty():
    results, run_dir = tiny_run()
    for name in PLOT_FILES:
        p = run_dir / "plots" / name
        assert p.is_file() and p.stat().st_size > 1000, name
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(Path(p).name for p in results["plots"]) == sorted(PLOT_FILES)


def test_report_rebuilds_from_saved_results_without_training(tmp_path):
    results, run_dir = tiny_run()
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "results.json", copy / "results.json")  # nothing else: no models, no config
    report = rebuild(copy)
    text = report.read_text()
    for heading in ("## The paper's claims on this data", "## Comparison", "## Per group", "## Paired tests",
                    "## What carries SCPO's effect", "## Bias", "## Data efficiency", "## Cross-group matrix",
                    "## tau × beta sweep", "## Downstream", "## Plots"):
        assert heading in text, heading
    assert text == (run_dir / "report.md").read_text()
    for name in PLOT_FILES:
        assert (copy / "plots" / name).stat().st_size > 1000
    for name in ("full_report.json", "partial_report.json", "edited_ratios.json"):
        assert json.loads((copy / name).read_text())["avg"] is not None


def test_report_cli_rebuilds(tmp_path, capsys):
    from scpo.cli import main

    _, run_dir = tiny_run()
    shutil.copy(run_dir / "results.json", tmp_path / "results.json")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").is_file()


def test_report_states_distinctive_only_beside_agreeing_and_pooled(tiny_results):
    text = build_report(tiny_results)
    for line in text.splitlines():
        if line.startswith("| method | ") and "distinctive" in line:
            assert "agreeing" in line and "pooled" in line
    assert "by construction" in text
    assert "McNemar" in text


def test_report_builds_from_a_minimal_older_results_file():
    results, _ = tiny_run()
    old = {k: v for k, v in results.items() if k not in ("tests", "ci", "curves", "sweep", "runs", "timing_s", "plots")}
    text = build_report(old)
    assert "## Comparison" in text and "Data efficiency**: not measured" in text


def test_strict_json():
    out = strict_json({"a": float("nan"), "b": [float("inf"), -math.inf, 1.5], "c": {"d": 2}})
    assert out == {"a": None, "b": ["inf", "-inf", 1.5], "c": {"d": 2}}


# ------------------------------------------------------------------------------------------------
# issue 14: the report's wording


def _one_run(results: dict) -> dict:
    """``results`` as a run of one training seed would hold them (every ``std`` 0, one entry per list)."""
    import copy

    one = copy.deepcopy(results)
    one["seeds"], one["runs"] = [0], [{"split_seed": 0, "seed": 0}]
    for per in one["metrics"].values():
        for e in per.values():
            for sub in (e.values() if isinstance(e, dict) else ()):
                if isinstance(sub, dict) and "std" in sub:
                    sub["std"], sub["n"] = 0.0, 1
    return one


def test_report_writes_p_below_0001_as_p_less_than(tiny_results):
    import copy

    res = copy.deepcopy(tiny_results)
    for t in res["tests"]["group_sets"].values():
        for per in t.values():
            per["all"]["p_value"] = 0.0
    text = build_report(res)
    assert "p < 0.001" in text and "p = <" not in text and "p=<" not in text and "p =<" not in text


def test_report_of_one_run_shows_no_plus_minus(tiny_results):
    two = build_report(tiny_results)
    assert " ± " in two and "mean ± std over runs" in two  # 2 seeds: the spread is shown
    one = build_report(_one_run(tiny_results))
    assert "±" not in one.replace("there is no ±", "")
    assert "one run (1 split seed × 1 training seed)" in one and "1 run (1 seed, no std)" in one


def test_report_mentions_scratch_only_when_it_ran(tiny_results):
    import copy

    assert "scratch" not in tiny_results["methods"]
    assert "scratch" not in build_report(tiny_results)
    res = copy.deepcopy(tiny_results)
    res["methods"] = [*res["methods"], "scratch"]
    for rows in res["summary"].values():
        rows["scratch"] = rows["full"]
    for per in res["metrics"].values():
        per["scratch"] = per["full"]
    assert "`scratch` (a group model trained from zero" in build_report(res)


def test_oracle_pooled_is_n_a_with_its_reason_never_nan(tiny_results, capsys):
    from scpo.cli.runs import print_summary

    text = build_report(tiny_results)
    assert "| oracle |" in text and "nan" not in text.lower().replace("nanmean", "")
    oracle_rows = [line for line in text.splitlines() if line.startswith("| oracle |") or "| oracle |" in line]
    assert oracle_rows and all("n/a" in line for line in oracle_rows)
    assert "the oracle's `pooled` is n/a: a group's true utility is known on the group's own pairs only" in text
    print_summary(tiny_results, "run", quiet=True)
    out = capsys.readouterr().out
    assert "nan" not in out and "pooled   n/a" in out and "oracle pooled n/a:" in out


def test_console_figures_carry_the_reports_cis(tiny_results, capsys):
    from scpo.cli.runs import print_efficiency, print_summary, print_sweep
    from scpo.report_md import ratio_text

    print_efficiency(tiny_results)
    out = capsys.readouterr().out
    pts = [e for pts in tiny_results["curves"]["efficiency"]["group_sets"].values() for e in pts]
    assert any(e.get("ci95") for e in pts)
    for e in pts:
        assert f"{e['fraction']:g}: {ratio_text(e)}" in out  # the very text of report.md's table, CI included
    report = build_report(tiny_results)
    assert all(ratio_text(e) in report for e in pts)
    print_summary(tiny_results, "run", quiet=True)
    out = capsys.readouterr().out
    r = tiny_results["summary"]["all_groups"]["scpo"]
    assert f"all {100 * r['all']:5.1f} [{100 * r['all_ci95'][0]:.1f}, {100 * r['all_ci95'][1]:.1f}]" in out
    print_sweep(tiny_results["sweep"])
    out = capsys.readouterr().out
    assert "p=" not in out and ("p = " in out or "p < 0.001" in out)
