"""GlobalOpinionQA loader: pair rules on hand-made rows, bad input, the Hub path, the real partial copy."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import datasets
import pytest

from scpo.config import DataConfig
from scpo.errors import InputError
from scpo.load import load_data
from scpo.load.countries import PAPER_COUNTRIES
from scpo.load.goqa import load_goqa

SHARED = Path(os.environ.get("SCPO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REAL_GOQA = SHARED / "goqa" / "global_opinions_partial.csv"


def sel(d: dict[str, list[float]]) -> str:
    return f"defaultdict(<class 'list'>, {d!r})"


def write_csv(
    path: Path, rows: list[dict[str, str]], header: tuple[str, ...] = ("question", "selections", "options", "source")
) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(header), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({"source": "", **r})
    return path


Q1 = "Which is best?"
BASE_ROWS = [
    {
        "question": Q1,
        "selections": sel({"Mexico": [0.6, 0.3, 0.1], "Chile": [0.2, 0.5, 0.3]}),
        "options": repr(["A", "B", "C"]),
    },
]


def cfg(path: Path | str | None, **kw) -> DataConfig:
    return DataConfig(dataset="goqa", data_path=None if path is None else str(path), **kw)


def as_set(ds: datasets.Dataset, group: str) -> set[tuple[str, str]]:
    return {(r["chosen"], r["rejected"]) for r in ds if r["group"] == group}


def test_pairs_per_country_and_contested(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "g.csv", BASE_ROWS)
    d = load_goqa(cfg(p, groups=["Mexico", "Chile"]))
    assert d.name == "goqa" and d.split_unit == "question" and d.default_test_fraction == 0.2
    assert as_set(d.pairs, "Mexico") == {("A", "B"), ("A", "C"), ("B", "C")}
    # Chile: B-A 0.3, B-C 0.2, C-A 0.1 (exactly the gap: kept despite float rounding)
    assert as_set(d.pairs, "Chile") == {("B", "A"), ("B", "C"), ("C", "A")}
    contested = {(r["group"], r["chosen"], r["rejected"]) for r in d.pairs if r["contested"]}
    # mean = A 0.4, B 0.4, C 0.2: only Chile's C > A contradicts it (A = B in the mean: not contested)
    assert contested == {("Chile", "C", "A")}
    assert set(d.pairs["split_key"]) == {Q1} and set(d.pairs["prompt"]) == {Q1}
    assert set(d.pairs["source_row"]) == {1}
    assert len(set(d.pairs["pair_id"])) == len(d.pairs)
    # global pairs from the mean distribution; A = B gives no pair
    assert d.global_pairs is not None
    assert as_set(d.global_pairs, "population") == {("A", "C"), ("B", "C")}
    assert set(d.global_pairs["split_key"]) == {Q1}
    assert d.stats["per_group"]["Chile"] == {"questions": 1, "pairs": 3, "contested": 1, "dropped_small_gap": 0}
    assert d.stats["global"] == {"questions": 1, "pairs": 2, "dropped_small_gap": 1}


def test_min_share_gap_drops_and_counts(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "g.csv", BASE_ROWS)
    d = load_goqa(cfg(p, groups=["Mexico", "Chile"], min_share_gap=0.25))
    assert as_set(d.pairs, "Mexico") == {("A", "B"), ("A", "C")}
    assert as_set(d.pairs, "Chile") == {("B", "A")}
    assert d.stats["per_group"]["Mexico"]["dropped_small_gap"] == 1
    assert d.stats["per_group"]["Chile"]["dropped_small_gap"] == 2


def test_equal_shares_never_pair_even_with_zero_gap(tmp_path: Path) -> None:
    rows = [{"question": "Q", "selections": sel({"Chile": [0.5, 0.5]}), "options": "['x', 'y']"}]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["Chile"], min_share_gap=0.0))
    assert len(d.pairs) == 0 and d.stats["per_group"]["Chile"]["dropped_small_gap"] == 1


def test_groups_filter_keeps_global_from_all(tmp_path: Path) -> None:
    rows = [*BASE_ROWS, {"question": "Q2", "selections": sel({"Japan": [0.9, 0.1]}), "options": "['y', 'n']"}]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["Mexico"]))
    assert set(d.pairs["group"]) == {"Mexico"}
    assert set(d.global_pairs["split_key"]) == {Q1, "Q2"}
    assert d.group_matches == {"Mexico": ["Mexico"]}


def test_default_groups_are_paper_countries(tmp_path: Path) -> None:
    row = {c: [0.7, 0.3] for c in ["Chile", "S. Africa", "Japan"]}
    rows = [{"question": "Q", "selections": sel(row), "options": "['y', 'n']"}]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows)))
    assert d.default_groups == ["Chile", "South Africa"]
    assert set(d.pairs["group"]) == {"Chile", "South Africa"}
    assert d.stats["default_groups_missing"] == [g for g in PAPER_COUNTRIES if g not in ("Chile", "South Africa")]


def test_alias_and_non_national_sample(tmp_path: Path) -> None:
    rows = [
        {
            "question": "Q",
            "selections": sel({"S. Africa": [0.7, 0.3], "S. Africa (Non-national sample)": [0.2, 0.8]}),
            "options": "['y', 'n']",
        }
    ]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["South Africa"]))
    assert d.group_matches == {"South Africa": ["S. Africa"]}
    assert as_set(d.pairs, "South Africa") == {("y", "n")}
    assert set(d.pairs["raw_group"]) == {"S. Africa"}
    d2 = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["S. Africa (Non-national sample)"]))
    assert list(d2.group_matches) == ["South Africa (Non-national sample)"]
    assert as_set(d2.pairs, "South Africa (Non-national sample)") == {("n", "y")}


def test_two_raw_spellings_of_one_country_are_averaged(tmp_path: Path) -> None:
    rows = [
        {
            "question": "Q",
            "selections": sel({"Britain": [0.8, 0.2], "Great Britain": [0.4, 0.6]}),
            "options": "['y', 'n']",
        }
    ]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["United Kingdom"]))
    assert d.group_matches == {"United Kingdom": ["Britain", "Great Britain"]}
    assert as_set(d.pairs, "United Kingdom") == {("y", "n")}  # mean 0.6 / 0.4
    assert d.stats["merged_samples"] == 1


def test_unknown_group_lists_closest(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "g.csv", BASE_ROWS)
    with pytest.raises(InputError, match="Mexico") as ei:
        load_goqa(cfg(p, groups=["Mexcio"]))
    assert ei.value.file == str(p)


def test_empty_distribution_and_single_option_rows_are_counted(tmp_path: Path) -> None:
    rows = [
        *BASE_ROWS,
        {
            "question": "Q2",
            "selections": sel({"Mexico": [0.0, 0.0, 0.0], "Chile": [0.5, 0.5, 0.0]}),
            "options": "['a', 'b', 'c']",
        },
        {"question": "Q3", "selections": sel({"Mexico": [1.0]}), "options": "['only']"},
    ]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["Mexico", "Chile"]))
    assert d.stats["empty_distributions"] == 1
    assert d.stats["unusable_rows"] == 1
    assert d.stats["per_group"]["Mexico"]["questions"] == 1
    assert d.stats["per_group"]["Chile"]["questions"] == 2


def test_repeated_question_shares_split_key(tmp_path: Path) -> None:
    rows = [
        {"question": "Same?", "selections": sel({"Chile": [0.9, 0.1]}), "options": "['y', 'n']"},
        {"question": " Same? ", "selections": sel({"Chile": [0.2, 0.7, 0.1]}), "options": "['y', 'n', 'dk']"},
    ]
    d = load_goqa(cfg(write_csv(tmp_path / "g.csv", rows), groups=["Chile"]))
    assert set(d.pairs["split_key"]) == {"Same?"}
    assert set(d.pairs["source_row"]) == {1, 2}


GOOD_SEL = sel({"Chile": [0.6, 0.4]})


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"selections": "defaultdict(<class 'list'>, {'Chile': [0.6, 0.4]"}, "selections", "expected"),
        ({"selections": "{'Chile': [0.6, 0.4}"}, "selections", "malformed"),
        ({"selections": "defaultdict(<class 'list'>, {'Chile': [nan, 0.4]})"}, "selections", "NaN"),
        ({"selections": sel({"Chile": [float("inf"), 0.4]}).replace("inf", "1e999")}, "selections", "NaN or infinite"),
        ({"selections": sel({"Chile": [0.6, 0.2]})}, "selections", "sum"),
        ({"selections": sel({"Chile": [0.6, 0.3, 0.1]})}, "selections", "3 shares for 2 options"),
        ({"selections": sel({"Chile": [1.4, -0.4]})}, "selections", "outside"),
        ({"selections": "defaultdict(<class 'list'>, {'Chile': ['a', 'b']})"}, "selections", "numbers"),
        ({"options": "['y', 'n'"}, "options", "malformed"),
        ({"options": "['y', '  ']"}, "options", "empty"),
        ({"options": "'y'"}, "options", "list"),
        ({"question": "   "}, "question", "empty"),
    ],
)
def test_bad_input_names_file_row_field(tmp_path: Path, row: dict, field: str, message: str) -> None:
    good = {"question": "Q", "selections": GOOD_SEL, "options": "['y', 'n']"}
    p = write_csv(tmp_path / "bad.csv", [good, good, {**good, **row}])
    with pytest.raises(InputError, match=message) as ei:
        load_goqa(cfg(p, groups=["Chile"]))
    e = ei.value
    assert (e.file, e.row, e.field) == (str(p), 3, field)
    assert str(p) in str(e) and "row 3" in str(e)


def test_missing_column(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "bad.csv", [{"question": "Q", "selections": GOOD_SEL}], header=("question", "selections"))
    with pytest.raises(InputError, match="options") as ei:
        load_goqa(cfg(p))
    assert ei.value.field == "options" and "columns present" in str(ei.value)


def test_non_utf8_file(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    text = f'question,selections,options,source\n"Caf\xe9?","{GOOD_SEL}","[\'y\', \'n\']",\n'
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8") as ei:
        load_goqa(cfg(p))
    assert ei.value.file == str(p) and "line 2" in str(ei.value)


def test_hub_path_via_monkeypatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, *args, **kw) -> datasets.Dataset:
        calls.append((name, args, kw))
        return datasets.Dataset.from_dict(
            {
                "question": [r["question"] for r in BASE_ROWS],
                "selections": [r["selections"] for r in BASE_ROWS],
                "options": [r["options"] for r in BASE_ROWS],
                "source": ["GAS"],
            }
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    d = load_data(DataConfig(dataset="goqa", groups=["Mexico"]))
    assert calls and calls[0][0] == "Anthropic/llm_global_opinions" and calls[0][2].get("split") == "train"
    assert d.provenance == {"hub_id": "Anthropic/llm_global_opinions"}
    assert as_set(d.pairs, "Mexico") == {("A", "B"), ("A", "C"), ("B", "C")}
    d2 = load_goqa(cfg("someone/goqa-mirror", groups=["Chile"]))
    assert calls[-1][0] == "someone/goqa-mirror" and len(d2.pairs) == 3


def test_hub_failure_is_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match="data-path"):
        load_goqa(cfg(None))


@pytest.fixture(scope="module")
def real_goqa():
    if not REAL_GOQA.is_file():
        pytest.skip(
            f"real GlobalOpinionQA copy not found at {REAL_GOQA} (set SCPO_SHARED_DATA to the shared data folder)"
        )
    return load_goqa(cfg(REAL_GOQA))


def test_real_goqa_partial_copy(real_goqa) -> None:
    d = real_goqa
    assert set(d.pairs["group"]) == set(PAPER_COUNTRIES) == set(d.group_matches)
    assert d.group_matches["South Africa"] == ["S. Africa"]  # not the non-national sample
    questions = {g: v["questions"] for g, v in d.stats["per_group"].items()}
    assert questions == {
        "Chile": 108, "South Africa": 125, "New Zealand": 36, "Australia": 147,
        "Mexico": 223, "Israel": 109, "Canada": 148,
    }  # fmt: skip
    assert d.stats["rows"] == 1727
    assert all(v["pairs"] > 0 for v in d.stats["per_group"].values())
    assert len(d.global_pairs) > len(d.pairs) / 2
    assert set(d.global_pairs["group"]) == {"population"}
    assert 0 < sum(d.pairs["contested"]) < len(d.pairs) / 2
    assert d.provenance["sha256"] and len(d.provenance["sha256"]) == 64
    for r in d.pairs.select(range(0, len(d.pairs), 97)):
        assert r["chosen"] != r["rejected"] and r["split_key"] == r["prompt"]
