"""Strict readers of local data files: every valid file loads, every invalid one is one :class:`InputError`.

:func:`read_records` reads one JSONL / JSON / CSV / Parquet file into ``(columns, [(row, record)])``.
Rows are 1-based: line numbers for JSONL, array elements for a JSON array, data rows (header
excluded) for CSV and Parquet. The rules, whatever column a value sits in (used by scpo or not):

* JSONL lines are split on ``\\n`` (and ``\\r\\n``) only, as the JSON Lines format says: U+2028,
  U+2029, U+0085 and other characters that :meth:`str.splitlines` treats as line breaks are
  ordinary text inside strings, and row numbers stay exact after them.
* A key repeated inside one JSON object (at any depth) is an error naming the row and the key; a
  column name repeated in a CSV header or a Parquet schema is an error naming the column.
* Values a reader cannot represent are an error naming the file, row and field: an integer of
  more than 4,300 digits, nesting deeper than Python's recursion limit, a lone surrogate escape
  (``"\\ud800"``, not encodable as UTF-8), invalid UTF-8 bytes, a Parquet value Arrow cannot
  convert. ``NaN`` / ``Infinity`` (accepted by Python's JSON reader) are read as floats and are
  errors only where scpo needs a text or a finite score.
* A path that is not a readable regular file (missing, a directory, a FIFO or device, no read
  permission) is an error naming the file. Nothing is read from a FIFO (it would block).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import stat
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError

__all__ = ["FILE_FORMATS", "read_records", "read_records_hashed", "table_records"]

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""Suffix -> format of the local files scpo reads."""

_SURROGATE = re.compile("[\udc80-\udcff]")  # invalid bytes kept by surrogateescape
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)


def _short(text: str, n: int = 60) -> str:
    r = repr(text)
    return r if len(r) <= n else r[: n - 3] + "..."


# --------------------------------------------------------------------------------------------
# bytes


def _read_bytes(path: Path, file: str) -> bytes:
    """The bytes of a regular file, else :class:`InputError` (never blocks on a FIFO)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError("file not found", file=file) from None
    except OSError as e:
        raise InputError(f"cannot read the file: {e.strerror or e}", file=file) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError("is a directory, not a data file", file=file)
    if not stat.S_ISREG(st.st_mode):
        raise InputError("not a regular file (a FIFO, socket or device); give a data file", file=file)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"cannot read the file: {e.strerror or e}", file=file) from None


def _decode(data: bytes) -> tuple[str, UnicodeDecodeError | None]:
    """The text of a UTF-8 file (BOM allowed). Invalid bytes are kept as lone surrogates and the
    first decoding error is returned, so that the caller can name the row and field holding it."""
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as e:
        return data.decode("utf-8-sig", errors="surrogateescape"), e


def _invalid_utf8(file: str, err: UnicodeDecodeError, data_line: int, row: int | None, field: str | None) -> InputError:
    bad = err.object[err.start : err.start + 4]
    return InputError(
        f"not valid UTF-8 (bytes {bad!r} at byte {err.start}, line {data_line}); save the file as UTF-8",
        file=file,
        row=row,
        field=field,
    )


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _strings(value: Any) -> Any:
    """Every string (dict keys included) inside a JSON value, iteratively (no recursion limit)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)


def _check_strings(rec: dict[str, Any], *, file: str, row: int, err: UnicodeDecodeError | None, line: int) -> None:
    """A field holding a surrogate: invalid UTF-8 bytes (``err``) or a lone surrogate escape."""
    for k, v in rec.items():
        for s in (k, *_strings(v)):
            m = _ANY_SURROGATE.search(s)
            if m is None:
                continue
            if err is not None and _SURROGATE.fullmatch(m.group()):
                raise _invalid_utf8(file, err, line, row, _printable(k))
            raise InputError(
                f"lone surrogate U+{ord(m.group()):04X} in a string: not encodable as UTF-8 (a broken \\u escape)",
                file=file, row=row, field=_printable(k),
            )


# --------------------------------------------------------------------------------------------
# JSON


