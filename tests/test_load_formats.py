"""Preference data the way TRL and ``datasets`` users hold it, and the population named by the user.

Sources: ``.jsonl``, ``.json`` (array or lines), ``.csv``, ``.parquet``, a folder of shards split by
file name, a ``save_to_disk`` folder, a Hub id (``datasets.load_dataset(hub_id, split=...)``,
tested on a local folder of the same schema: the Hub is unreachable here). TRL formats: explicit
or implicit prompt, standard or conversational. Groups: ``--group-value``, ``--group-column``,
``--population-groups`` (issue 11: population pairs -> ``global_pairs``; ``--groups`` never drops rows).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scpo.cli import main
from scpo.config import DataConfig, RunConfig
from scpo.errors import ConfigError, InputError
from scpo.load import load_data


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(path: Path | str, dataset: str = "pairs", **kw: Any) -> DataConfig:
    return DataConfig(dataset=dataset, data_path=str(path), **kw)


def explicit(n: int = 12) -> list[dict[str, Any]]:
    """TRL's standard explicit-prompt format: prompt, chosen, rejected, no group column."""
    return [{"prompt": f"How should I plan task {i}?", "chosen": f"Write the steps of task {i} down and start.",
             "rejected": f"Task {i} cannot be planned."} for i in range(n)]


def implicit(n: int = 12) -> list[dict[str, Any]]:
    """TRL's standard implicit-prompt format: the prompt is the shared prefix of chosen and rejected."""
    return [{"chosen": f"Question {i}: is planning useful? Answer: yes, write the steps down.",
             "rejected": f"Question {i}: is planning useful? Answer: no."} for i in range(n)]


def conversational(n: int = 12, *, with_prompt: bool = True) -> list[dict[str, Any]]:
    """TRL's conversational format (explicit: prompt messages; implicit: the conversation shared)."""
    out = []
    for i in range(n):
        user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Plan task {i}?"}]
        good = [{"role": "assistant", "content": f"Write the steps of task {i} down."}]
        bad = [{"role": "assistant", "content": "No."}]
        out.append({"prompt": user, "chosen": good, "rejected": bad} if with_prompt
                   else {"chosen": user + good, "rejected": user + bad})
    return out


# ----------------------------------------------------------------------------------------------
# TRL's formats


def test_explicit_prompt_without_a_group_column_and_group_value(tmp_path):
    f = jsonl(tmp_path / "trl.jsonl", explicit())
    with pytest.raises(InputError, match="--group-value NAME"):
        load_data(cfg(f))
    d = load_data(cfg(f, group_value="Chile"))
    assert d.default_groups == ["Chile"] and set(d.pairs["group"]) == {"Chile"} and len(d.pairs) == 12
    assert d.pairs[0]["prompt"] == "How should I plan task 0?" and d.provenance["group_value"] == "Chile"


def test_implicit_prompt_is_the_shared_prefix_as_trl_cuts_it(tmp_path):
    f = jsonl(tmp_path / "implicit.jsonl", implicit())
    d = load_data(cfg(f, group_value="G"))
    row = d.pairs[0]
    assert row["prompt"] == "Question 0: is planning useful? Answer:"  # the space goes with the completions
    assert row["chosen"] == " yes, write the steps down." and row["rejected"] == " no."
    assert d.stats["implicit_prompt_rows"] == 12 and d.split_unit == "prompt"


def test_implicit_prompt_without_a_shared_prefix_is_an_error(tmp_path):
    f = jsonl(tmp_path / "x.jsonl", [{"chosen": "yes", "rejected": "no"}])
    with pytest.raises(InputError, match="missing column 'prompt'.*share no prefix") as e:
        load_data(cfg(f, group_value="G"))
    assert e.value.row == 1 and e.value.field == "prompt"


@pytest.mark.parametrize("with_prompt", [True, False])
def test_conversational_last_user_turn_and_assistant_reply(tmp_path, with_prompt):
    f = jsonl(tmp_path / "conv.jsonl", conversational(with_prompt=with_prompt))
    d = load_data(cfg(f, group_value="G"))
    row = d.pairs[3]
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("Plan task 3?", "Write the steps of task 3 down.", "No.")
    assert d.stats["conversational_rows"] == 12 and d.stats["context_dropped"] == 12  # the system turn
    assert d.stats["implicit_prompt_rows"] == (0 if with_prompt else 12)


