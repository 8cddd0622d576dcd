"""The user's own candidates with held-out human choices: the downstream study's input without a known truth.

One record per prompt (JSONL, JSON array, or Parquet; :func:`scpo.load.readers.read_records`)::

    {"prompt": "How should I greet my new neighbours?",
     "candidates": ["Bring a small gift and introduce yourself.", "Wave when you see them.", ...],
     "choices": {"Chile": [31, 12, ...], "Japan": [0.2, 0.5, ...]}}

``choices`` maps a group to how many of its people chose each candidate (counts, or shares: each
group's values are divided by their sum), in the order of ``candidates``. A group that did not see
the prompt is left out. The prompt's candidates are what a reward model chooses between; a group's
shares are the truth the downstream study scores a pick by (the share of the group's people who
chose the candidate the model ranks first), exactly as GlobalOpinionQA's answer shares are
(:func:`scpo.load.goqa.answer_distributions`, whose row format :func:`load_candidate_choices`
returns). Group names are matched as the pairs loader matches them (NFC, the country alias table).

Bad input is one :class:`~scpo.errors.InputError` naming the file, the row and the field.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import InputError
from .countries import group_map
from .readers import read_records

__all__ = ["load_candidate_choices"]


def _text(v: Any, *, file: str, row: int, field: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"expected a non-empty text, got {v!r:.60}", file=file, row=row, field=field)
    return v


def load_candidate_choices(path: str | Path) -> list[tuple[str, list[str], dict[str, list[float]]]]:
    """``(prompt, candidates, group -> shares)`` of every record of ``path`` (see the module docstring)."""
    file = Path(path).name
    _, records = read_records(path)
    raw: list[tuple[str, list[str], dict[str, list[float]]]] = []
    seen: dict[str, int] = {}
    for row, rec in records:
        for key in ("prompt", "candidates", "choices"):
            if key not in rec:
                raise InputError(f"missing field {key!r} (a record is {{prompt, candidates, choices}})",
                                 file=file, row=row, field=key)
        prompt = _text(rec["prompt"], file=file, row=row, field="prompt")
        if prompt in seen:
            raise InputError(f"prompt repeats row {seen[prompt]}: give each prompt's candidates once",
                             file=file, row=row, field="prompt")
        seen[prompt] = row
        cands = rec["candidates"]
        if not isinstance(cands, list) or len(cands) < 2:
            raise InputError("expected a list of at least two candidate texts", file=file, row=row, field="candidates")
        cands = [_text(c, file=file, row=row, field=f"candidates[{i}]") for i, c in enumerate(cands)]
        if len(set(cands)) != len(cands):
            raise InputError("a candidate text repeats", file=file, row=row, field="candidates")
        choices = rec["choices"]
        if not isinstance(choices, dict) or not choices:
            raise InputError("expected an object: group -> one count or share per candidate", file=file, row=row,
                             field="choices")
        shares: dict[str, list[float]] = {}
        for g, vals in choices.items():
            field = f"choices.{g}"
            if not isinstance(vals, list) or len(vals) != len(cands):
                raise InputError(f"expected {len(cands)} numbers (one per candidate), got {vals!r:.60}",
                                 file=file, row=row, field=field)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                       for v in vals):
                raise InputError("counts or shares must be finite numbers >= 0", file=file, row=row, field=field)
            total = float(sum(vals))
            if total <= 0:
                raise InputError("every count is 0: nobody of this group chose", file=file, row=row, field=field)
            name = unicodedata.normalize("NFC", str(g).strip())
            if not name:
                raise InputError("a group name is empty", file=file, row=row, field="choices")
            shares[name] = [float(v) / total for v in vals]
        raw.append((prompt, cands, shares))
    if not raw:
        raise InputError("no records: nothing to choose between", file=file)
    names = group_map({g for _, _, s in raw for g in s})
    out = []
    for prompt, cands, shares in raw:
        merged: dict[str, list[list[float]]] = {}
        for g, v in shares.items():
            merged.setdefault(names[g], []).append(v)
        out.append((prompt, cands, {g: [sum(c) / len(vs) for c in zip(*vs)] for g, vs in merged.items()}))
    return out
