"""Bad input, tried systematically: one test per row of the table in ``docs/reliability.md``.

Errors end the run with one line ``scpo: error: <file>, row <n>, field '<f>': ...`` and exit
status 2 (tested through :func:`scpo.cli.main`, and once through a real subprocess); repairable
input is repaired, counted and reported with one warning.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scpo.cli import main
from scpo.config import RunConfig
from scpo.errors import CacheCorruptWarning, DataWarning, InputError, TruncationWarning
from scpo.experiment import prepare
from scpo.load import load_data


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
# helpers


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def good_pairs(n: int = 10, groups: tuple[str, ...] = ("A", "B")) -> list[dict[str, Any]]:
    """``n`` prompts x groups: enough split keys for a test, a global and a train part."""
    return [
        {"prompt": f"How do I plan task number {i}?", "chosen": f"Write down the steps of task {i} and start today.",
         "rejected": f"Task {i} is hard to say anything about.", "group": g}
        for i in range(n) for g in groups
    ]


def run_cli(capsys, tmp_path: Path, *args: str) -> tuple[int, str]:
    code = main(["run", "--quiet", "--output-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"),
                 "--plots", "false", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_exit_2(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("scpo: error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def small_cfg(tmp_path: Path, data: Path, dataset: str = "pairs", **kw: Any) -> RunConfig:
    base = dict(dataset=dataset, data_path=str(data), cache_dir=str(tmp_path / "cache"),
                output_dir=str(tmp_path / "run"), methods=["global", "full", "scpo"], learning_rates=[3e-3],
                steps=[10], pulls=[0.0], val_folds=1, global_steps=50, plots=False, save_models=False)
    base.update(kw)
    return RunConfig().replace(**base)


# ----------------------------------------------------------------------------------------------
# 1-2. missing or renamed column


def test_missing_column(tmp_path, capsys):
    f = jsonl(tmp_path / "pairs.jsonl", [{k: v for k, v in r.items() if k != "rejected"} for r in good_pairs(2)])
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "field 'rejected'", "missing column 'rejected'", "columns present")


def test_renamed_column_is_named_and_mappable(tmp_path, capsys):
    rows = [{("question" if k == "prompt" else k): v for k, v in r.items()} for r in good_pairs(10)]
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "field 'prompt'", "'question'")
    # the message lists the columns present; --columns maps the renamed one
    d = load_data(small_cfg(tmp_path, f, columns={"prompt": "question"}).data)
    assert len(d.pairs) == 20


# 3. wrong type


@pytest.mark.parametrize("field, value, needle", [
    ("chosen", 42, "expected text, got int"),
    ("prompt", ["a", "list"], "expected text, got list"),
    ("group", True, "expected text, got bool"),
    ("rejected", None, "missing value"),
])
def test_wrong_type(tmp_path, capsys, field, value, needle):
    rows = good_pairs(3)
    rows[2][field] = value
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 3", f"field '{field}'", needle)


def test_wrong_type_score(tmp_path, capsys):
    f = write_csv(tmp_path / "ratings.csv", ["prompt", "response", "score", "group", "session"],
                  [["p", "r1", "5", "A", "s1"], ["p", "r2", "high", "A", "s1"]])
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 2", "field 'score'", "must be a number")


# 4-5. empty or whitespace-only text


@pytest.mark.parametrize("value", ["", "   \t\n "])
def test_empty_or_whitespace_text(tmp_path, capsys, value):
    rows = good_pairs(3)
    rows[4]["chosen"] = value
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 5", "field 'chosen'", "empty or whitespace-only")


# 6. NaN / inf score or share


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_inf_score(tmp_path, capsys, score):
    f = jsonl(tmp_path / "ratings.jsonl", [
        '{"prompt": "p", "response": "r1", "score": 3, "group": "A", "session": "s"}',
        '{"prompt": "p", "response": "r2", "score": ' + score + ', "group": "A", "session": "s"}',
    ])
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 2", "field 'score'", "finite")


def test_nan_score_csv(tmp_path, capsys):
    f = write_csv(tmp_path / "ratings.csv", ["prompt", "response", "score", "group", "session"],
                  [["p", "r1", "1", "A", "s"], ["p", "r2", "nan", "A", "s"]])
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 2", "field 'score'", "finite")


@pytest.mark.parametrize("share, needle", [("float('nan')", "NaN or infinite"), ("1e999", "NaN or infinite"),
                                           ("nan", "NaN or infinite"), ("-0.2", "outside [0, 1]")])
def test_nan_or_inf_share(tmp_path, capsys, share, needle):
    sel = "defaultdict(<class 'list'>, {'Mexico': [0.5, " + share + ", 0.5]})"
    f = write_csv(tmp_path / "goqa.csv", ["question", "selections", "options", "source"],
                  [["Which?", "defaultdict(<class 'list'>, {'Mexico': [0.5, 0.3, 0.2]})", "['a', 'b', 'c']", ""],
                   ["Which else?", sel, "['a', 'b', 'c']", ""]])
    code, err = run_cli(capsys, tmp_path, "--dataset", "goqa", "--data-path", str(f), "--groups", "Mexico")
    assert_exit_2(code, err, str(f), "row 2", "field 'selections'", needle)


# 7-8. duplicate pairs; a pair whose chosen equals its rejected


def test_duplicate_and_identical_pairs_are_dropped_and_counted(tmp_path, caplog):
    rows = good_pairs(10)
    rows.append(dict(rows[0]))  # duplicate of row 1
    rows.append({**rows[1], "rejected": rows[1]["chosen"]})  # chosen == rejected
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    d = load_data(small_cfg(tmp_path, f).data)
    assert len(d.pairs) == 20
    assert d.stats["duplicate_pairs"] == 1 and d.stats["identical_pairs"] == 1
    assert d.stats["per_group"]["A"]["duplicate_pairs"] == 1 and d.stats["per_group"]["B"]["identical_pairs"] == 1


def test_repeated_pair_id_is_an_error(tmp_path, capsys):
    rows = good_pairs(3)
    for i, r in enumerate(rows):
        r["pair_id"] = f"id-{i}"
    rows[5]["pair_id"] = "id-1"
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 6", "field 'pair_id'", "repeats row 2")


# 9. all pairs of a group tied


def ratings_rows(groups: dict[str, bool], n_sessions: int = 10) -> list[dict[str, Any]]:
    """Per group and session, three responses to one prompt; ``tied`` groups give them one score."""
    rows = []
    for g, tied in groups.items():
        for s in range(n_sessions):
            for k, text in enumerate(["Make a plan and start today.", "Ask a friend for help.", "It depends."]):
                rows.append({"prompt": f"How do I handle problem {s}?", "response": f"{text} ({s})",
                             "score": 3 if tied else 5 - 2 * k, "group": g, "session": f"{g}-{s}"})
    return rows


def test_all_pairs_of_a_group_tied(tmp_path):
    f = jsonl(tmp_path / "ratings.jsonl", ratings_rows({"A": False, "B": True}))
    with pytest.warns(DataWarning, match=r"group 'B' has no usable pair \(30 ties\): it is left out"):
        exp = prepare(small_cfg(tmp_path, f, dataset="ratings"), progress=False)
    assert exp.groups == ["A"]
    assert exp.data.stats["per_group"]["B"] == {"role": "target", "sessions": 10, "pairs": 0, "ties": 30, "identical_texts": 0,
                                                "single_response_units": 0}


def test_every_group_tied_is_an_error(tmp_path, capsys):
    f = jsonl(tmp_path / "ratings.jsonl", ratings_rows({"A": True, "B": True}, n_sessions=2))
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "no usable pairs", "'A': 6 ties; 'B': 6 ties")


def test_requested_group_tied_while_others_are_not(tmp_path, capsys):
    f = jsonl(tmp_path / "ratings.jsonl", ratings_rows({"A": False, "B": True}, n_sessions=3))
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f), "--groups", "B")
    assert_exit_2(code, err, str(f), "field 'group'", "no usable pairs", "requested group(s)", "'B': 9 ties")


# 10. a group with no training pair left after the filter


def test_group_with_no_pair_left_after_the_filter(tmp_path, recwarn):
    from scpo.pipeline import run

    f = jsonl(tmp_path / "pairs.jsonl", good_pairs(10))
    res = run(small_cfg(tmp_path, f, tau=1e-9), progress=False)  # keeps a pair only where p < 1e-9
    msgs = [str(w.message) for w in recwarn.list]
    for g in ("A", "B"):
        assert res["selection"][g]["kept"] == 0 and res["selection"][g]["train_pairs"] > 0
        assert any(f"group {g!r}: no training pair left after the filter" in m for m in msgs)
        m = res["metrics"][g]
        assert m["scpo"]["pairs_used"] == 0
        assert m["scpo"]["all"]["mean"] == m["global"]["all"]["mean"]  # the global model itself
    # kept in the averages
    s = res["summary"]["all_groups"]
    assert s["scpo"]["pairs_used"] == 0.0
    assert s["scpo"]["all"] == pytest.approx(np.mean([res["metrics"][g]["scpo"]["all"]["mean"] for g in ("A", "B")]))


# 11. an unknown group requested


def test_unknown_group(tmp_path, capsys):
    f = jsonl(tmp_path / "pairs.jsonl", good_pairs(3, groups=("Mexico", "Chile")))
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f), "--groups", "Mexiko")
    assert_exit_2(code, err, str(f), "field 'group'", "'Mexiko' matches nothing", "closest names: Mexico")


# 12. a text longer than the model's context


def test_text_longer_than_the_context_is_truncated_counted_and_warned_once(tmp_path):
    rows = good_pairs(10)
    rows[6]["rejected"] = "This answer goes on and on. " * 120  # ~840 tokens > max_length
    rows[7]["rejected"] = rows[6]["rejected"]  # the same text in another pair: one distinct input
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = prepare(small_cfg(tmp_path, f, max_length=64), progress=False)
    trunc = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(trunc) == 1, [str(w.message) for w in trunc]
    msg = str(trunc[0].message)
    assert "1 of " in msg and "max_length=64" in msg
    assert f"{f.name}, row 7, field 'rejected'" in msg and "tokens" in msg
    assert exp.score_stats["truncated"] == 1
    # a second run answers from the cache and still counts and warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp2 = prepare(small_cfg(tmp_path, f, max_length=64), progress=False)
    assert exp2.score_stats["forward_passes"] == 0 and exp2.score_stats["truncated"] == 1
    assert sum(issubclass(w.category, TruncationWarning) for w in caught) == 1


# 13. invalid UTF-8


def test_invalid_utf8_names_row_and_field(tmp_path, capsys):
    lines = [json.dumps(r).encode() for r in good_pairs(3)]
    lines[3] = lines[3].replace(b"Write down", b"Caf\xe9 down")  # latin-1 byte in the 4th row's chosen
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 4", "field 'chosen'", "not valid UTF-8", "line 4")


def test_invalid_utf8_csv_via_the_real_command(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_bytes(b"prompt,chosen,rejected,group\np1,yes,no,A\np2,na\xefve,no,A\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "scpo", "run", "--quiet", "--dataset", "pairs", "--data-path", str(f),
                        "--output-dir", str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("scpo: error:") and str(f) in err and "row 2" in err and "field 'chosen'" in err


# 14-15. a config with an unknown key or an out-of-range value


def test_config_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  mode: head\n  learning_rate: 0.1\n")
    code, err = run_cli(capsys, tmp_path, "--config", str(cfg))
    assert_exit_2(code, err, str(cfg), "unknown key train.learning_rate", "learning_rates")


@pytest.mark.parametrize("yaml_text, needle", [
    ("select:\n  tau: 1.5\n", "tau must be in (0, 1]"),
    ("select:\n  beta: -1\n", "beta must be > 0"),
    ("train:\n  batch_size: 0\n", "--batch-size must be >= 1"),
    ("train:\n  steps: [-5]\n", "--steps must be >= 0"),
    ("data:\n  test_fraction: 1.0\n", "--test-fraction must be in (0, 1)"),
    ("model:\n  max_length: two\n", "model.max_length"),
])
def test_config_out_of_range_value(tmp_path, capsys, yaml_text, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml_text)
    code, err = run_cli(capsys, tmp_path, "--config", str(cfg))
    assert_exit_2(code, err, needle)


def test_out_of_range_flag(tmp_path, capsys):
    code, err = run_cli(capsys, tmp_path, "--tau", "1.5")
    assert_exit_2(code, err, "tau must be in (0, 1]")


# 16. a corrupt cache file


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-checksum", "garbage"])
def test_corrupt_cache_file_is_detected_and_rebuilt(tmp_path, damage):
    f = jsonl(tmp_path / "pairs.jsonl", good_pairs(10))
    cfg = small_cfg(tmp_path, f)
    exp1 = prepare(cfg, progress=False)
    (shard,) = list((tmp_path / "cache" / "features").glob("*/shard-*.npz"))
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # one bit: the file still parses, only the checksum tells
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "no-checksum":
        shard.with_suffix(".sha256").unlink()
    else:
        shard.write_bytes(b"not an npz file")
    with pytest.warns(CacheCorruptWarning, match="corrupt feature-cache shard"):
        exp2 = prepare(cfg, progress=False)
    assert exp2.score_stats["corrupt_cache_shards"] == [str(shard)]
    assert exp2.score_stats["cached"] == 0 and exp2.score_stats["computed"] == exp1.score_stats["computed"]
    np.testing.assert_array_equal(exp1.features, exp2.features)  # rebuilt, bit-identical
    # the rebuilt cache is trusted again
    exp3 = prepare(cfg, progress=False)
    assert exp3.score_stats["forward_passes"] == 0 and exp3.score_stats["corrupt_cache_shards"] == []


# ----------------------------------------------------------------------------------------------
# more cases: malformed files


@pytest.mark.parametrize("name, content, needles", [
    ("pairs.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A"}\n{"prompt": "p", "chosen": \n',
     ["row 2", "malformed JSON"]),
    ("pairs.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A"}\n["a", "list"]\n',
     ["row 2", "expected a JSON object"]),
    ("pairs.csv", "prompt,chosen,rejected,group\np,a,b,A\np,a,b,A,extra\n", ["row 2", "5 fields, the header 4"]),
    ("pairs.jsonl", "", ["no data rows"]),
    ("pairs.csv", "prompt,chosen,rejected,group\n", ["no data rows"]),
    ("pairs.xlsx", "x", ["unknown file type"]),
])
def test_malformed_files(tmp_path, capsys, name, content, needles):
    f = tmp_path / name
    f.write_text(content, encoding="utf-8")
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), *needles)


def test_missing_file(tmp_path, capsys):
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(tmp_path / "nope.jsonl"))
    assert_exit_2(code, err, "nope.jsonl", "file not found")


def test_split_key_that_would_cross_the_split(tmp_path, capsys):
    rows = [{"prompt": "p", "response": "r1", "score": 1, "group": "A", "session": "s", "split_key": "u1"},
            {"prompt": "p", "response": "r2", "score": 2, "group": "A", "session": "s", "split_key": "u2"}]
    f = jsonl(tmp_path / "ratings.jsonl", rows)
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 2", "field 'split_key'", "cross the train/test split")


def test_goqa_share_list_of_the_wrong_length(tmp_path, capsys):
    f = write_csv(tmp_path / "goqa.csv", ["question", "selections", "options", "source"],
                  [["Which?", "defaultdict(<class 'list'>, {'Mexico': [0.5, 0.5]})", "['a', 'b', 'c']", ""]])
    code, err = run_cli(capsys, tmp_path, "--dataset", "goqa", "--data-path", str(f), "--groups", "Mexico")
    assert_exit_2(code, err, str(f), "row 1", "field 'selections'", "2 shares for 3 options")


def test_prism_missing_turn(tmp_path, capsys):
    d = tmp_path / "prism"
    d.mkdir()
    jsonl(d / "survey.jsonl", [{"user_id": "u1", "location": {"reside_country": "Mexico"}}])
    jsonl(d / "utterances.jsonl", [
        {"user_id": "u1", "conversation_id": "c1", "turn": 0, "user_prompt": "hi", "model_response": "a", "score": 1},
        {"user_id": "u1", "conversation_id": "c1", "user_prompt": "hi", "model_response": "b", "score": 2},
    ])
    code, err = run_cli(capsys, tmp_path, "--dataset", "prism", "--data-path", str(d))
    assert_exit_2(code, err, "utterances.jsonl", "row 2", "field 'turn'")


def test_input_error_names_file_row_and_field():
    e = InputError("bad value", file="x.csv", row=3, field="score")
    assert str(e) == "x.csv, row 3, field 'score': bad value"
    assert (e.file, e.row, e.field, e.detail) == ("x.csv", 3, "score", "bad value")


def test_group_without_a_train_or_test_pair_after_the_split(tmp_path):
    rows = good_pairs(10)
    rows.append({**good_pairs(1)[0], "group": "C"})  # group C: a single prompt, so one side of the split only
    f = jsonl(tmp_path / "pairs.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exp = prepare(small_cfg(tmp_path, f), progress=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert "C" in exp.groups
    assert any(m.startswith("group 'C' has no train pair") or m.startswith("group 'C' has no test pair") for m in msgs)
    assert not any("'A'" in m or "'B'" in m for m in msgs)


def test_non_finite_features_from_the_model_stop_the_run(packaged_rm):
    from scpo import score
    from scpo.errors import ScpoError

    def nan_input(_module, args):  # the model itself produces a NaN feature for the first input of a batch
        x = args[0].clone()
        x[0, 0] = float("nan")  # the longest input comes first: row 2
        return (x,)

    handle = packaged_rm.score_layer.register_forward_pre_hook(nan_input)
    try:
        with pytest.raises(ScpoError, match="data.csv, row 2: the global model produced non-finite features"):
            score.encode_features(packaged_rm, ["p", "q"], ["a", "b b b b b"], progress=False,
                                  describe=lambda i: f"data.csv, row {i + 1}")
    finally:
        handle.remove()


@pytest.mark.parametrize(("column", "values", "row"), [
    ("chosen", ["x", "y", " \t\n", "z"], 3),  # whitespace only
    ("rejected", ["x", "y", "z", None], 4),  # missing
    ("split_key", ["u", "u", "\u3000\u00a0", "u"], 3),  # Unicode spaces, as str.strip() sees them
    ("group", [1, 2, 3, 4], 1),  # not text
])
def test_check_pairs_names_the_first_bad_row_of_the_first_bad_column(column, values, row):
    import pyarrow as pa

    from scpo.load import check_pairs

    cols = {"pair_id": list("abcd"), "group": ["A"] * 4, "prompt": ["p"] * 4, "chosen": ["c"] * 4, "rejected": ["r"] * 4,
            "split_key": ["k"] * 4, column: values}
    table = pa.Table.from_batches([b for b in pa.table(cols).to_batches(max_chunksize=2)])  # two chunks
    with pytest.raises(InputError) as e:
        check_pairs(table, "pairs.jsonl")
    assert str(e.value) == f"pairs.jsonl, row {row}, field {column!r}: empty or non-text value"
    cols = {**cols, "prompt": ["p", "p", "", "p"]}  # an earlier column with a bad row is named first
    with pytest.raises(InputError, match="row 3, field 'prompt'"):
        check_pairs(pa.table(cols), "pairs.jsonl")
    ok = {**cols, "prompt": ["p"] * 4, column: ["v"] * 4}
    check_pairs(pa.table(ok), "pairs.jsonl")


# ----------------------------------------------------------------------------------------------
# 33-45. reader hardening (issue 15): whatever column a value sits in, one line and exit 2


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "run" / "results.json").exists()


def test_duplicated_csv_header_column(tmp_path, capsys):
    f = write_csv(tmp_path / "pairs.csv", ["prompt", "chosen", "rejected", "group", "chosen"],
                  [["p", "a", "b", "A", "c"]])
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "header (line 1)", "field 'chosen'", "twice (positions 2 and 5)")
    assert_nothing_written(tmp_path)


def test_duplicated_key_in_one_json_object(tmp_path, capsys):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A"}\n'
                 '{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A", "meta": {"k": 1, "k": 2}}\n')
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), "row 2", "field 'k'", "appears twice in one JSON object")


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_line_separators_in_jsonl_strings_load(tmp_path, sep):
    rows = good_pairs(10)
    for r in rows:
        r["chosen"] += sep + "more"
    f = tmp_path / "pairs.jsonl"
    f.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    d = load_data(small_cfg(tmp_path, f).data)
    assert len(d.pairs) == 20 and list(d.pairs["source_row"]) == list(range(1, 21))
    assert d.pairs[0]["chosen"].endswith(sep + "more")


@pytest.mark.parametrize("line, needles", [
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A", "unused": ' + "9" * 5000 + "}",
     ["row 3", "unreadable JSON value", "Exceeds the limit"]),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A", "unused": ' + "[" * 100000 + "]" * 100000 + "}",
     ["row 3", "nested too deeply"]),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A", "unused": "x\\ud800y"}',
     ["row 3", "field 'unused'", "lone surrogate U+D800"]),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": "A", "unused": {"\\udfff": 1}}',
     ["row 3", "field 'unused'", "lone surrogate U+DFFF"]),
    ('{"prompt": "p", "chosen": NaN, "rejected": "b", "group": "A"}', ["row 3", "field 'chosen'", "got float nan"]),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "group": ' + "7" * 400 + "}", None),  # a number as group: fine
])
def test_values_the_readers_cannot_represent(tmp_path, capsys, line, needles):
    f = tmp_path / "pairs.jsonl"
    good = [json.dumps(r) for r in good_pairs(1)]
    f.write_text("\n".join([*good, line]) + "\n", encoding="utf-8")
    if needles is None:
        assert {"A", "7" * 400} <= set(load_data(small_cfg(tmp_path, f).data).pairs["group"])
        return
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), *needles)
    assert len(err) < 500
    assert_nothing_written(tmp_path)


def test_huge_integer_score_is_not_finite(tmp_path, capsys):
    rows = [{"prompt": "p", "response": "r", "score": 10**400, "group": "A", "session": "s"}]
    code, err = run_cli(capsys, tmp_path, "--dataset", "ratings", "--data-path", str(jsonl(tmp_path / "r.jsonl", rows)))
    assert_exit_2(code, err, "row 1", "field 'score'", "finite", "401 digits")


def test_invalid_utf8_in_an_unused_column(tmp_path, capsys):
    f = tmp_path / "pairs.csv"
    f.write_bytes(b"prompt,chosen,rejected,group,notes\np,a,b,A,ok\np,a,c,A,caf\xe9\n")
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, "row 2", "field 'notes'", "not valid UTF-8")


def test_parquet_value_arrow_cannot_convert(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"prompt": ["p", "q"], "chosen": ["a", "a"], "rejected": ["b", "b"], "group": ["A", "A"],
                      "when": pa.array([0, 2**62], pa.timestamp("us"))})  # beyond datetime's year 9999
    pq.write_table(table, tmp_path / "pairs.parquet")
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(tmp_path / "pairs.parquet"))
    assert_exit_2(code, err, "row 2", "field 'when'", "unreadable value")


def test_duplicated_parquet_column(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_arrays([pa.array(["p"]), pa.array(["a"]), pa.array(["b"]), pa.array(["A"]), pa.array(["c"])],
                             names=["prompt", "chosen", "rejected", "group", "chosen"])
    pq.write_table(t, tmp_path / "pairs.parquet")
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(tmp_path / "pairs.parquet"))
    assert_exit_2(code, err, "field 'chosen'", "twice")


@pytest.mark.parametrize("kind", ["fifo", "directory", "unreadable", "broken-symlink"])
def test_unreadable_data_file(tmp_path, capsys, kind):
    f = tmp_path / "pairs.jsonl"
    if kind == "fifo":
        os.mkfifo(f)
        needle = "not a regular file"
    elif kind == "directory":
        f.mkdir()
        needle = "no data files"
    elif kind == "broken-symlink":
        f.symlink_to(tmp_path / "gone.jsonl")
        needle = "file not found"
    else:
        jsonl(f, good_pairs(2))
        f.chmod(0)
        if os.access(f, os.R_OK):
            pytest.skip("running as root: permissions do not stop reading")
        needle = "permission denied"
    code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f))
    assert_exit_2(code, err, str(f), needle)
    assert_nothing_written(tmp_path)


def test_group_names_differing_only_in_normalisation_are_one_group(tmp_path):
    rows = good_pairs(4, groups=("Curac\u0327ao", "Cura\u00e7ao"))
    d = load_data(small_cfg(tmp_path, jsonl(tmp_path / "pairs.jsonl", rows)).data)
    assert d.default_groups == ["Cura\u00e7ao"] and set(d.pairs["group"]) == {"Cura\u00e7ao"}
    assert d.group_matches == {"Cura\u00e7ao": sorted({"Curac\u0327ao", "Cura\u00e7ao"})}
    d = load_data(small_cfg(tmp_path, jsonl(tmp_path / "pairs.jsonl", rows), groups=["Curac\u0327ao"]).data)
    assert list(d.group_matches) == ["Cura\u00e7ao"]


@pytest.mark.parametrize("how", ["yaml", "flag", "api"])
def test_null_group_name_is_an_error(tmp_path, capsys, how):
    from scpo.config import DataConfig
    from scpo.errors import ConfigError

    f = jsonl(tmp_path / "pairs.jsonl", good_pairs(3))
    if how == "api":
        with pytest.raises(ConfigError, match="null"):
            DataConfig(dataset="pairs", data_path=str(f), groups=[None])
        return
    if how == "yaml":
        y = tmp_path / "c.yaml"
        y.write_text(f"data: {{dataset: pairs, data_path: {f}, groups: [A, null]}}\n")
        code, err = run_cli(capsys, tmp_path, "--config", str(y))
    else:
        code, err = run_cli(capsys, tmp_path, "--dataset", "pairs", "--data-path", str(f), "--groups", "A,null")
    assert_exit_2(code, err, "null")