def test_prompt_column_beside_whole_conversations(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized's shape: a prompt text, and chosen/rejected holding the whole chat."""
    rows = [{"prompt": f"Plan task {i}?",
             "chosen": [{"role": "user", "content": f"Plan task {i}?"}, {"role": "assistant", "content": "Steps."}],
             "rejected": [{"role": "user", "content": f"Plan task {i}?"}, {"role": "assistant", "content": "No."}]}
            for i in range(4)]
    d = load_data(cfg(jsonl(tmp_path / "uf.jsonl", rows), group_value="G"))
    assert (d.pairs[1]["prompt"], d.pairs[1]["chosen"], d.pairs[1]["rejected"]) == ("Plan task 1?", "Steps.", "No.")


def test_identical_chosen_and_rejected_are_dropped_and_counted_in_every_format(tmp_path):
    same = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    rows = [*implicit(3), {"chosen": "same text", "rejected": "same text"}]
    assert load_data(cfg(jsonl(tmp_path / "a.jsonl", rows), group_value="G")).stats["identical_pairs"] == 1
    rows = [*conversational(3, with_prompt=False), {"chosen": same, "rejected": same}]
    assert load_data(cfg(jsonl(tmp_path / "b.jsonl", rows), group_value="G")).stats["identical_pairs"] == 1


@pytest.mark.parametrize("change, needle", [
    ({"chosen": [{"role": "assistant", "content": ["a", "list"]}]}, "content must be text"),
    ({"chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]}, "one assistant"),
    ({"prompt": [{"role": "system", "content": "s"}]}, "no user turn"),
    ({"chosen": []}, "list of messages"),
    ({"chosen": ["text"]}, "'role'"),
])
def test_bad_conversations_name_row_and_field(tmp_path, change, needle):
    rows = conversational(3)
    rows[1].update(change)
    f = jsonl(tmp_path / "conv.jsonl", rows)
    with pytest.raises(InputError, match=needle) as e:
        load_data(cfg(f, group_value="G"))
    assert e.value.row == 2 and e.value.field in change


def test_group_column_and_its_conflicts(tmp_path):
    rows = [{**r, "country": "Chile" if i % 2 else "Mexico"} for i, r in enumerate(explicit())]
    f = jsonl(tmp_path / "g.jsonl", rows)
    d = load_data(cfg(f, group_column="country"))
    assert d.default_groups == ["Chile", "Mexico"]
    with pytest.raises(ConfigError, match="exclude"):
        cfg(f, group_column="country", group_value="Chile")
    with pytest.raises(ConfigError, match="contradicts"):
        cfg(f, group_column="country", columns={"group": "other"})
    with pytest.raises(ConfigError, match="only for --dataset pairs or ratings"):
        DataConfig(dataset="goqa", group_value="Chile")


# ----------------------------------------------------------------------------------------------
# sources


def test_json_array_and_json_lines(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(explicit(5), indent=1), encoding="utf-8")
    b = jsonl(tmp_path / "b.json", explicit(5))
    for f in (a, b):
        d = load_data(cfg(f, group_value="G"))
        assert len(d.pairs) == 5 and list(d.pairs["source_row"]) == [1, 2, 3, 4, 5]
    a.write_text(json.dumps(explicit(2) + [{"prompt": "p", "chosen": 3, "rejected": "r"}]), encoding="utf-8")
    with pytest.raises(InputError, match="expected text") as e:
        load_data(cfg(a, group_value="G"))
    assert e.value.row == 3 and e.value.field == "chosen"


def shards(folder: Path, mixed: bool = True) -> Path:
    """A folder split by file name, as a Hub repository is: train in two shards, test in one
    (``mixed``: one train shard Parquet, which scpo reads and ``datasets.load_dataset`` refuses)."""
    (folder / "data").mkdir(parents=True)
    rows = [{**r, "group": "A" if i % 2 else "B"} for i, r in enumerate(explicit(12))]
    jsonl(folder / "data" / "train-00000-of-00002.jsonl", rows[:4])
    if mixed:
        pq.write_table(pa.Table.from_pylist(rows[4:8]), folder / "data" / "train-00001-of-00002.parquet")
    else:
        jsonl(folder / "data" / "train-00001-of-00002.jsonl", rows[4:8])
    jsonl(folder / "data" / "test-00000-of-00001.jsonl", rows[8:])
    (folder / "README.md").write_text("# a data set card\n")
    return folder


def test_folder_of_shards_split_by_file_name(tmp_path):
    folder = shards(tmp_path / "repo")
    d = load_data(cfg(folder))
    assert len(d.pairs) == 8 and d.provenance["split"] == "train" and len(d.provenance["files"]) == 2
    assert load_data(cfg(folder, data_split="test")).pairs["prompt"][0] == "How should I plan task 8?"
    with pytest.raises(InputError, match="no split 'validation'"):
        load_data(cfg(folder, data_split="validation"))
    # a bad row names its shard and its row within the shard
    jsonl(folder / "data" / "train-00000-of-00002.jsonl", [*explicit(2), {"prompt": "p", "chosen": "c"}])
    with pytest.raises(InputError, match="train-00000-of-00002.jsonl, row 3"):
        load_data(cfg(folder, group_value="G"))


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no data files"):
        load_data(cfg(tmp_path / "empty"))


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    rows = conversational(6)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    d = load_data(cfg(tmp_path / "one", group_value="G"))
    assert len(d.pairs) == 6 and d.pairs[0]["prompt"] == "Plan task 0?" and d.provenance["format"] == "save_to_disk"
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    assert len(load_data(cfg(tmp_path / "dict", group_value="G", data_split="test")).pairs) == 2
    with pytest.raises(InputError, match="no split 'dev'"):
        load_data(cfg(tmp_path / "dict", group_value="G", data_split="dev"))


def test_hub_id_goes_through_load_dataset_with_the_split(tmp_path, monkeypatch):
    """The Hub code path, pointed at a local folder of the same schema (the Hub is unreachable)."""
    folder = shards(tmp_path / "repo", mixed=False)
    real = datasets.load_dataset
    calls = []

    def fake(path, *args, **kw):
        calls.append((path, args, kw))
        return real(str(folder), *args, **kw)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.chdir(tmp_path)
    d = load_data(cfg("trl-lib/some_preferences", data_split="test"))
    assert calls == [("trl-lib/some_preferences", (), {"split": "test"})]
    assert len(d.pairs) == 4 and d.provenance["hub_id"] == "trl-lib/some_preferences"
    # row-level validation on top of datasets: the row within the split, the field
    bad = tmp_path / "bad"
    (bad / "data").mkdir(parents=True)
    jsonl(bad / "data" / "train-0.jsonl", [*explicit(2), {"prompt": "p", "chosen": "  ", "rejected": "r"}])
    folder = bad
    with pytest.raises(InputError, match=r"trl-lib/x \(split train\), row 3, field 'chosen'"):
        load_data(cfg("trl-lib/x", group_value="G"))


def test_hub_failure_is_an_input_error(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise ConnectionError("offline\nsecond line")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="offline$"):
        load_data(cfg("owner/name"))


# ----------------------------------------------------------------------------------------------
# population groups (issue 11) and --groups that never drops rows


def three_groups(n: int = 8) -> list[dict[str, Any]]:
    return [{"prompt": f"Prompt {i}", "chosen": f"good {i} {g}", "rejected": f"bad {i} {g}", "group": g}
            for i in range(n) for g in ("Pool", "Chile", "Mexico")]


@pytest.mark.parametrize("suffix", ["pairs", "ratings"])
def test_population_groups_go_to_global_pairs(tmp_path, suffix):
    rows = three_groups()
    if suffix == "ratings":
        rows = [{"prompt": r["prompt"], "response": t, "score": s, "group": r["group"], "session": f"s{k}"}
                for k, r in enumerate(rows) for t, s in ((r["chosen"], 2), (r["rejected"], 1))]
    f = jsonl(tmp_path / f"{suffix}.jsonl", rows)
    d = load_data(cfg(f, suffix, population_groups=["Pool"]))
    assert d.default_groups == ["Chile", "Mexico"] and list(d.group_matches) == ["Chile", "Mexico"]
    assert set(d.global_pairs["group"]) == {"Pool"} and len(d.global_pairs) == 8
    assert set(d.pairs["group"]) == {"Chile", "Mexico"} and len(d.pairs) == 16
    assert set(d.global_pairs.column_names) == set(d.pairs.column_names)
    assert d.stats["population_groups"] == ["Pool"] and d.stats["per_group"]["Pool"]["role"] == "population"
    # also a target: in both
    d = load_data(cfg(f, suffix, population_groups=["Pool"], groups=["Pool", "Chile"]))
    assert list(d.group_matches) == ["Pool", "Chile"] and len(d.global_pairs) == 8
    assert set(d.pairs["group"]) == {"Pool", "Chile", "Mexico"}  # Mexico: neither, stays
    assert d.stats["per_group"]["Pool"]["role"] == "target+population"
    assert d.stats["other_groups"] == ["Mexico"] and d.stats["pairs_other_groups"] == 8
    # --groups alone: targets only; nothing dropped
    d = load_data(cfg(f, suffix, groups=["Chile"]))
    assert d.global_pairs is None and len(d.pairs) == 24 and d.stats["other_groups"] == ["Mexico", "Pool"]


def test_unknown_or_only_population_groups(tmp_path):
    f = jsonl(tmp_path / "p.jsonl", three_groups(2))
    with pytest.raises(InputError, match="--population-groups: group 'Pol' matches nothing.*closest names: Pool") as e:
        load_data(cfg(f, population_groups=["Pol"]))
    assert e.value.field == "population_groups"
    with pytest.raises(InputError, match="every group of the data is a population group"):
        load_data(cfg(f, population_groups=["Pool", "Chile", "Mexico"]))
    with pytest.raises(ConfigError, match="only for --dataset pairs or ratings"):
        DataConfig(dataset="synthetic", population_groups=["group-a"])


def test_population_groups_flag_and_yaml(tmp_path, capsys):
    f = jsonl(tmp_path / "p.jsonl", three_groups(2))
    y = tmp_path / "c.yaml"
    y.write_text(f"data: {{dataset: pairs, data_path: {f}, population_groups: [Pool]}}\n")
    assert RunConfig.from_yaml(y).data.population_groups == ["Pool"]
    assert main(["data", "inspect", "--dataset", "pairs", "--data-path", str(f), "--population-groups", "Pool,Chile",
                 "--groups", "Mexico", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["population_groups"] == ["Pool", "Chile"] and list(out["groups"]) == ["Mexico"]


def test_singular_repeatable_flags_take_whole_names(tmp_path, capsys):
    """``--population-group NAME`` and ``--group NAME`` (repeatable) keep a name's comma: the plural
    flags split on commas, so a name like 'Team, north' needs the singular one."""
    rows = [{"prompt": f"Prompt {i}", "chosen": f"good {i} {g}", "rejected": f"bad {i} {g}", "group": g}
            for i in range(3) for g in ("Pool, main", "Pool two", "Team, north", "Chile")]
    f = jsonl(tmp_path / "p.jsonl", rows)
    assert main(["data", "inspect", "--dataset", "pairs", "--data-path", str(f), "--population-group", "Pool, main",
                 "--population-group", "Pool two", "--group", "Team, north", "--groups", "Chile", "--json",
                 "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["population_groups"] == ["Pool, main", "Pool two"]
    assert list(out["groups"]) == ["Team, north", "Chile"]  # in the order given: the lists add up
    # the plural flag splits the same name in two, and the error names the closest real name
    assert main(["data", "inspect", "--dataset", "pairs", "--data-path", str(f), "--population-groups",
                 "Pool, main", "--json", "--quiet"]) == 2
    assert "'Pool'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# end to end: each new format through `scpo run` with tiny settings

FAST = ["--quiet", "--methods", "global,full,scpo", "--val-folds", "1", "--global-steps", "50", "--plots", "false",
        "--learning-rates", "3e-3", "--steps", "10", "--pulls", "0", "--max-length", "48", "--save-models", "false"]


@pytest.mark.parametrize("name", ["conversational-implicit.jsonl", "implicit.csv", "save_to_disk", "population"])
def test_new_formats_run_end_to_end(tmp_path, name):
    extra: list[str] = ["--group-value", "Chile"]
    if name.startswith("conversational"):
        f = jsonl(tmp_path / name, conversational(30, with_prompt=False))
    elif name == "implicit.csv":
        import csv

        f = tmp_path / name
        with open(f, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["chosen", "rejected"])
            w.writeheader()
            w.writerows(implicit(30))
    elif name == "save_to_disk":
        f = tmp_path / "disk"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(conversational(30))}).save_to_disk(str(f))
    else:
        f = jsonl(tmp_path / "pop.jsonl", three_groups(20))
        extra = ["--population-groups", "Pool", "--groups", "Chile"]
    out = tmp_path / "run"
    code = main(["run", "--dataset", "pairs", "--data-path", str(f), *extra, "--output-dir", str(out),
                 "--cache-dir", str(tmp_path / "cache"), *FAST])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    stats = res["data"]["stats"]
    if name == "population":  # the population's train pairs, and only they, trained the global model
        assert stats["population_groups"] == ["Pool"] and stats["global_pairs"] == 20
        assert stats["other_groups"] == ["Mexico"] and stats["pairs"] == 40
        assert res["global_model"]["source"] == "pooled" and 0 < res["global_model"]["trained_on_pairs"] < 20
    else:
        assert stats["target_groups"] == ["Chile"] and stats["pairs"] == 30
