"""GlobalOpinionQA (Durmus et al. 2023): survey questions with each country's answer shares.

Source: ``cfg.data_path`` a local file in the Hub schema (``question``, ``selections``,
``options``, ``source``; CSV like the Hub's ``data/global_opinions.csv``, JSONL or Parquet also
read) or, when ``data_path`` is ``None`` or looks like a Hub id, the Hub data set
``Anthropic/llm_global_opinions`` (``datasets.load_dataset``, split ``train``).

* ``selections`` is the text of a Python ``defaultdict(<class 'list'>, {country: [share, ...]})``;
  the dict literal is extracted and parsed with :func:`ast.literal_eval` (never ``eval``).
  ``options`` is the text of a Python list, parsed the same way.
* Groups are countries named through the shared alias table (:mod:`.countries`): ``S. Africa``
  is ``South Africa``, ``Britain`` and ``Great Britain`` are ``United Kingdom``; samples with a
  suffix such as ``(Non-national sample)`` stay their own group. When two raw samples of one
  group answer the same question (say ``Britain`` and ``Great Britain``) their shares are
  averaged (counted in ``stats["merged_samples"]``).
* Pairs of a country: prompt = the question; for every two options whose shares in that country
  differ by at least ``cfg.min_share_gap`` (and by more than zero), the higher share is chosen.
* ``global_pairs``: the pooled population, group ``population``: pairs built the same way from
  each question's mean distribution over every group (country or separate sample) that answered
  it, each counted once.
* ``contested``: the pair's order in the country contradicts the order of the mean distribution
  (equal mean shares: not contested).
* ``split_key`` is the question text (stripped), so a question repeated with another option set
  lands on the same side of the split, and test questions are unseen by every model.

Validation (:class:`~scpo.errors.InputError` naming file, 1-based data row and field): missing
column, empty question or option text, malformed ``selections``/``options`` text, share list
length different from the number of options, a NaN/infinite/negative share or one above 1, and
shares whose sum differs from 1 by more than :data:`SUM_TOLERANCE` (0.05; the real data sums to
1 within 0.003). A distribution of all zeros (no respondents: it occurs in the real data) is not
an error: it is skipped and counted in ``stats["empty_distributions"]``. Rows with fewer than two
options, or with no non-empty distribution, are counted in ``stats["unusable_rows"]``.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from ..config import DataConfig
from ..errors import InputError
from ..provenance import portable_path
from .base import PreferenceData
from .countries import PAPER_COUNTRIES, group_map
from .files import PairTable, looks_like_hub_id, require_text, select_groups
from .readers import read_records_hashed

HUB_ID = "Anthropic/llm_global_opinions"
SUM_TOLERANCE = 0.05
"""A non-zero distribution whose shares sum outside ``1 ± SUM_TOLERANCE`` is an error."""
POPULATION = "population"
"""Group name of the pooled population pairs (``global_pairs``)."""
REQUIRED = ("question", "selections", "options")

_DEFAULTDICT = re.compile(r"^defaultdict\(\s*(?:<class '\w+'>|\w+)\s*,\s*(?P<body>\{.*\})\s*\)$", re.S)
_NONFINITE = re.compile(r"\b(?:nan|NaN|inf|Infinity)\b")


def parse_selections(text: Any, *, file: str, row: int) -> dict[str, list[float]]:
    """Country -> shares from the ``selections`` text (validated, not yet checked against options)."""
    field = "selections"
    if not isinstance(text, str) or not text.strip():
        raise InputError("empty selections", file=file, row=row, field=field)
    s = text.strip()
    m = _DEFAULTDICT.match(s)
    body = m.group("body") if m else s
    if not (body.startswith("{") and body.endswith("}")):
        raise InputError(
            f"expected \"defaultdict(<class 'list'>, {{...}})\" or a dict literal, got {s[:60]!r}",
            file=file,
            row=row,
            field=field,
        )
    try:
        value = ast.literal_eval(body)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        if _NONFINITE.search(body):
            raise InputError("a share is NaN or infinite", file=file, row=row, field=field) from None
        raise InputError(f"malformed selections text {s[:60]!r}...", file=file, row=row, field=field) from None
    if not isinstance(value, dict):
        raise InputError(f"selections must be a dict, got {type(value).__name__}", file=file, row=row, field=field)
    out: dict[str, list[float]] = {}
    for country, shares in value.items():
        if not isinstance(country, str) or not country.strip():
            raise InputError(f"country name must be non-empty text, got {country!r}", file=file, row=row, field=field)
        if not isinstance(shares, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in shares
        ):
            raise InputError(f"shares of {country!r} must be a list of numbers", file=file, row=row, field=field)
        vals = [float(x) for x in shares]
        for x in vals:
            if not math.isfinite(x):
                raise InputError(f"a share of {country!r} is NaN or infinite", file=file, row=row, field=field)
            if x < 0.0 or x > 1.0 + 1e-6:
                raise InputError(f"share {x} of {country!r} is outside [0, 1]", file=file, row=row, field=field)
        total = sum(vals)
        if total != 0.0 and abs(total - 1.0) > SUM_TOLERANCE:
            raise InputError(
                f"shares of {country!r} sum to {total:.4f}, not 1 (tolerance {SUM_TOLERANCE})",
                file=file,
                row=row,
                field=field,
            )
        out[country.strip()] = vals
    return out


def parse_options(text: Any, *, file: str, row: int) -> list[str]:
    """The answer options from the ``options`` text (a Python list literal)."""
    field = "options"
    if isinstance(text, (list, tuple)):
        value: Any = list(text)
    else:
        if not isinstance(text, str) or not text.strip():
            raise InputError("empty options", file=file, row=row, field=field)
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise InputError(f"malformed options text {text[:60]!r}", file=file, row=row, field=field) from None
    if not isinstance(value, (list, tuple)):
        raise InputError(f"options must be a list, got {type(value).__name__}", file=file, row=row, field=field)
    out = []
    for k, opt in enumerate(value):
        if isinstance(opt, (int, float)) and not isinstance(opt, bool):
            opt = str(opt)
        if not isinstance(opt, str) or not opt.strip():
            raise InputError(f"option {k + 1} is empty or not text ({opt!r})", file=file, row=row, field=field)
        out.append(opt.strip())
    return out


def _distribution_pairs(shares: list[float], options: list[str], gap: float) -> tuple[list[tuple[int, int]], int, int]:
    """(chosen index, rejected index) pairs of one distribution, small-gap drops, identical-text drops."""
    pairs, small, same = [], 0, 0
    for i in range(len(options)):
        for j in range(i + 1, len(options)):
            d = shares[i] - shares[j]
            if d == 0.0 or abs(d) < gap - 1e-9:
                small += 1
            elif options[i] == options[j]:
                same += 1
            else:
                pairs.append((i, j) if d > 0 else (j, i))
    return pairs, small, same


def _records(cfg: DataConfig) -> tuple[str, list[str], Iterable[tuple[int, dict[str, Any]]], dict[str, Any]]:
    if cfg.data_path is None or looks_like_hub_id(cfg.data_path):
        hub_id = cfg.data_path or HUB_ID
        try:
            ds = datasets.load_dataset(hub_id, split="train")
        except Exception as e:  # offline, unknown id, ...: one clear message
            raise InputError(
                f"cannot load the Hub data set {hub_id!r} ({type(e).__name__}: {e}); "
                + ("no local path of that name exists either; " if cfg.data_path else "")
                + "give --data-path a local copy of global_opinions.csv",
                file=hub_id,
            ) from None
        return hub_id, list(ds.column_names), ((i + 1, rec) for i, rec in enumerate(ds)), {"hub_id": hub_id}
    path = Path(cfg.data_path)
    columns, records, sha = read_records_hashed(path)  # the hash of the very bytes read
    return str(path), columns, records, {"file": portable_path(path), "sha256": sha}


def load_goqa(cfg: DataConfig) -> PreferenceData:
    """Load GlobalOpinionQA as canonical pairs per country plus the pooled population pairs."""
    file, columns, records, provenance = _records(cfg)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(
            f"missing column(s) {missing}; columns present: {', '.join(columns) or 'none'}", file=file, field=missing[0]
        )
    gap = float(cfg.min_share_gap)

    # ---- parse and validate every row
    parsed: list[tuple[int, str, list[str], dict[str, list[float]]]] = []
    raw_names: set[str] = set()
    for row, rec in records:
        question = require_text(rec.get("question"), file=file, row=row, field="question").strip()
        options = parse_options(rec.get("options"), file=file, row=row)
        sel = parse_selections(rec.get("selections"), file=file, row=row)
        for country, shares in sel.items():
            if len(shares) != len(options):
                raise InputError(
                    f"{country!r} has {len(shares)} shares for {len(options)} options",
                    file=file,
                    row=row,
                    field="selections",
                )
        raw_names.update(sel)
        parsed.append((row, question, options, sel))

    gmap = group_map(raw_names)
    matches, missing_defaults = select_groups(cfg.groups, PAPER_COUNTRIES, list(gmap), file=file)
    kept = set(matches)

    table = PairTable(with_contested=True)
    population = PairTable(with_contested=True)
    per_group: dict[str, Counter[str]] = {g: Counter() for g in matches}
    counts: Counter[str] = Counter()
    glob: Counter[str] = Counter()
    for row, question, options, sel in parsed:
        # group -> (averaged shares, raw names)
        merged: dict[str, list[list[float]]] = defaultdict(list)
        raws: dict[str, list[str]] = defaultdict(list)
        for raw, shares in sel.items():
            if sum(shares) == 0.0:
                counts["empty_distributions"] += 1
                continue
            merged[gmap[raw]].append(shares)
            raws[gmap[raw]].append(raw)
        if len(options) < 2 or not merged:
            counts["unusable_rows"] += 1
            continue
        dists: dict[str, list[float]] = {}
        for g, lists in merged.items():
            if len(lists) > 1:
                counts["merged_samples"] += 1
            dists[g] = [sum(col) / len(lists) for col in zip(*lists)]
        mean = [sum(col) / len(dists) for col in zip(*dists.values())]

        gpairs, small, same = _distribution_pairs(mean, options, gap)
        glob["questions"] += 1
        glob["dropped_small_gap"] += small
        counts["identical_option_pairs"] += same
        for ci, ri in gpairs:
            population.add(
                pair_id=f"goqa-{row}-{POPULATION}-{ci}-{ri}",
                group=POPULATION,
                prompt=question,
                chosen=options[ci],
                rejected=options[ri],
                split_key=question,
                raw_group=POPULATION,
                source_row=row,
                contested=False,
            )
        glob["pairs"] += len(gpairs)

        for g in sorted(kept.intersection(dists)):
            shares = dists[g]
            pairs, small, same = _distribution_pairs(shares, options, gap)
            pg = per_group[g]
            pg["questions"] += 1
            pg["dropped_small_gap"] += small
            raw_group = " + ".join(raws[g])
            for ci, ri in pairs:
                contested = mean[ci] < mean[ri]
                pg["pairs"] += 1
                pg["contested"] += int(contested)
                table.add(
                    pair_id=f"goqa-{row}-{g}-{ci}-{ri}",
                    group=g,
                    prompt=question,
                    chosen=options[ci],
                    rejected=options[ri],
                    split_key=question,
                    raw_group=raw_group,
                    source_row=row,
                    contested=contested,
                )

    keys = ("questions", "pairs", "contested", "dropped_small_gap")
    stats: dict[str, Any] = {
        "rows": len(parsed),
        "countries": len(set(gmap.values())),
        "min_share_gap": gap,
        "sum_tolerance": SUM_TOLERANCE,
        "unusable_rows": counts["unusable_rows"],
        "empty_distributions": counts["empty_distributions"],
        "merged_samples": counts["merged_samples"],
        "identical_option_pairs": counts["identical_option_pairs"],
        "pairs": len(table),
        "default_groups_missing": missing_defaults,
        "per_group": {g: {k: per_group[g][k] for k in keys} for g in matches},
        "global": {k: glob[k] for k in ("questions", "pairs", "dropped_small_gap")},
    }
    return PreferenceData(
        name="goqa",
        pairs=table.to_dataset(),
        default_groups=[g for g in PAPER_COUNTRIES if g in set(gmap.values())],
        global_pairs=population.to_dataset(),
        default_test_fraction=0.2,
        split_unit="question",
        group_matches=matches,
        stats=stats,
        provenance=provenance,
    )


def answer_distributions(cfg: DataConfig) -> list[tuple[str, list[str], dict[str, list[float]]]]:
    """Every usable row's ``(question, options, group -> answer shares)``, groups named as :func:`load_goqa`
    names them (aliases merged, two raw samples of one group averaged, all-zero distributions skipped).

    The truth of the downstream study's GlobalOpinionQA variant (:mod:`scpo.studies.downstream`): a
    question's options are the candidates, a country's shares the share of its respondents each
    option would match. Rows are validated exactly as :func:`load_goqa` validates them.
    """
    file, columns, records, _ = _records(cfg)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InputError(f"missing column(s) {missing}", file=file, field=missing[0])
    parsed = []
    raw_names: set[str] = set()
    for row, rec in records:
        question = require_text(rec.get("question"), file=file, row=row, field="question").strip()
        options = parse_options(rec.get("options"), file=file, row=row)
        sel = parse_selections(rec.get("selections"), file=file, row=row)
        if any(len(shares) != len(options) for shares in sel.values()):
            raise InputError(f"a share list's length differs from the {len(options)} options", file=file, row=row,
                             field="selections")
        raw_names.update(sel)
        parsed.append((question, options, sel))
    gmap = group_map(raw_names)
    out = []
    for question, options, sel in parsed:
        merged: dict[str, list[list[float]]] = defaultdict(list)
        for raw, shares in sel.items():
            if sum(shares) != 0.0:
                merged[gmap[raw]].append(shares)
        if len(options) < 2 or not merged:
            continue
        out.append((question, options, {g: [sum(col) / len(lists) for col in zip(*lists)] for g, lists in merged.items()}))
    return out
