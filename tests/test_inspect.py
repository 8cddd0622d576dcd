"""scpo data inspect: per-group counts and, with --score, the selection."""

from __future__ import annotations

from scpo.cli import main
from scpo.config import RunConfig
from scpo.experiment import inspect_data


def test_inspect_counts_and_selection(tmp_path):
    cfg = RunConfig().replace(synthetic_preset="tiny", cache_dir=str(tmp_path / "c"))
    rep = inspect_data(cfg, score=True, progress=False)
    assert rep["synthetic"] and set(rep["groups"]) == {"group-a", "group-b", "group-c"}
    for row in rep["groups"].values():
        assert row["pairs_train"] > 0 and row["pairs_test"] > 0
        assert 0 <= row["kept_by_filter"] <= row["pairs_train"]
        assert sum(row["w_hist_kept"]) == row["kept_by_filter"]


def test_inspect_cli(capsys):
    assert main(["data", "inspect", "--synthetic-preset", "tiny", "--json"]) == 0
    assert '"group-a"' in capsys.readouterr().out
