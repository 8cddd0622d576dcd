"""The user's own pair and rating files: formats, column mapping, pair rules, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scpo.config import DataConfig
from scpo.errors import ConfigError, InputError
from scpo.load import load_data
from scpo.load.files import Scored, load_pairs, load_ratings, pairs_from_scores


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL, CSV or Parquet according to the suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


PAIRS = [
    {"prompt": "p1", "chosen": "good", "rejected": "bad", "group": "S. Africa", "extra": 1},
    {"prompt": "p1", "chosen": "fine", "rejected": "bad", "group": "South Africa", "extra": 2},
    {"prompt": "p2", "chosen": "yes", "rejected": "no", "group": "group-a", "extra": 3},
    {"prompt": "p2", "chosen": "same", "rejected": "same", "group": "group-a", "extra": 4},  # identical
    {"prompt": "p2", "chosen": "yes", "rejected": "no", "group": "group-a", "extra": 5},  # duplicate
]


def pcfg(path: Path, **kw: Any) -> DataConfig:
    return DataConfig(dataset="pairs", data_path=str(path), **kw)


def rcfg(path: Path, **kw: Any) -> DataConfig:
    return DataConfig(dataset="ratings", data_path=str(path), **kw)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_load_pairs_formats(tmp_path: Path, suffix: str) -> None:
    p = write(tmp_path / f"pairs{suffix}", PAIRS)
    d = load_data(pcfg(p))
    assert d.name == "pairs" and d.split_unit == "prompt"
    assert d.group_matches == {"South Africa": ["S. Africa", "South Africa"], "group-a": ["group-a"]}
    assert d.default_groups == ["South Africa", "group-a"]
    assert list(d.pairs["group"]) == ["South Africa", "South Africa", "group-a"]
    assert list(d.pairs["raw_group"]) == ["S. Africa", "South Africa", "group-a"]
    assert list(d.pairs["split_key"]) == ["p1", "p1", "p2"]  # default: the prompt
    assert list(d.pairs["pair_id"]) == ["pairs-1", "pairs-2", "pairs-3"]
    assert list(d.pairs["source_row"]) == [1, 2, 3]
    assert d.stats["identical_pairs"] == 1 and d.stats["duplicate_pairs"] == 1
    assert d.stats["per_group"]["group-a"] == {"role": "target", "pairs": 1, "identical_pairs": 1, "duplicate_pairs": 1}
    assert len(d.provenance["sha256"]) == 64
    assert "extra" not in d.pairs.column_names


def test_load_pairs_mapping_split_key_pair_id_groups(tmp_path: Path) -> None:
    rows = [
        {"question": f"q{i}", "better": f"a{i}", "worse": f"b{i}", "country": c, "user": f"u{i % 2}", "id": f"x{i}"}
        for i, c in enumerate(["Britain", "Great Britain", "Chile", "Chile"])
    ]
    p = write(tmp_path / "mine.jsonl", rows)
    cols = {
        "prompt": "question",
        "chosen": "better",
        "rejected": "worse",
        "group": "country",
        "split_key": "user",
        "pair_id": "id",
    }
    d = load_pairs(pcfg(p, columns=cols, groups=["United Kingdom"]))
    assert d.group_matches == {"United Kingdom": ["Britain", "Great Britain"]}
    # --groups chooses the targets; the other group's rows stay in the pairs (global model, pooled metric)
    assert list(d.pairs["pair_id"]) == ["x0", "x1", "x2", "x3"] and list(d.pairs["split_key"]) == ["u0", "u1", "u0", "u1"]
    assert d.default_groups == ["United Kingdom"] and d.global_pairs is None
    assert d.split_unit == "split key" and d.stats["other_groups"] == ["Chile"] and d.stats["pairs_other_groups"] == 2
    with pytest.raises(InputError, match="closest names") as ei:
        load_pairs(pcfg(p, columns=cols, groups=["Chle"]))
    assert "Chile" in str(ei.value)
    with pytest.raises(ConfigError, match="unknown canonical"):
        load_pairs(pcfg(p, columns={"question": "prompt"}))


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"chosen": ""}, "chosen", "empty"),
        ({"rejected": "   \n"}, "rejected", "whitespace"),
        ({"prompt": None}, "prompt", "missing"),
        ({"prompt": 3}, "prompt", "expected text"),
        ({"group": " "}, "group", "empty"),
        ({"pair_id": "dup"}, "pair_id", "repeats row 1"),
    ],
)
def test_load_pairs_bad_rows(tmp_path: Path, change: dict, field: str, message: str) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "group": "g", "pair_id": "dup"}] + [
        {"prompt": "p", "chosen": f"a{i}", "rejected": "b", "group": "g", "pair_id": f"id{i}"} for i in range(2)
    ]
    rows[2] = {**rows[2], **change}
    p = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError, match=message) as ei:
        load_pairs(pcfg(p))
    e = ei.value
    assert (e.file, e.row, e.field) == (str(p), 3, field)


def test_missing_column_lists_present(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.csv", [{"prompt": "p", "chosen": "a", "rejected": "b", "country": "Chile"}])
    with pytest.raises(InputError) as ei:
        load_pairs(pcfg(p))
    msg = str(ei.value)
    assert ei.value.field == "group" and "'group'" in msg and "'country'" in msg and "columns present" in msg
    with pytest.raises(InputError, match="mapped from 'group'"):
        load_pairs(pcfg(p, columns={"group": "nation"}))


def test_invalid_utf8_and_unknown_suffix(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_bytes(b"prompt,chosen,rejected,group\np,caf\xe9,b,g\n")
    with pytest.raises(InputError, match="UTF-8") as ei:
        load_pairs(pcfg(p))
    assert ei.value.file == str(p) and "line 2" in str(ei.value)
    q = tmp_path / "pairs.xlsx"
    q.write_bytes(b"x")
    with pytest.raises(InputError, match="unknown file type"):
        load_pairs(pcfg(q))
    with pytest.raises(InputError, match="not found"):
        load_pairs(pcfg(tmp_path / "none.jsonl"))
    with pytest.raises(ConfigError):
        load_pairs(DataConfig(dataset="pairs"))


def test_csv_ragged_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("prompt,chosen,rejected,group\np,a,b,g\np,a,b,g,extra\n", encoding="utf-8")
    with pytest.raises(InputError) as ei:
        load_pairs(pcfg(p))
    assert ei.value.row == 2


# ---- ratings

RATINGS = [
    {"prompt": "p", "response": "r1", "score": 5, "group": "Chile", "session": "s1"},
    {"prompt": "p", "response": "r2", "score": 3, "group": "Chile", "session": "s1"},
    {"prompt": "p", "response": "r3", "score": 3, "group": "Chile", "session": "s1"},  # tie with r2
    {"prompt": "q", "response": "r4", "score": 1, "group": "Chile", "session": "s1"},  # alone with prompt q
    {"prompt": "p", "response": "r5", "score": 2, "group": "Chile", "session": "s2"},  # alone in s2
    {"prompt": "p", "response": "x", "score": 1.5, "group": "Mexico", "session": "s3"},
    {"prompt": "p", "response": "y", "score": 2.5, "group": "Mexico", "session": "s3"},
]


def test_pairs_from_scores_rules() -> None:
    items = [Scored("p", "a", 3, 1), Scored("p", "b", 1, 2), Scored("p", "c", 3, 3), Scored("p", "a", 2, 4)]
    pairs, counts = pairs_from_scores(items)
    got = {(c.response, r.response) for c, r in pairs}
    assert got == {("a", "b"), ("c", "b"), ("c", "a"), ("a", "b")} and len(pairs) == 4
    assert counts == {"ties": 1, "identical_texts": 1}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_load_ratings(tmp_path: Path, suffix: str) -> None:
    p = write(tmp_path / f"ratings{suffix}", RATINGS)
    d = load_ratings(rcfg(p))
    assert d.name == "ratings" and d.split_unit == "session"
    got = {(r["group"], r["chosen"], r["rejected"], r["split_key"]) for r in d.pairs}
    assert got == {("Chile", "r1", "r2", "s1"), ("Chile", "r1", "r3", "s1"), ("Mexico", "y", "x", "s3")}
    assert d.stats["per_group"]["Chile"] == {
        "role": "target", "sessions": 2, "pairs": 2, "ties": 1, "identical_texts": 0, "single_response_units": 2,
    }  # fmt: skip
    assert d.stats["ties"] == 1 and d.stats["single_response_units"] == 2
    assert len(set(d.pairs["pair_id"])) == len(d.pairs)


def test_load_ratings_mapping_and_groups(tmp_path: Path) -> None:
    rows = [
        {"text": r["prompt"], "answer": r["response"], "rating": r["score"], "country": r["group"], "sid": r["session"]}
        for r in RATINGS
    ]
    p = write(tmp_path / "r.jsonl", rows)
    cols = {"prompt": "text", "response": "answer", "score": "rating", "group": "country", "session": "sid"}
    d = load_data(rcfg(p, columns=cols, groups=["Mexico"]))
    assert d.default_groups == ["Mexico"] and list(d.group_matches) == ["Mexico"]
    assert set(d.pairs["group"]) == {"Mexico", "Chile"} and len(d.pairs) == 3  # the other group stays
    assert d.stats["per_group"]["Chile"]["role"] == "other"


@pytest.mark.parametrize(
    "score, message",
    [("high", "number"), ("nan", "finite"), ("inf", "finite"), (None, "number"), ("", "number")],
)
def test_load_ratings_bad_score(tmp_path: Path, score: Any, message: str) -> None:
    rows = [dict(r) for r in RATINGS]
    rows[4]["score"] = score
    p = write(tmp_path / "r.csv", rows)
    with pytest.raises(InputError, match=message) as ei:
        load_ratings(rcfg(p))
    assert (ei.value.file, ei.value.row, ei.value.field) == (str(p), 5, "score")


def test_load_ratings_bad_text_and_no_pairs(tmp_path: Path) -> None:
    rows = [dict(r) for r in RATINGS]
    rows[1]["response"] = " "
    p = write(tmp_path / "r.jsonl", rows)
    with pytest.raises(InputError) as ei:
        load_ratings(rcfg(p))
    assert (ei.value.row, ei.value.field) == (2, "response")
    p2 = write(tmp_path / "single.jsonl", RATINGS[3:5])
    with pytest.raises(InputError, match="no usable pairs"):
        load_ratings(rcfg(p2))
    p3 = write(tmp_path / "nosession.jsonl", [{k: v for k, v in r.items() if k != "session"} for r in RATINGS])
    with pytest.raises(InputError, match="session"):
        load_ratings(rcfg(p3))
