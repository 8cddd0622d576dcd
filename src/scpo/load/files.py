"""The user's own preference files (``pairs``, ``ratings``) and the helpers every loader shares.

Formats, chosen by suffix: ``.jsonl`` / ``.ndjson`` (one JSON object a line), ``.csv`` (header row)
and ``.parquet``. Files must be UTF-8 (a BOM is allowed). ``cfg.columns`` maps canonical column
names to yours (``{"prompt": "question", "group": "country"}``); extra columns are ignored.

``pairs`` — one preference pair a row:

* required ``prompt``, ``chosen``, ``rejected``, ``group``;
* optional ``split_key`` (default: the prompt, so a test prompt is never seen in training) and
  ``pair_id`` (default ``pairs-<row>``; given ids must be unique).

``ratings`` — one scored response a row:

* required ``prompt``, ``response``, ``score``, ``group``, ``session``;
* optional ``split_key`` (default: the session).
* Pairs are formed within one session, between responses to the same prompt and of the same
  group, exactly as for PRISM (:func:`pairs_from_scores`): every two responses with different
  scores make a pair, the higher score chosen. A ``split_key`` must be the same on every row of a
  (group, session, prompt): else a pair could cross the train/test split (an error).

Rules for bad and unusable rows (both loaders):

* errors (:class:`~scpo.errors.InputError` naming file, 1-based data row and field): a missing
  column (the message lists the columns present), an empty or whitespace-only text or group, a
  non-text prompt/response, a non-numeric, NaN or infinite score, invalid UTF-8 (the row and field
  holding the first invalid byte are named), a malformed JSON line, a repeated ``pair_id``, a
  ``split_key`` that differs within a ratings session/prompt, a file without data rows, a file
  (or the requested groups) yielding no usable pair (the message gives the counts dropped). JSONL
  rows are line numbers; CSV rows exclude the header.
* dropped and counted in ``stats`` (valid input that yields no training signal): a pair whose
  chosen and rejected texts are identical (``identical_pairs``), a pair repeated with the same
  group, prompt, chosen, rejected and split key (``duplicate_pairs``, the first is kept), tied
  scores (``ties``), two responses with the same text (``identical_texts``), a session/prompt
  with a single response (``single_response_units``).

Group values that are countries are named through the shared alias table
(:mod:`.countries`), so ``S. Africa`` and ``South Africa`` are one group; other names
(``group-a``) are kept as they are.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..config import DataConfig
from ..errors import ConfigError, InputError
from .base import PreferenceData, file_sha256
from .countries import group_map, resolve_groups

__all__ = [
    "PairTable",
    "Scored",
    "load_pairs",
    "load_ratings",
    "looks_like_hub_id",
    "pairs_from_scores",
    "parse_score",
    "read_records",
    "require_text",
]

PAIR_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` that is not an existing local path nor a file name with a data suffix."""
    if Path(name).exists():
        return False
    if Path(name).suffix.lower() in (*PAIR_FORMATS, ".json", ".tsv"):
        return False
    return bool(_HUB_ID.match(name))


# --------------------------------------------------------------------------------------------
# values


def require_text(value: Any, *, file: str, row: int, field: str, allow_numbers: bool = False) -> str:
    """``value`` as a non-empty string, else :class:`InputError` (numbers allowed for ids/groups)."""
    if allow_numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise InputError("missing value", file=file, row=row, field=field)
    if not isinstance(value, str):
        raise InputError(f"expected text, got {type(value).__name__} {value!r}", file=file, row=row, field=field)
    if not value.strip():
        raise InputError("empty or whitespace-only text", file=file, row=row, field=field)
    return value


def parse_score(value: Any, *, file: str, row: int, field: str = "score") -> float:
    """A finite float from a number or numeric text, else :class:`InputError`."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"score must be a number, got {value!r}", file=file, row=row, field=field)
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise InputError(f"score must be a number, got {value!r}", file=file, row=row, field=field) from None
    else:
        raise InputError(
            f"score must be a number, got {type(value).__name__} {value!r}", file=file, row=row, field=field
        )
    if not math.isfinite(out):
        raise InputError(f"score must be finite, got {value!r}", file=file, row=row, field=field)
    return out


# --------------------------------------------------------------------------------------------
# reading


def _decode(data: bytes, file: str) -> tuple[str, UnicodeDecodeError | None]:
    """The text of a UTF-8 file (BOM allowed). Invalid bytes are kept as lone surrogates and the
    first decoding error is returned, so that the caller can name the row and field holding it."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return data.decode("utf-8-sig", errors="surrogateescape"), e


