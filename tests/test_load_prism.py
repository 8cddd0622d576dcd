"""PRISM loader on fixtures with the real schema (nested location struct, extra and missing columns)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from scpo.config import DataConfig
from scpo.errors import ConfigError, InputError
from scpo.load import load_data
from scpo.load.prism import load_prism


def loc(reside: str | None, birth: str | None) -> dict[str, Any]:
    return {
        "birth_country": birth,
        "birth_countryISO": "XX",
        "birth_region": "Somewhere",
        "reside_country": reside,
        "reside_countryISO": "XX",
        "reside_region": "Somewhere",
    }


SURVEY = [
    {"user_id": "user1", "age": "25-34 years old", "location": loc("Chile", "Chile"), "lm_familiarity": "Very"},
    {"user_id": "user2", "age": "35-44 years old", "location": loc("South Africa", "United Kingdom")},
    # flattened struct (a pandas export), no other columns
    {"user_id": "user3", "location.reside_country": "Mexico", "location.birth_country": "Mexico"},
    {"user_id": "user4", "location": loc(None, None)},  # no country
    {"user_id": "user5", "location": loc("Japan", "Japan")},
]


def utt(uid: str, inter: str, prompt: str, response: str, score: Any, **extra: Any) -> dict[str, Any]:
    return {
        "conversation_id": f"c-{inter}",
        "user_id": uid,
        "turn": 0,
        "within_turn_id": 0,
        "interaction_id": inter,
        "user_prompt": prompt,
        "model_response": response,
        "model_name": "some-model",
        "score": score,
        "if_chosen": False,
        **extra,
    }


UTTERANCES = [
    # user1 (Chile): one interaction with 3 responses, one tie
    utt("user1", "i1", "Hi?", "Hello!", 80),
    utt("user1", "i1", "Hi?", "Hey.", 50),
    utt("user1", "i1", "Hi?", "Yo.", 50),
    # user1: a single-response interaction
    utt("user1", "i2", "More?", "Sure.", 70),
    # user2 (South Africa)
    utt("user2", "i3", "Tea?", "Rooibos.", 90),
    utt("user2", "i3", "Tea?", "Coffee.", 10),
    # user3 (Mexico, flattened survey)
    utt("user3", "i4", "Food?", "Tacos.", 60),
    utt("user3", "i4", "Food?", "Salad.", 61),
    # user absent from the survey
    utt("ghost", "i5", "Boo?", "A", 1),
    utt("ghost", "i5", "Boo?", "B", 2),
    # user without a country
    utt("user4", "i6", "Q?", "A", 1),
    utt("user4", "i6", "Q?", "B", 2),
    # Japan: not a default group
    utt("user5", "i7", "Q?", "A", 1),
    utt("user5", "i7", "Q?", "B", 2),
]
for i, u in enumerate(UTTERANCES):
    if i % 2 == 0:
        u["utterance_id"] = f"u{i}"  # utterance_id present on some rows only (optional)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def prism_dir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "survey.jsonl", SURVEY)
    write_jsonl(tmp_path / "utterances.jsonl", UTTERANCES)
    return tmp_path


def cfg(path: Path | str | None, **kw: Any) -> DataConfig:
    return DataConfig(dataset="prism", data_path=None if path is None else str(path), **kw)


def pairs_of(d, group: str) -> set[tuple[str, str]]:
    return {(r["chosen"], r["rejected"]) for r in d.pairs if r["group"] == group}


def test_pairs_within_interactions(prism_dir: Path) -> None:
    d = load_prism(cfg(prism_dir))
    assert d.name == "prism" and d.split_unit == "user" and d.default_test_fraction == 0.15
    assert set(d.group_matches) == {"Chile", "South Africa", "Mexico"}
    assert pairs_of(d, "Chile") == {("Hello!", "Hey."), ("Hello!", "Yo.")}
    assert pairs_of(d, "South Africa") == {("Rooibos.", "Coffee.")}
    assert pairs_of(d, "Mexico") == {("Salad.", "Tacos.")}
    assert "Japan" not in set(d.pairs["group"])
    by_group = {r["group"]: r["split_key"] for r in d.pairs}
    assert by_group == {"Chile": "user1", "South Africa": "user2", "Mexico": "user3"}
    assert set(d.pairs["prompt"]) == {"Hi?", "Tea?", "Food?"}
    assert d.pairs[0]["source_row"] == 1 and d.pairs[0]["pair_id"] == "prism-1-2"
    assert len(set(d.pairs["pair_id"])) == len(d.pairs)
    s = d.stats
    assert s["per_group"]["Chile"] == {
        "users": 1, "interactions": 2, "pairs": 2, "ties": 1, "identical_texts": 0, "single_response_interactions": 1,
    }  # fmt: skip
    assert s["ties"] == 1 and s["single_response_interactions"] == 1
    assert s["users_not_in_survey"] == 1 and s["utterances_users_not_in_survey"] == 2
    assert s["users_without_country"] == 1 and s["utterances_without_country"] == 2
    assert s["utterances"] == len(UTTERANCES) and s["survey_users"] == len(SURVEY)
    assert "Chile" in d.default_groups and "Japan" not in d.default_groups
    assert len(d.provenance["files"]) == 2


def test_birth_country_and_requested_groups(prism_dir: Path) -> None:
    d = load_prism(cfg(prism_dir, country_field="birth_country", groups=["UK", "Japan"]))
    assert d.group_matches == {"United Kingdom": ["United Kingdom"], "Japan": ["Japan"]}
    assert pairs_of(d, "United Kingdom") == {("Rooibos.", "Coffee.")}
    assert d.stats["country_field"] == "birth_country"


def test_unknown_group_error(prism_dir: Path) -> None:
    with pytest.raises(InputError, match="closest names: Chile") as ei:
        load_prism(cfg(prism_dir, groups=["Chille"]))
    assert ei.value.field == "group"


def test_bad_country_field(prism_dir: Path) -> None:
    with pytest.raises(ConfigError):
        load_prism(cfg(prism_dir, country_field="country"))


@pytest.mark.parametrize("score", ["great", None, "NaN", float("nan"), float("inf"), True])
def test_bad_score(prism_dir: Path, score: Any) -> None:
    rows = [dict(r) for r in UTTERANCES]
    rows[3]["score"] = score
    write_jsonl(prism_dir / "utterances.jsonl", rows)  # json writes NaN/Infinity, which json reads back
    with pytest.raises(InputError, match="score") as ei:
        load_prism(cfg(prism_dir))
    e = ei.value
    assert (e.file, e.row, e.field) == (str(prism_dir / "utterances.jsonl"), 4, "score")


def test_numeric_text_score_and_empty_texts(prism_dir: Path) -> None:
    rows = [dict(r) for r in UTTERANCES]
    rows[4]["score"] = "90"
    rows[1]["model_response"] = "  "
    write_jsonl(prism_dir / "utterances.jsonl", rows)
    d = load_prism(cfg(prism_dir))
    assert pairs_of(d, "South Africa") == {("Rooibos.", "Coffee.")}
    assert pairs_of(d, "Chile") == {("Hello!", "Yo.")}
    assert d.stats["empty_texts"] == 1


def test_missing_columns(prism_dir: Path) -> None:
    write_jsonl(prism_dir / "utterances.jsonl", [{k: v for k, v in r.items() if k != "score"} for r in UTTERANCES])
    with pytest.raises(InputError, match="score") as ei:
        load_prism(cfg(prism_dir))
    assert ei.value.field == "score" and "columns present" in str(ei.value)
    write_jsonl(prism_dir / "survey.jsonl", [{"user_id": "u", "age": 3}])
    with pytest.raises(InputError, match="location"):
        load_prism(cfg(prism_dir))


def test_interaction_from_conversation_and_turn(prism_dir: Path) -> None:
    write_jsonl(
        prism_dir / "utterances.jsonl", [{k: v for k, v in r.items() if k != "interaction_id"} for r in UTTERANCES]
    )
    d = load_prism(cfg(prism_dir))
    assert pairs_of(d, "Chile") == {("Hello!", "Hey."), ("Hello!", "Yo.")}


def test_malformed_json_and_missing_files(prism_dir: Path, tmp_path: Path) -> None:
    with open(prism_dir / "utterances.jsonl", "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(InputError) as ei:
        load_prism(cfg(prism_dir))
    assert ei.value.row == len(UTTERANCES) + 1
    (prism_dir / "survey.jsonl").unlink()
    with pytest.raises(InputError, match="survey.jsonl"):
        load_prism(cfg(prism_dir))
    with pytest.raises(InputError, match="folder"):
        load_prism(cfg(tmp_path / "nowhere"))


def test_invalid_utf8(prism_dir: Path) -> None:
    (prism_dir / "survey.jsonl").write_bytes(b'{"user_id": "caf\xe9"}\n')
    with pytest.raises(InputError, match="UTF-8") as ei:
        load_prism(cfg(prism_dir))
    assert ei.value.file == str(prism_dir / "survey.jsonl")


def test_hub_path_via_monkeypatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, config: str | None = None, **kw: Any) -> datasets.Dataset:
        calls.append((name, config, kw.get("split")))
        rows = SURVEY[:2] + SURVEY[4:] if config == "survey" else UTTERANCES
        cols = sorted({k for r in rows for k in r})
        return datasets.Dataset.from_list([{c: r.get(c) for c in cols} for r in rows])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    d = load_data(DataConfig(dataset="prism"))
    assert {c[:2] for c in calls} == {
        ("HannahRoseKirk/prism-alignment", "survey"),
        ("HannahRoseKirk/prism-alignment", "utterances"),
    }
    assert {c[2] for c in calls} == {"train"}
    assert d.provenance["hub_id"] == "HannahRoseKirk/prism-alignment"
    assert set(d.pairs["group"]) == {"Chile", "South Africa"}
    assert d.stats["users_not_in_survey"] == 3  # ghost, user3, user4 are not in this survey


def test_hub_failure_is_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a: Any, **kw: Any) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match="HannahRoseKirk/prism-alignment"):
        load_prism(cfg(None))
