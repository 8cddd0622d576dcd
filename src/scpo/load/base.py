"""The canonical form every loader produces, and the split of split keys into train/test/global.

A data set is a table of preference pairs held as a ``datasets.Dataset`` (Arrow) with the columns
``pair_id, group, prompt, chosen, rejected, split_key`` (all strings) plus optional metadata:

* ``contested`` (bool): the pair's order in its group contradicts the population's order
  (GlobalOpinionQA: country shares vs the mean over countries; synthetic: the group's true
  utility vs the shared one). Loaders that cannot tell leave the column out.
* ``oracle_margin`` (float): the group's true utility of chosen minus rejected (synthetic only).
* ``raw_group`` (str): the group's name as the source spelled it.
* ``source_row`` (int): the 1-based row of the source file the pair came from.

The split is by ``split_key`` (a user, a question, a prompt), never by pair: one partition of the
split keys, drawn with ``split_seed``, is shared by every group and by the offline global model.

Columns are read as Arrow (:func:`pair_table`), never as Python lists of every row: validation uses
``pyarrow.compute``, and per-row strings go through a column's dictionary of distinct values
(:func:`dictionary_codes`), so only distinct values ever become Python strings.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InputError

PAIR_COLUMNS = ("pair_id", "group", "prompt", "chosen", "rejected", "split_key")
"""Required columns of the canonical pair table, all strings."""


@dataclass
class PreferenceData:
    """A loaded data set in canonical form."""

    name: str
    """Short name (``synthetic``, ``goqa``, ``prism``, ``pairs``, ``ratings``)."""
    pairs: datasets.Dataset
    """Every group's pairs (see the module docstring for the columns)."""
    default_groups: list[str]
    """Groups trained when the user names none."""
    global_pairs: datasets.Dataset | None = None
    """Population pairs for the offline global model (``global_source=pooled``), same columns."""
    default_test_fraction: float = 0.2
    """Share of split keys held out for testing when the config does not say."""
    split_unit: str = "split key"
    """What a split key is (user, question, annotator): named in reports."""
    group_matches: dict[str, list[str]] = field(default_factory=dict)
    """Group -> the raw names in the source that it matched."""
    stats: dict[str, Any] = field(default_factory=dict)
    """Counts the loader reports: ties dropped, unusable rows, per group where it applies."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the data came from: files with sha256, Hub ids, generator settings."""
    synthetic: bool = False
    """True for generated data (reports say so everywhere)."""


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class PairRows(NamedTuple):
    """Some rows of a pair table: ``pairs`` and the row numbers (into it) that are meant."""

    pairs: datasets.Dataset
    rows: np.ndarray


def pair_table(pairs: datasets.Dataset) -> pa.Table:
    """The Arrow table of a data set's rows: zero copy (unless the data set holds an indices mapping)."""
    return pairs.with_format("arrow")[:]


def dictionary_codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """``(codes, values)`` of a column without nulls: its distinct values and each row's index into them (int64)."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        chunks = enc.unify_dictionaries().chunks
        values = chunks[0].dictionary if chunks else pa.array([], col.type)
        codes = (np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]) if chunks
                 else np.zeros(0, dtype=np.int64))
    else:
        values, codes = enc.dictionary, enc.indices.to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), values


def column_strings(col: pa.ChunkedArray | pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
    """A string column (or its ``rows``) as a numpy unicode array, through the column's distinct values."""
    codes, values = dictionary_codes(col)
    if rows is not None:
        codes = codes[rows]
    return np.asarray(values.to_pylist(), dtype=object)[codes].astype(str)


def distinct_strings(pairs: datasets.Dataset, name: str) -> set[str]:
    """The distinct values of one column of a data set."""
    return set(pc.unique(pair_table(pairs).column(name)).to_pylist())


def _first_blank(col: pa.ChunkedArray) -> int | None:
    """Index of the first value that is null, not text, or only whitespace (``str.strip`` empties it)."""
    if len(col) == 0:
        return None
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return 0
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), True)
    i = pc.index(blank, True).as_py()
    return None if i < 0 else i


def check_pairs(pairs: datasets.Dataset | pa.Table, source: str) -> None:
    """Raise :class:`InputError` unless ``pairs`` has the canonical columns and usable texts.

    The error names the first column (in the order prompt, chosen, rejected, group, split_key) that
    holds a bad value and the 1-based row of its first bad value.
    """
    table = pairs if isinstance(pairs, pa.Table) else pair_table(pairs)
    missing = [c for c in PAIR_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"missing column(s) {missing}", file=source)
    for name in ("prompt", "chosen", "rejected", "group", "split_key"):
        i = _first_blank(table.column(name))
        if i is not None:
            raise InputError("empty or non-text value", file=source, row=i + 1, field=name)


# ---------------------------------------------------------------------------------------------
# field checks every loader shares


def short_repr(value: Any, n: int = 80) -> str:
    """``repr(value)`` capped at ``n`` characters (safe for huge integers and deep nesting)."""
    try:
        r = repr(value)
    except (ValueError, RecursionError):  # an int beyond sys.get_int_max_str_digits(), a too deep value
        r = f"<{type(value).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


def require_text(value: Any, *, file: str, row: int, field: str, allow_numbers: bool = False) -> str:
    """``value`` as a non-empty string, else :class:`InputError` (numbers allowed for ids/groups)."""
    if allow_numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise InputError("missing value", file=file, row=row, field=field)
    if not isinstance(value, str):
        raise InputError(f"expected text, got {type(value).__name__} {short_repr(value)}", file=file, row=row, field=field)
    if not value.strip():
        raise InputError("empty or whitespace-only text", file=file, row=row, field=field)
    return value


def parse_score(value: Any, *, file: str, row: int, field: str = "score") -> float:
    """A finite float from a number or numeric text, else :class:`InputError`."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"score must be a number, got {short_repr(value)}", file=file, row=row, field=field)
    if isinstance(value, (int, float)):
        try:
            out = float(value)
        except OverflowError:  # an integer beyond the float range
            raise InputError(f"score must be finite, got an integer of {len(str(value))} digits", file=file, row=row,
                             field=field) from None
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except (ValueError, OverflowError):
            raise InputError(f"score must be a number, got {short_repr(value)}", file=file, row=row, field=field) from None
    else:
        raise InputError(
            f"score must be a number, got {type(value).__name__} {short_repr(value)}", file=file, row=row, field=field
        )
    if not math.isfinite(out):
        raise InputError(f"score must be finite, got {short_repr(value)}", file=file, row=row, field=field)
    return out
