"""Downstream best-of-N (issue 16): the choice, its statistics, the candidates, the GlobalOpinionQA variant."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scpo.config import DataConfig
from scpo.evaluate import cluster_bootstrap_ci
from scpo.load.goqa import answer_distributions, load_goqa
from scpo.load.synthetic import draw_candidates, generate
from scpo.studies.downstream import (
    best_of_n,
    block_items,
    downstream_tables,
    goqa_candidates,
    pick,
    question_items,
    score_split,
    synthetic_candidates,
    tie_order,
)

SHARED = Path(os.environ.get("SCPO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
GOQA = SHARED / "goqa" / "global_opinions_partial.csv"


def _fake_split(groups, table, settings, models, features, seeds=(0,)):
    """score_split on hand-made models: ``models[(g, m, s)]`` weights over ``features`` (no encoder)."""
    exp = SimpleNamespace(groups=list(groups), cfg=SimpleNamespace(data=SimpleNamespace(split_seed=0)))
    res = SimpleNamespace(models=models)
    methods = sorted({k[1] for k in models}, key=lambda m: (m != "global", m))
    return score_split(exp, res, table, features, settings, methods, list(seeds), None, [], {}), methods


def test_pick_breaks_ties_by_the_shared_order_and_skips_padding() -> None:
    r = np.array([[1.0, 3.0, 3.0, 0.0], [5.0, 2.0, 1.0, 9.0]])
    order = np.array([[0.9, 0.1, 0.7, 0.0], [0.0, 0.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, True], [True, True, True, False]])
    assert pick(r, order, valid).tolist() == [2, 0]


def test_reward_equal_to_the_true_utility_reaches_the_oracle_exactly() -> None:
    table = synthetic_candidates("tiny", 0, 12, None, ["group-a", "group-b", "group-c"])
    for n in (1, 3, 12):
        items = block_items(table, ["group-a", "group-b", "group-c"], n)
        order = tie_order(items.rows.shape, 0)
        for g in ("group-a", "group-b", "group-c"):
            m = items.group == g
            truth = table.truth[g][items.rows[m]]
            got = best_of_n(truth, truth, order[m])  # the reward model is the truth itself
            assert np.array_equal(got, truth.max(axis=1))
        # through the study: a model whose reward equals the utility closes the whole gap
    feats = table.truth["group-b"][:, None]  # one feature: the group's utility
    items = {"N=4": block_items(table, ["group-b"], 4)}
    models = {("group-b", "global", 0): np.array([0.0]), ("group-b", "oracle-model", 0): np.array([1.0])}
    sp, methods = _fake_split(["group-b"], table, items, models, feats)
    out = downstream_tables([sp], ["group-b"], methods, [0], {"all_groups": ["group-b"]}, n_boot=200)
    row = out["settings"]["N=4"]["per_group"]["group-b"]
    assert row["oracle-model"]["utility"]["mean"] == pytest.approx(row["oracle"]["mean"], abs=1e-12)
    assert row["oracle-model"]["gap_closed"]["mean"] == pytest.approx(1.0)
    assert row["oracle-model"]["loss_rate"]["mean"] == 0.0


def test_constant_reward_equals_a_random_pick_within_the_ci() -> None:
    groups = ["group-a", "group-h"]
    table = synthetic_candidates("default", 0, 16, 60, groups)
    items = block_items(table, ["group-a"], 4)
    order = tie_order(items.rows.shape, 3)
    truth = table.truth["group-a"][items.rows]
    clusters = items.cluster
    const = best_of_n(np.zeros(truth.shape), truth, order)
    lo, hi = cluster_bootstrap_ci(const - truth.mean(axis=1), clusters, n_boot=1000)
    assert lo <= 0.0 <= hi  # a constant reward is a random pick: no difference beyond noise
    good = best_of_n(truth, truth, order)  # the same test sees a real difference
    lo, hi = cluster_bootstrap_ci(good - truth.mean(axis=1), clusters, n_boot=1000)
    assert lo > 0.0


def test_candidates_are_never_texts_of_the_benchmark_and_distinct_per_prompt() -> None:
    data = generate("default", 0)
    texts = set(data.pairs["chosen"]) | set(data.pairs["rejected"])
    draw = draw_candidates("default", 0, 64)
    assert len(draw.prompts) == 90 and all(len(r) == 64 for r in draw.responses)
    flat = [r for rs in draw.responses for r in rs]
    assert not texts.intersection(flat)
    assert all(len(set(rs)) == len(rs) for rs in draw.responses)
    assert set(draw.prompts) <= set(data.pairs["prompt"])
    # new draws: another stream gives other candidates; the same stream the same ones
    assert draw_candidates("default", 0, 4, 3).responses == [rs[:4] for rs in draw_candidates("default", 0, 4, 3).responses]
    assert draw_candidates("default", 0, 4, 3, stream=1).responses != draw_candidates("default", 0, 4, 3).responses


def test_a_run_rejects_candidates_that_are_run_texts(tiny_experiment) -> None:
    from scpo.studies.downstream import DownstreamStudy

    study = DownstreamStudy.__new__(DownstreamStudy)
    study.table = synthetic_candidates("tiny", 0, 4, None, tiny_experiment.groups)
    study._check_new(tiny_experiment)  # real draws pass
    p, r = tiny_experiment.texts(np.array([0]))
    study.table.prompts[0], study.table.responses[0] = p[0], r[0]
    with pytest.raises(AssertionError, match="texts of the run"):
        study._check_new(tiny_experiment)


def _write_goqa(path: Path) -> None:
    rows = [
        ("Q1?", {"Germany": [0.5, 0.3, 0.2], "Britain": [0.2, 0.2, 0.6], "Great Britain": [0.4, 0.2, 0.4]},
         ["A", "B", "C"]),
        ("Q2?", {"Germany": [0.1, 0.9], "Britain": [0.7, 0.3]}, ["yes", "no"]),
    ]
    lines = ["question,selections,options,source"]
    for q, sel, opts in rows:
        lines.append(f'"{q}","defaultdict(<class \'list\'>, {json.dumps(sel).replace(chr(34), chr(39))})",'
                     f'"{opts!r}",')
    path.write_text("\n".join(lines) + "\n")


def test_goqa_variant_on_a_two_question_file_gives_the_hand_computed_shares(tmp_path: Path) -> None:
    f = tmp_path / "two.csv"
    _write_goqa(f)
    dists = answer_distributions(DataConfig(dataset="goqa", data_path=str(f)))
    # Britain and Great Britain are one group (United Kingdom): their shares averaged
    assert dists[0][2]["United Kingdom"] == pytest.approx([0.3, 0.2, 0.5])
    groups = ["Germany", "United Kingdom"]
    table = goqa_candidates(dists, groups)
    assert table.population.tolist() == pytest.approx([0.4, 0.25, 0.35, 0.4, 0.6])  # mean over the two countries
    items = {"questions": question_items(table, {g: {"Q1?", "Q2?"} for g in groups})}
    # one feature per candidate: a model's weights are its rewards of the 5 options (A, B, C | yes, no)
    feats = np.eye(5)
    rewards = {"global": [1, 0, 0, 0, 1], "group": [0, 0, 1, 1, 0]}
    models = {(g, m, 0): np.asarray(w, dtype=float) for g in groups for m, w in rewards.items()}
    sp, methods = _fake_split(groups, table, items, models, feats)
    out = downstream_tables([sp], groups, methods, [0], {"all_groups": groups}, n_boot=200)
    tab = out["settings"]["questions"]
    de, uk = tab["per_group"]["Germany"], tab["per_group"]["United Kingdom"]
    # Germany: global picks A (0.5) and no (0.9); the group model C (0.2) and yes (0.1)
    assert de["global"]["utility"]["mean"] == pytest.approx((0.5 + 0.9) / 2)
    assert de["group"]["utility"]["mean"] == pytest.approx((0.2 + 0.1) / 2)
    assert de["oracle"]["mean"] == pytest.approx((0.5 + 0.9) / 2)
    assert de["random"]["mean"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    # United Kingdom: global A (0.3), no (0.3); the group model C (0.5), yes (0.7)
    assert uk["global"]["utility"]["mean"] == pytest.approx(0.3)
    assert uk["group"]["utility"]["mean"] == pytest.approx(0.6)
    assert uk["group"]["gain"]["mean"] == pytest.approx(0.3)
    assert uk["group"]["win_rate"]["mean"] == pytest.approx(1.0)
    assert uk["group"]["gap_closed"]["mean"] == pytest.approx(0.3 / (0.6 - 0.3))
    # population utility: global picks A (0.4), no (0.6); the UK model C (0.35), yes (0.4)
    assert uk["group"]["population_loss"]["mean"] == pytest.approx(((0.4 - 0.35) + (0.6 - 0.4)) / 2)
    assert tab["group_sets"]["all_groups"]["group"]["utility"]["mean"] == pytest.approx((0.15 + 0.6) / 2)
    # only test questions count: with Q2 trained on, Q1 alone
    items = {"questions": question_items(table, {g: {"Q1?"} for g in groups})}
    sp, methods = _fake_split(groups, table, items, models, feats)
    out = downstream_tables([sp], groups, methods, [0], {"all_groups": groups}, n_boot=50)
    assert out["settings"]["questions"]["per_group"]["United Kingdom"]["group"]["utility"]["mean"] == pytest.approx(0.5)


@pytest.mark.skipif(not GOQA.is_file(), reason=f"the real GlobalOpinionQA copy is not at {GOQA} (set SCPO_SHARED_DATA)")
def test_goqa_answer_distributions_agree_with_the_loader_on_the_real_file() -> None:
    cfg = DataConfig(dataset="goqa", data_path=str(GOQA))
    data = load_goqa(cfg)
    dists = answer_distributions(cfg)
    for g, st in data.stats["per_group"].items():
        assert sum(g in d for _, _, d in dists) == st["questions"], g
        for _, opts, d in dists:
            if g in d:
                assert len(d[g]) == len(opts) and sum(d[g]) == pytest.approx(1.0, abs=0.05)


def test_the_study_in_a_run_and_plain_run_without_it(tiny_experiment, tmp_path: Path) -> None:
    from scpo.cli.runs import EVALUATE_DEFAULTS
    from scpo.pipeline import run

    assert tiny_experiment.cfg.studies.downstream_n == []  # plain `scpo run` (and `make run`): no study
    assert EVALUATE_DEFAULTS["downstream_n"] == [4, 16, 64]
    cfg = tiny_experiment.cfg.replace(methods=["global", "full", "scpo"], seeds=[0, 1], downstream_n=[2, 8],
                                      output_dir=str(tmp_path / "run"), n_boot=100, val_folds=1, save_models=False)
    res = run(cfg, progress=False, exp=tiny_experiment)
    ds = res["downstream"]
    assert ds["kind"] == "synthetic" and ds["n"] == [2, 8] and ds["candidates"] == 12 * 8
    assert ds["score"]["computed"] + ds["score"]["cached"] == 12 * 8
    assert res["timing_s"]["downstream"] > 0
    for n in ("N=2", "N=8"):
        tab = ds["settings"][n]
        for name in ("all_groups", "minority_groups", "majority_groups"):
            row = tab["group_sets"][name]
            assert row["random"]["mean"] <= row["oracle"]["mean"]
            for m in ("global", "full", "scpo"):
                u = row[m]["utility"]
                assert u["ci95"][0] <= u["mean"] <= u["ci95"][1] <= row["oracle"]["ci95"][1] + 1e-9
            assert row["global"]["gain"]["mean"] == 0.0
        assert "scpo vs full" in tab["tests"]
    assert [e["mean"] for e in ds["steering"]["alpha"]["scpo"]["all_groups"]["gain"]][0] == 0.0
    text = (tmp_path / "run" / "report.md").read_text()
    assert "## Downstream" in text and "**N=8**" in text
    assert (tmp_path / "run" / "plots" / "downstream.png").stat().st_size > 1000


@pytest.mark.parametrize(("mode", "layers", "says"), [("full", "score", "head mode only"), ("head", "pooler", "own pooler")])
def test_the_study_says_why_it_is_skipped(mode, layers, says) -> None:
    from scpo.studies.downstream import DownstreamStudy

    exp = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(mode=mode, head_layers=layers)))
    study = DownstreamStudy(exp, [4, 16])
    assert study.table is None and says in study.skipped
    assert study.results(exp, ["global", "scpo"], [0]) == {"skipped": study.skipped}


def _candidates_file(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_own_candidates_file_is_read_as_shares_and_bad_rows_name_row_and_field(tmp_path: Path) -> None:
    from scpo.errors import InputError
    from scpo.load.candidates import load_candidate_choices

    f = _candidates_file(tmp_path / "c.jsonl", [
        {"prompt": "P1", "candidates": ["a", "b", "c"], "choices": {"Chile": [3, 1, 0], "Japan": [0.2, 0.2, 0.6]}},
        {"prompt": "P2", "candidates": ["x", "y"], "choices": {"Chile": [1, 1]}},
    ])
    rows = load_candidate_choices(f)
    assert rows[0] == ("P1", ["a", "b", "c"], {"Chile": [0.75, 0.25, 0.0], "Japan": pytest.approx([0.2, 0.2, 0.6])})
    assert rows[1][2] == {"Chile": [0.5, 0.5]}
    bad = [({"prompt": "P", "candidates": ["a", "b"], "choices": {"Chile": [1]}}, "choices.Chile", "expected 2 numbers"),
           ({"prompt": "P", "candidates": ["a", "b"], "choices": {"Chile": [1, -1]}}, "choices.Chile", ">= 0"),
           ({"prompt": "P", "candidates": ["a", "b"], "choices": {"Chile": [0, 0]}}, "choices.Chile", "every count is 0"),
           ({"prompt": "P", "candidates": ["a"], "choices": {"Chile": [1]}}, "candidates", "at least two"),
           ({"prompt": "P", "choices": {"Chile": [1, 1]}}, "candidates", "missing field"),
           ({"prompt": "P1", "candidates": ["a", "b"], "choices": {"Chile": [1, 1]}}, "prompt", "repeats row 1")]
    for rec, field, text in bad:
        first = {"prompt": "P1", "candidates": ["a", "b"], "choices": {"Chile": [1, 1]}}
        g = _candidates_file(tmp_path / "bad.jsonl", [first, rec])
        with pytest.raises(InputError, match=text) as e:
            load_candidate_choices(g)
        assert (e.value.file, e.value.row, e.value.field) == ("bad.jsonl", 2, field)


def test_own_candidates_in_a_run_score_picks_by_held_out_shares(tiny_experiment, tmp_path: Path) -> None:
    """``--downstream-candidates``: every prompt of the file is an item of every group with choices for
    it, except prompts a group trained on; a candidate that is a text of the run is an error."""
    from scpo.errors import InputError
    from scpo.pipeline import run

    exp = tiny_experiment
    g0 = exp.groups[0]
    train_rows = np.flatnonzero((exp.group == g0) & (exp.split == "train"))
    trained_prompt = exp.texts(exp.chosen_row[train_rows[:1]])[0][0]
    shares = {g: [1, 2, 3] for g in exp.groups}
    f = _candidates_file(tmp_path / "mine.jsonl", [
        {"prompt": "A prompt nobody trained on?", "candidates": ["one new answer", "another", "a third"],
         "choices": shares},
        {"prompt": "And a second new prompt?", "candidates": ["yes, do it", "no"],
         "choices": {g: [4, 1] for g in exp.groups}},
        {"prompt": trained_prompt, "candidates": ["a fresh reply", "a second fresh reply"],
         "choices": {g: [1, 0] for g in exp.groups}},
    ])
    cfg = exp.cfg.replace(methods=["global", "full", "scpo"], seeds=[0], downstream_candidates=str(f),
                          output_dir=str(tmp_path / "run"), n_boot=50, val_folds=1, save_models=False)
    ds = run(cfg, progress=False, exp=exp)["downstream"]
    assert ds["kind"] == "answer_shares" and ds["source"] == "mine.jsonl" and ds["candidates"] == 7
    per = ds["settings"]["questions"]["per_group"]
    assert per[g0]["items"] == 2  # the prompt it trained on is not one of its items
    assert all(per[g]["items"] == 3 for g in exp.groups[1:] if (exp.group == g).any()
               and trained_prompt not in set(exp.texts(exp.chosen_row[np.flatnonzero((exp.group == g)
                                                                                      & (exp.split == "train"))])[0]))
    for g in exp.groups:
        row = per[g]
        assert row["random"]["mean"] <= row["oracle"]["mean"] <= 1.0
        for m in ("global", "full", "scpo"):
            assert 0.0 <= row[m]["utility"]["mean"] <= row["oracle"]["mean"] + 1e-12
    text = (tmp_path / "run" / "report.md").read_text()
    assert "`mine.jsonl`" in text and "share of the group's people matched" in text
    # a candidate that is a (prompt, response) of the run's pairs: an error naming the file
    p, r = exp.texts(exp.chosen_row[train_rows[:1]])
    g = _candidates_file(tmp_path / "clash.jsonl", [{"prompt": p[0], "candidates": [r[0], "something new"],
                                                     "choices": {g0: [1, 1]}}])
    with pytest.raises(InputError, match="held-out choices must be on new candidates") as e:
        run(cfg.replace(downstream_candidates=str(g), output_dir=str(tmp_path / "run2")), progress=False, exp=exp)
    assert e.value.file == "clash.jsonl"


def test_a_bad_candidates_file_exits_2_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from scpo.cli import main

    f = _candidates_file(tmp_path / "c.jsonl", [{"prompt": "P", "candidates": ["a", "b"], "choices": {"group-a": [1]}}])
    out = tmp_path / "run"
    assert main(["run", "--quiet", "--synthetic-preset", "tiny", "--downstream-candidates", str(f),
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "c.jsonl" in err and "row 1" in err and "choices.group-a" in err
    assert not out.exists() or not any(out.iterdir())
