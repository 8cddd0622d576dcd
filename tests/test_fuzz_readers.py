"""Property-based fuzzing of the readers (issue 15): arbitrary JSON values and Unicode, anywhere in a row.

Generated JSONL / JSON / CSV / Parquet files, with values of every JSON type (huge integers, NaN,
deep lists, lone surrogates, line separators, invalid bytes), in used and unused columns: the
``pairs`` and ``ratings`` loaders either load or raise :class:`InputError` — never another
exception — and ``scpo data inspect`` exits 0 or 2, never 1. Derandomised, no deadline.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scpo.cli import main
from scpo.config import DataConfig
from scpo.errors import InputError
from scpo.load import load_data

FUZZ = settings(derandomize=True, deadline=None, max_examples=50,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# any code point but surrogates (a lone surrogate comes from TEXT's samples), separators included
CHARS = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=("Cs",))
TEXT = st.one_of(st.text(CHARS, max_size=12), st.sampled_from(["", " ", "a\u2028b", "x\u2029", "\u0085", "\r", "é",
                                                                 "e\u0301", "null", "\ud800", "A", "B"]))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**320),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
PAIR_KEYS = ["prompt", "chosen", "rejected", "group", "split_key", "pair_id"]
RATING_KEYS = ["prompt", "response", "score", "group", "session"]
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": st.one_of(TEXT, SCALAR)}), max_size=3)


def rows(keys: list[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Rows holding mostly good values for ``keys``, some arbitrary ones and extra columns."""
    good = {"prompt": st.sampled_from(["p1", "p2", "p3"]), "chosen": st.sampled_from(["good", "fine"]),
            "rejected": st.sampled_from(["bad", "poor"]), "group": st.sampled_from(["A", "B", "Curac\u0327ao", "Curaçao"]),
            "response": st.sampled_from(["r1", "r2", "r3"]), "score": st.integers(0, 3),
            "session": st.sampled_from(["s1", "s2"]), "split_key": st.sampled_from(["u1", "u2"]),
            "pair_id": st.uuids().map(str)}

    def value(k: str) -> st.SearchStrategy[Any]:  # mostly good: about 40% of rows are wholly good
        return st.integers(0, 15).flatmap(lambda i: good[k] if i < 14 else (VALUE if i == 14 else MESSAGES))

    row = st.fixed_dictionaries(
        {k: value(k) for k in keys if k not in ("split_key", "pair_id")},
        optional={**{k: value(k) for k in keys if k in ("split_key", "pair_id")},
                  "extra": VALUE, "\u2028": VALUE, "chosen ": VALUE},
    )
    return st.lists(row, min_size=1, max_size=6)


def _jsonl(rs: list[dict[str, Any]], ascii_: bool) -> bytes:
    out = []
    for r in rs:
        try:
            out.append(json.dumps(r, ensure_ascii=ascii_).encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: only the escaped form exists on disk
            out.append(json.dumps(r, ensure_ascii=True).encode("utf-8"))
    return b"\n".join(out) + b"\n"


def _csv(rs: list[dict[str, Any]]) -> bytes:
    cols = list(dict.fromkeys(k for r in rs for k in r))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rs:
        w.writerow(["" if r.get(c) is None else (r[c] if isinstance(r[c], str) else json.dumps(r[c])) for c in cols])
    return buf.getvalue().encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8 bytes


def write(path: Path, rs: list[dict[str, Any]], fmt: str, ascii_: bool, noise: bytes) -> Path:
    if fmt == "parquet":
        try:
            pq.write_table(pa.Table.from_pylist(rs), path)
        except (pa.ArrowException, OverflowError, TypeError, ValueError, UnicodeError):
            # types Arrow cannot hold or write (mixed, empty structs): as JSON text, as a user's export would
            pq.write_table(pa.Table.from_pylist([{k: json.dumps(v, ensure_ascii=True) for k, v in r.items()}
                                                 for r in rs]), path)
        return path
    data = _csv(rs) if fmt == "csv" else _jsonl(rs, ascii_)
    if fmt == "json" and ascii_:
        data = json.dumps(rs, ensure_ascii=True).encode("utf-8")
    if noise:
        cut = len(data) // 2
        data = data[:cut] + noise + data[cut:]
    path.write_bytes(data)
    return path


FILES = st.tuples(st.sampled_from(["jsonl", "json", "csv", "parquet"]), st.booleans(),
                  st.one_of(st.just(b""), st.just(b""), st.binary(max_size=3)))


def _try_load(cfg: DataConfig) -> None:
    try:
        data = load_data(cfg)
    except InputError as e:
        assert str(e) and len(str(e)) < 2000 and "\n" not in e.detail.strip("\n")
        return
    assert len(data.pairs) > 0


@settings(FUZZ, max_examples=80)
@given(rs=rows(PAIR_KEYS), spec=FILES, group_value=st.booleans())
def test_pairs_loader_loads_or_raises_input_error(rs, spec, group_value):
    fmt, ascii_, noise = spec
    with tempfile.TemporaryDirectory() as d:
        f = write(Path(d) / f"pairs.{fmt}", rs, fmt, ascii_, noise)
        _try_load(DataConfig(dataset="pairs", data_path=str(f), group_value="G" if group_value else None))


@FUZZ
@given(rs=rows(RATING_KEYS), spec=FILES)
def test_ratings_loader_loads_or_raises_input_error(rs, spec):
    fmt, ascii_, noise = spec
    with tempfile.TemporaryDirectory() as d:
        f = write(Path(d) / f"ratings.{fmt}", rs, fmt, ascii_, noise)
        _try_load(DataConfig(dataset="ratings", data_path=str(f)))


@settings(derandomize=True, deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(rs=rows(PAIR_KEYS), spec=FILES)
def test_data_inspect_exits_0_or_2_never_1(rs, spec, capsys):
    fmt, ascii_, noise = spec
    with tempfile.TemporaryDirectory() as d:
        f = write(Path(d) / f"pairs.{fmt}", rs, fmt, ascii_, noise)
        code = main(["data", "inspect", "--dataset", "pairs", "--data-path", str(f), "--quiet", "--json"])
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("scpo: error:") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c"])
def test_line_separators_inside_strings_keep_rows_exact(tmp_path, sep):
    rs = [{"prompt": f"p{i}{sep}x", "chosen": f"a{sep}", "rejected": "b", "group": "A"} for i in range(3)]
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rs) + "\r\n", encoding="utf-8")
    d = load_data(DataConfig(dataset="pairs", data_path=str(f)))
    assert list(d.pairs["source_row"]) == [1, 2, 3] and d.pairs[2]["prompt"] == f"p2{sep}x"
    f.write_text(f.read_text(encoding="utf-8") + '{"prompt": 1}\n', encoding="utf-8")
    with pytest.raises(InputError, match="row 4"):
        load_data(DataConfig(dataset="pairs", data_path=str(f)))