def _json_error(e: Exception, *, file: str, row: int, what: str = "JSON") -> InputError:
    if isinstance(e, _DuplicateKey):
        return InputError(f"key {_short(e.key)} appears twice in one JSON object", file=file, row=row,
                          field=_printable(e.key))
    if isinstance(e, json.JSONDecodeError):
        return InputError(f"malformed {what}: {e.msg} (column {e.colno})", file=file, row=row)
    if isinstance(e, RecursionError):
        return InputError(f"{what} value nested too deeply to read", file=file, row=row)
    # ValueError: an integer of more than sys.get_int_max_str_digits() digits
    msg = str(e).split(";")[0] or type(e).__name__
    return InputError(f"unreadable {what} value: {msg}", file=file, row=row)


def _parse_json(text: str, *, file: str, row: int) -> Any:
    try:
        return _DECODER.decode(text)
    except (_DuplicateKey, ValueError, RecursionError) as e:
        raise _json_error(e, file=file, row=row) from None


def _object(rec: Any, *, file: str, row: int) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise InputError(f"expected a JSON object, got {type(rec).__name__}", file=file, row=row)
    return rec


def _read_jsonl(text: str, file: str, bad_utf8: UnicodeDecodeError | None) -> tuple[list[str], list[tuple[int, dict]]]:
    columns: dict[str, None] = {}
    records = []
    for i, line in enumerate(text.split("\n")):
        row = i + 1
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            rec = _DECODER.decode(line)
        except (_DuplicateKey, ValueError, RecursionError) as e:
            if bad_utf8 is not None and _SURROGATE.search(line):
                raise _invalid_utf8(file, bad_utf8, row, row, None) from None
            raise _json_error(e, file=file, row=row) from None
        rec = _object(rec, file=file, row=row)
        if (bad_utf8 is not None and _SURROGATE.search(line)) or _SURROGATE_ESCAPE.search(line):
            _check_strings(rec, file=file, row=row, err=bad_utf8, line=row)
        for k in rec:
            columns.setdefault(k, None)
        records.append((row, rec))
    return list(columns), records


def _read_json(text: str, file: str, bad_utf8: UnicodeDecodeError | None) -> tuple[list[str], list[tuple[int, dict]]]:
    """A ``.json`` file: a JSON array of objects (row = element), else JSON Lines (as ``datasets`` reads both)."""
    start = len(text) - len(text.lstrip())
    if not text[start:start + 1] == "[":
        return _read_jsonl(text, file, bad_utf8)
    columns: dict[str, None] = {}
    records = []
    ws = re.compile(r"\s*")
    pos = ws.match(text, start + 1).end()
    row = 0
    if text[pos:pos + 1] == "]":
        pos += 1
    else:
        while True:
            row += 1
            try:
                rec, pos = _DECODER.raw_decode(text, pos)
            except (_DuplicateKey, ValueError, RecursionError) as e:
                if bad_utf8 is not None:
                    raise _invalid_utf8(file, bad_utf8, text.count("\n", 0, pos) + 1, row, None) from None
                raise _json_error(e, file=file, row=row) from None
            rec = _object(rec, file=file, row=row)
            _check_strings(rec, file=file, row=row, err=bad_utf8, line=text.count("\n", 0, pos) + 1)
            for k in rec:
                columns.setdefault(k, None)
            records.append((row, rec))
            pos = ws.match(text, pos).end()
            if text[pos:pos + 1] == ",":
                pos = ws.match(text, pos + 1).end()
                continue
            if text[pos:pos + 1] == "]":
                pos += 1
                break
            raise InputError("malformed JSON array: expected ',' or ']' after the element", file=file, row=row)
    if text[pos:].strip():
        raise InputError("malformed JSON: text after the closing ']'", file=file, row=row or None)
    return list(columns), records


# --------------------------------------------------------------------------------------------
# CSV