_SURROGATE = re.compile("[\udc80-\udcff]")


def _invalid_utf8(file: str, err: UnicodeDecodeError, data_line: int, row: int | None, field: str | None) -> InputError:
    bad = err.object[err.start : err.start + 4]
    return InputError(
        f"not valid UTF-8 (bytes {bad!r} at byte {err.start}, line {data_line}); save the file as UTF-8",
        file=file,
        row=row,
        field=field,
    )


def _check_utf8(file: str, err: UnicodeDecodeError | None, records: list[tuple[int, dict[str, Any]]],
                columns: list[str]) -> None:
    """Raise the error of the first invalid byte, naming the row and field that hold it."""
    if err is None:
        return
    line = err.object[: err.start].count(b"\n") + 1
    for c in columns:
        if _SURROGATE.search(c):
            raise _invalid_utf8(file, err, line, None, c.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    for row, rec in records:
        for k, v in rec.items():
            if isinstance(v, str) and _SURROGATE.search(v):
                raise _invalid_utf8(file, err, line, row, str(k))
    raise _invalid_utf8(file, err, line, None, None)


def read_records(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Read a JSONL, CSV or Parquet file (by suffix) into (columns, [(row, record)]).

    Rows are 1-based: line numbers for JSONL, data rows (header excluded) for CSV and Parquet.
    For JSONL the columns are the union of the keys of every line.
    """
    path = Path(path)
    file = str(path)
    fmt = PAIR_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet", file=file)
    if not path.is_file():
        raise InputError("file not found", file=file)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for unreadable files
            raise InputError(f"cannot read Parquet file: {e}", file=file) from None
        columns = list(table.column_names)
        if table.num_rows == 0:
            raise InputError("no data rows (the table is empty)", file=file)
        return columns, [(i + 1, rec) for i, rec in enumerate(table.to_pylist())]
    text, bad_utf8 = _decode(path.read_bytes(), file)
    if fmt == "csv":
        csv.field_size_limit(1 << 30)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        records = []
        try:
            for i, rec in enumerate(reader):
                if None in rec:
                    raise InputError(
                        f"row has {len(columns) + len(rec[None])} fields, the header {len(columns)}",
                        file=file,
                        row=i + 1,
                    )
                records.append((i + 1, rec))
        except csv.Error as e:
            raise InputError(f"malformed CSV: {e}", file=file, row=reader.line_num) from None
        _check_utf8(file, bad_utf8, records, columns)
        if not records:
            raise InputError("no data rows (the file holds a header only, or nothing)", file=file)
        return columns, records
    columns_seen: dict[str, None] = {}
    records = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if bad_utf8 is not None and _SURROGATE.search(line):
                raise _invalid_utf8(file, bad_utf8, i + 1, i + 1, None) from None
            raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", file=file, row=i + 1) from None
        if not isinstance(rec, dict):
            raise InputError(f"expected a JSON object, got {type(rec).__name__}", file=file, row=i + 1)
        if bad_utf8 is not None and _SURROGATE.search(line):
            flat = {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in rec.items()}
            _check_utf8(file, bad_utf8, [(i + 1, flat)], [str(k) for k in rec])
        for k in rec:
            columns_seen.setdefault(k, None)
        records.append((i + 1, rec))
    if not records:
        raise InputError("no data rows (the file is empty)", file=file)
    return list(columns_seen), records


def map_columns(
    mapping: Mapping[str, str],
    required: Sequence[str],
    optional: Sequence[str],
    present: Sequence[str],
    *,
    file: str,
) -> dict[str, str | None]:
    """Canonical column -> the file's column (``None`` for an absent optional one)."""
    known = (*required, *optional)
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise ConfigError(f"--columns: unknown canonical column(s) {unknown}; known: {', '.join(known)}")
    out: dict[str, str | None] = {}
    for name in known:
        actual = mapping.get(name, name)
        if actual in present:
            out[name] = actual
        elif name in required:
            how = f"column {actual!r} (mapped from {name!r})" if actual != name else f"column {name!r}"
            raise InputError(
                f"missing {how}; columns present: {', '.join(map(repr, present)) or 'none'}",
                file=file,
                field=actual,
            )
        else:
            out[name] = None
    return out


# --------------------------------------------------------------------------------------------
# building pair tables


class PairTable:
    """Column-wise accumulator of canonical pairs, turned into a ``datasets.Dataset`` at the end."""

    def __init__(self, *, with_contested: bool = False) -> None:
        names = ["pair_id", "group", "prompt", "chosen", "rejected", "split_key", "raw_group", "source_row"]
        if with_contested:
            names.append("contested")
        self.cols: dict[str, list[Any]] = {n: [] for n in names}
        self.with_contested = with_contested

    def __len__(self) -> int:
        return len(self.cols["pair_id"])

    def add(
        self,
        *,
        pair_id: str,
        group: str,
        prompt: str,
        chosen: str,
        rejected: str,
        split_key: str,
        raw_group: str,
        source_row: int,
        contested: bool | None = None,
    ) -> None:
        c = self.cols
        c["pair_id"].append(pair_id)
        c["group"].append(group)
        c["prompt"].append(prompt)
        c["chosen"].append(chosen)
        c["rejected"].append(rejected)
        c["split_key"].append(split_key)
        c["raw_group"].append(raw_group)
        c["source_row"].append(int(source_row))
        if self.with_contested:
            c["contested"].append(bool(contested))

    def to_dataset(self) -> datasets.Dataset:
        feats = {n: datasets.Value("string") for n in self.cols}
        feats["source_row"] = datasets.Value("int64")
        if self.with_contested:
            feats["contested"] = datasets.Value("bool")
        return datasets.Dataset.from_dict(self.cols, features=datasets.Features(feats))


@dataclass(frozen=True)
class Scored:
    """One scored response: the unit PRISM utterances and rating rows share."""

    prompt: str
    response: str
    score: float
    row: int
    """1-based row of the source."""


def pairs_from_scores(items: Sequence[Scored]) -> tuple[list[tuple[Scored, Scored]], Counter[str]]:
    """Pairs from the scored responses of one unit (an interaction, a session's prompt).

    Every two responses with different scores make a pair ``(chosen, rejected)``, the higher
    score chosen; equal scores are ``ties``, identical response texts with different scores are
    ``identical_texts`` (both dropped and counted). Pairs keep the order of the items.
    """
    pairs: list[tuple[Scored, Scored]] = []
    counts: Counter[str] = Counter()
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            a, b = items[i], items[j]
            if a.score == b.score:
                counts["ties"] += 1
            elif a.response == b.response:
                counts["identical_texts"] += 1
            else:
                pairs.append((a, b) if a.score > b.score else (b, a))
    return pairs, counts


def select_groups(
    requested: list[str] | None,
    default: list[str] | None,
    raw_names: Iterable[str],
    *,
    file: str,
) -> tuple[dict[str, list[str]], list[str]]:
    """Resolve the groups to keep: the requested ones (strict) or the defaults present in the data.

    Returns (group -> raw names, default groups that the data lacks). ``default=None`` means
    every group of the data.
    """
    raw_names = list(raw_names)
    if requested:
        return resolve_groups(list(requested), raw_names, file=file), []
    if default is None:
        return resolve_groups(None, raw_names, file=file), []
    available = resolve_groups(None, raw_names, file=file)
    kept: dict[str, list[str]] = {}
    missing = []
    for g in default:
        try:
            kept.update(resolve_groups([g], raw_names, file=file))
        except InputError:
            missing.append(g)
    if not kept:
        raise InputError(
            f"none of the default groups {default} is in the data; name groups with --groups "
            f"(the data has: {', '.join(list(available)[:20])}{' ...' if len(available) > 20 else ''})",
            file=file,
            field="group",
        )
    return kept, missing


# --------------------------------------------------------------------------------------------
# loaders


def _generated_id(row: int, given: set[str]) -> str:
    """``pairs-<row>``, made distinct from every id the file gives."""
    out = f"pairs-{row}"
    while out in given:
        out += "-generated"
    return out


def _require_path(cfg: DataConfig) -> Path:
    if not cfg.data_path:
        raise ConfigError(f"--data-path is required for --dataset {cfg.dataset}")
    return Path(cfg.data_path)


def load_pairs(cfg: DataConfig) -> PreferenceData:
    """Load a file of preference pairs (see the module docstring for the columns and rules)."""
    path = _require_path(cfg)
    file = str(path)
    present, records = read_records(path)
    cols = map_columns(
        cfg.columns, ("prompt", "chosen", "rejected", "group"), ("split_key", "pair_id"), present, file=file
    )

    rows: list[tuple[int, str, str, str, str, str, str | None]] = []
    for row, rec in records:
        prompt = require_text(rec.get(cols["prompt"]), file=file, row=row, field=cols["prompt"])
        chosen = require_text(rec.get(cols["chosen"]), file=file, row=row, field=cols["chosen"])
        rejected = require_text(rec.get(cols["rejected"]), file=file, row=row, field=cols["rejected"])
        group = require_text(rec.get(cols["group"]), file=file, row=row, field=cols["group"], allow_numbers=True)
        split_key = prompt
        if cols["split_key"] is not None and rec.get(cols["split_key"]) not in (None, ""):
            split_key = require_text(
                rec.get(cols["split_key"]), file=file, row=row, field=cols["split_key"], allow_numbers=True
            )
        pair_id = None
        if cols["pair_id"] is not None and rec.get(cols["pair_id"]) not in (None, ""):
            pair_id = require_text(
                rec.get(cols["pair_id"]), file=file, row=row, field=cols["pair_id"], allow_numbers=True
            )
        rows.append((row, prompt, chosen, rejected, group.strip(), split_key, pair_id))

    gmap = group_map(r[4] for r in rows)
    matches, _ = select_groups(cfg.groups, None, list(gmap), file=file)
    keep_raw = {raw for raws in matches.values() for raw in raws}

    table = PairTable()
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    seen_pairs: set[tuple[str, str, str, str, str]] = set()
    seen_ids: dict[str, int] = {}
    given_ids = {r[6] for r in rows if r[6] is not None}
    for row, prompt, chosen, rejected, raw_group, split_key, pair_id in rows:
        group = gmap[raw_group]
        if pair_id is not None:
            if pair_id in seen_ids:
                raise InputError(
                    f"pair_id {pair_id!r} repeats row {seen_ids[pair_id]}", file=file, row=row, field=cols["pair_id"]
                )
            seen_ids[pair_id] = row
        if raw_group not in keep_raw:
            counts["rows_other_groups"] += 1
            continue
        if chosen == rejected:
            per_group[group]["identical_pairs"] += 1
            counts["identical_pairs"] += 1
            continue
        key = (group, prompt, chosen, rejected, split_key)
        if key in seen_pairs:
            per_group[group]["duplicate_pairs"] += 1
            counts["duplicate_pairs"] += 1
            continue
        seen_pairs.add(key)
        per_group[group]["pairs"] += 1
        table.add(
            pair_id=pair_id if pair_id is not None else _generated_id(row, given_ids),
            group=group,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            split_key=split_key,
            raw_group=raw_group,
            source_row=row,
        )
    if not len(table):
        what = ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in ("identical_pairs", "duplicate_pairs") if counts[k])
        scope = f"the requested group(s) {list(matches)}" if cfg.groups else "the file"
        raise InputError(
            f"no usable pairs in {scope}" + (f" ({what} dropped)" if what else ""),
            file=file,
            field=cols["group"] if cfg.groups else None,
        )
    stats = {
        "rows": len(records),
        "pairs": len(table),
        "identical_pairs": counts["identical_pairs"],
        "duplicate_pairs": counts["duplicate_pairs"],
        "rows_other_groups": counts["rows_other_groups"],
        "per_group": {
            g: {k: per_group[g][k] for k in ("pairs", "identical_pairs", "duplicate_pairs")} for g in matches
        },
    }
    return PreferenceData(
        name="pairs",
        pairs=table.to_dataset(),
        default_groups=list(matches),
        default_test_fraction=0.2,
        split_unit="split key" if cols["split_key"] is not None else "prompt",
        group_matches=matches,
        stats=stats,
        provenance={"file": str(path.resolve()), "sha256": file_sha256(path), "columns": dict(cfg.columns)},
    )


def load_ratings(cfg: DataConfig) -> PreferenceData:
    """Load a file of scored responses and form pairs within sessions (see the module docstring)."""
    path = _require_path(cfg)
    file = str(path)
    present, records = read_records(path)
    cols = map_columns(
        cfg.columns, ("prompt", "response", "score", "group", "session"), ("split_key",), present, file=file
    )

    # unit = (raw group, session, prompt) -> scored responses; split key per unit
    units: dict[tuple[str, str, str], list[Scored]] = {}
    unit_split: dict[tuple[str, str, str], str] = {}
    for row, rec in records:
        prompt = require_text(rec.get(cols["prompt"]), file=file, row=row, field=cols["prompt"])
        response = require_text(rec.get(cols["response"]), file=file, row=row, field=cols["response"])
        score = parse_score(rec.get(cols["score"]), file=file, row=row, field=cols["score"])
        group = require_text(rec.get(cols["group"]), file=file, row=row, field=cols["group"], allow_numbers=True)
        session = require_text(rec.get(cols["session"]), file=file, row=row, field=cols["session"], allow_numbers=True)
        split_key = session
        if cols["split_key"] is not None and rec.get(cols["split_key"]) not in (None, ""):
            split_key = require_text(
                rec.get(cols["split_key"]), file=file, row=row, field=cols["split_key"], allow_numbers=True
            )
        key = (group.strip(), session, prompt)
        if key in unit_split and unit_split[key] != split_key:
            first_row = units[key][0].row
            raise InputError(
                f"split key {split_key!r} differs from {unit_split[key]!r} of row {first_row} (same group, session "
                "and prompt): its pairs would cross the train/test split",
                file=file,
                row=row,
                field=cols["split_key"],
            )
        units.setdefault(key, []).append(Scored(prompt, response, score, row))
        unit_split.setdefault(key, split_key)

    gmap = group_map(k[0] for k in units)
    matches, _ = select_groups(cfg.groups, None, list(gmap), file=file)
    keep_raw = {raw for raws in matches.values() for raw in raws}

    table = PairTable()
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    counts: Counter[str] = Counter()
    for key, items in units.items():
        raw_group, session, prompt = key
        if raw_group not in keep_raw:
            counts["rows_other_groups"] += len(items)
            continue
        group = gmap[raw_group]
        pg = per_group[group]
        pg["sessions"] += 0  # make the group appear even when it yields nothing
        if len(items) < 2:
            pg["single_response_units"] += 1
            continue
        pairs, c = pairs_from_scores(items)
        pg.update(c)
        for chosen, rejected in pairs:
            pg["pairs"] += 1
            a, b = sorted((chosen.row, rejected.row))
            table.add(
                pair_id=f"ratings-{a}-{b}",
                group=group,
                prompt=prompt,
                chosen=chosen.response,
                rejected=rejected.response,
                split_key=unit_split[key],
                raw_group=raw_group,
                source_row=a,
            )
    sessions = defaultdict(set)
    for raw_group, session, _ in units:
        if raw_group in keep_raw:
            sessions[gmap[raw_group]].add(session)
    if not len(table):
        detail = "; ".join(
            f"{g!r}: " + (", ".join(f"{per_group[g][k]} {k.replace('_', ' ')}"
                                    for k in ("ties", "identical_texts", "single_response_units") if per_group[g][k])
                          or "no rows")
            for g in matches
        )
        scope = "requested group(s)" if cfg.groups else "group(s)"
        raise InputError(
            f"no usable pairs: every session/prompt of the {scope} has a single response or tied scores ({detail})",
            file=file,
            field=cols["group"] if cfg.groups else None,
        )
    keys = ("pairs", "ties", "identical_texts", "single_response_units")
    stats = {
        "rows": len(records),
        "pairs": len(table),
        **{k: sum(per_group[g][k] for g in matches) for k in keys[1:]},
        "rows_other_groups": counts["rows_other_groups"],
        "per_group": {g: {"sessions": len(sessions[g]), **{k: per_group[g][k] for k in keys}} for g in matches},
    }
    return PreferenceData(
        name="ratings",
        pairs=table.to_dataset(),
        default_groups=list(matches),
        default_test_fraction=0.2,
        split_unit="split key" if cols["split_key"] is not None else "session",
        group_matches=matches,
        stats=stats,
        provenance={"file": str(path.resolve()), "sha256": file_sha256(path), "columns": dict(cfg.columns)},
    )


def iter_dataset_rows(ds: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, record) over a Hub ``datasets.Dataset`` (or any iterable of dicts)."""
    for i, rec in enumerate(ds):
        yield i + 1, rec