def _duplicate_column(columns: list[str], *, file: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(columns):
        if c in seen:
            raise InputError(
                f"{what} names column {_short(_printable(c))} twice (positions {seen[c] + 1} and {i + 1}); "
                "rename one of them",
                file=file, field=_printable(c),
            )
        seen[c] = i


def _read_csv(text: str, file: str, bad_utf8: UnicodeDecodeError | None) -> tuple[list[str], list[tuple[int, dict]]]:
    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        columns = list(header or [])
        _duplicate_column(columns, file=file, what="the header (line 1)")
        if bad_utf8 is not None:
            for c in columns:
                if _SURROGATE.search(c):
                    raise _invalid_utf8(file, bad_utf8, 1, None, _printable(c))
        records = []
        row = 0
        for values in reader:
            if not values:  # a blank line: not a row (as csv.DictReader counts)
                continue
            row += 1
            if len(values) > len(columns):
                raise InputError(f"row has {len(values)} fields, the header {len(columns)}", file=file, row=row)
            rec = dict(zip(columns, values))
            for c in columns[len(values):]:
                rec[c] = None
            if bad_utf8 is not None:
                for k, v in rec.items():
                    if isinstance(v, str) and _SURROGATE.search(v):
                        raise _invalid_utf8(file, bad_utf8, reader.line_num, row, _printable(k))
            records.append((row, rec))
    except csv.Error as e:
        raise InputError(f"malformed CSV: {e}", file=file, row=max(reader.line_num - 1, 1)) from None
    return columns, records


# --------------------------------------------------------------------------------------------
# Arrow (Parquet, datasets)


def table_records(table: pa.Table, *, file: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """``(columns, [(row, record)])`` of an Arrow table: a value Arrow cannot turn into Python names its row."""
    columns = list(table.column_names)
    _duplicate_column(columns, file=file, what="the table's schema")
    values: list[list[Any]] = []
    for name in columns:
        col = table.column(name)
        try:
            values.append(col.to_pylist())
        except Exception:  # find the row: pyarrow raises several types (ArrowInvalid, OverflowError, UnicodeError...)
            for i in range(len(col)):
                try:
                    col[i].as_py()
                except Exception as e:
                    raise InputError(f"unreadable value: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}",
                                     file=file, row=i + 1, field=_printable(name)) from None
            raise InputError("unreadable column", file=file, field=_printable(name)) from None
    records = [(i + 1, dict(zip(columns, vals))) for i, vals in enumerate(zip(*values))] if values else []
    return columns, records


def _read_parquet(data: bytes, file: str) -> tuple[list[str], list[tuple[int, dict]]]:
    try:
        names = pq.read_schema(pa.BufferReader(data)).names
    except Exception:
        names = []  # read_table below names what is wrong
    _duplicate_column(names, file=file, what="the table's schema")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as e:  # pyarrow raises several types for unreadable files
        raise InputError(f"cannot read Parquet file: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}",
                         file=file) from None
    return table_records(table, file=file)


# --------------------------------------------------------------------------------------------


def read_records(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Read a JSONL, JSON, CSV or Parquet file (by suffix) into (columns, [(row, record)]).

    Rows are 1-based (see the module docstring). For JSON the columns are the union of the keys of
    every object. A file without data rows is an error.
    """
    columns, records, _ = read_records_hashed(path)
    return columns, records


def read_records_hashed(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], str]:
    """:func:`read_records` and the sha256 of the very bytes that were read (provenance)."""
    path = Path(path)
    file = str(path)
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"unknown file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet", file=file)
    data = _read_bytes(path, file)
    sha = hashlib.sha256(data).hexdigest()
    if fmt == "parquet":
        columns, records = _read_parquet(data, file)
        if not records:
            raise InputError("no data rows (the table is empty)", file=file)
        return columns, records, sha
    text, bad_utf8 = _decode(data)
    del data
    reader = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv}[fmt]
    columns, records = reader(text, file, bad_utf8)
    if bad_utf8 is not None:  # invalid bytes outside any value (between records): still an error
        raise _invalid_utf8(file, bad_utf8, text.count("\n", 0, bad_utf8.start) + 1, None, None)
    if not records:
        what = "the file holds a header only, or nothing" if fmt == "csv" else "the file is empty"
        raise InputError(f"no data rows ({what})", file=file)
    return columns, records, sha
