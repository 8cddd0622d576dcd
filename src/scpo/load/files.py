"""The user's own preference data (``pairs``, ``ratings``) and the helpers every loader shares.

Sources (``--data-path``, :func:`read_source`):

* a file, by suffix: ``.jsonl`` / ``.ndjson`` (one JSON object a line), ``.json`` (a JSON array of
  objects, or JSON Lines), ``.csv`` (header row), ``.parquet`` — read by scpo's strict readers
  (:mod:`.readers`: exact rows, every unreadable value an error naming file, row and field);
* a folder of shards: its data files are found and split by file name exactly as ``datasets``
  (and the Hub) split a repository (``data/train-00000-of-00002.parquet`` is split ``train``; a
  folder without split names is all ``train``); ``--data-split`` chooses the split; each shard is
  read by the strict readers and errors name the shard and its row; ``README.md`` is skipped;
* a ``save_to_disk`` folder (``datasets.load_from_disk``; a ``DatasetDict`` by ``--data-split``);
* a Hub id (``owner/name`` that is not a local path): ``datasets.load_dataset(hub_id,
  split=--data-split)``. Rows are numbered within the split; errors name ``<id> (split <s>)``.

Every source goes through the same row-level validation below. ``cfg.columns`` maps canonical
column names to yours (``{"prompt": "question", "group": "country"}``; ``--group-column COL`` is
``group=COL``); extra columns are ignored. ``--group-value NAME``: every row is of group ``NAME``
(no group column needed; a group column present is then not read).

``pairs`` — one preference pair a row, in any of TRL's preference formats:

* ``chosen``, ``rejected`` and ``group`` (unless ``--group-value``) are required; ``prompt`` is
  optional unless mapped with ``--columns``: without it the prompt is *implicit*, the shared
  prefix of ``chosen`` and ``rejected``, cut as TRL's ``extract_prompt`` cuts it (a space just
  before the first difference goes with the completions). An empty shared prefix is an error.
* *standard* rows hold texts; *conversational* rows hold message lists
  (``[{"role": "user", "content": "..."}, ...]``) in ``chosen`` / ``rejected`` (and ``prompt``, a
  list or a text). A conversation becomes one (prompt, response) text pair: the prompt is the
  content of the **last user turn** of the prompt messages, the response the content of the one
  **assistant message** that follows. Other turns (a system message, earlier turns) are dropped
  and counted (``context_dropped``). scpo's :class:`~scpo.model.InputFormatter` then renders
  that pair for the model as it does every pair: ``tokenizer(prompt, response)`` for text-pair
  models (the packaged encoder), a user and an assistant turn through the chat template for
  chat-template models. A completion of more than one message, or not by the assistant, is an
  error naming row and field.
* optional ``split_key`` (default: the prompt, so a test prompt is never seen in training) and
  ``pair_id`` (default ``pairs-<row>``; given ids must be unique across all shards).

``ratings`` — one scored response a row (texts only):

* required ``prompt``, ``response``, ``score``, ``group`` (unless ``--group-value``), ``session``;
* optional ``split_key`` (default: the session).
* Pairs are formed within one session, between responses to the same prompt and of the same
  group, exactly as for PRISM (:func:`pairs_from_scores`): every two responses with different
  scores make a pair, the higher score chosen. A ``split_key`` must be the same on every row of a
  (group, session, prompt): else a pair could cross the train/test split (an error).

Groups (both loaders; :func:`group_roles`):

* ``--groups`` names the **target** groups (default: every group that is not a population group);
  it never removes data: rows of groups that are neither target nor population stay in
  ``PreferenceData.pairs`` (``stats["other_groups"]``, ``stats["pairs_other_groups"]``);
* ``--population-groups`` names the groups whose pairs train the global model: they go to
  ``PreferenceData.global_pairs`` (same columns) and not to ``pairs`` — unless also named in
  ``--groups``, then in both. A name matching no group is an error naming the nearest names.
* ``stats["per_group"][g]["role"]`` is ``target``, ``population``, ``target+population`` or ``other``.

Rules for bad and unusable rows (both loaders):

* errors (:class:`~scpo.errors.InputError` naming file, 1-based data row and field): a missing
  column (the message lists the columns present), an empty or whitespace-only text or group, a
  non-text prompt/response, a non-numeric, NaN or infinite score, every value the readers cannot
  read (see :mod:`.readers`), a malformed JSON line, a repeated ``pair_id``, a
  ``split_key`` that differs within a ratings session/prompt, a file without data rows, a file
  (or the target groups) yielding no usable pair (the message gives the counts dropped). JSONL
  rows are line numbers; CSV rows exclude the header.
* dropped and counted in ``stats`` (valid input that yields no training signal): a pair whose
  chosen and rejected texts are identical (``identical_pairs``), a pair repeated with the same
  group, prompt, chosen, rejected and split key (``duplicate_pairs``, the first is kept), tied
  scores (``ties``), two responses with the same text (``identical_texts``), a session/prompt
  with a single response (``single_response_units``).

Group values that are countries are named through the shared alias table
(:mod:`.countries`), so ``S. Africa`` and ``South Africa`` are one group; other names
(``group-a``) are kept as they are; every name is NFC-normalised first.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from ..config import DataConfig
from ..errors import ConfigError, InputError
from .base import PreferenceData, parse_score, require_text
from .countries import group_map, resolve_groups
from .readers import FILE_FORMATS, read_records
from .sources import Part, looks_like_hub_id, read_source
from .trl_formats import pair_texts

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

PAIR_FORMATS = FILE_FORMATS


# --------------------------------------------------------------------------------------------
# values


# --------------------------------------------------------------------------------------------
# reading


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
# groups: targets, population, the others


@dataclass
class GroupRoles:
    """Which groups of a file are trained (``targets``), train the global model (``population``), or neither."""

    all: dict[str, list[str]]
    targets: dict[str, list[str]]
    population: dict[str, list[str]]

    def role(self, group: str) -> str:
        t, p = group in self.targets, group in self.population
        return "target+population" if t and p else "target" if t else "population" if p else "other"

    def in_pairs(self, group: str) -> bool:
        """Everything but population-only groups stays in ``PreferenceData.pairs``."""
        return group in self.targets or group not in self.population

    @property
    def others(self) -> list[str]:
        return [g for g in self.all if g not in self.targets and g not in self.population]


def group_roles(cfg: DataConfig, raw_names: Iterable[str], *, file: str, field: str) -> GroupRoles:
    """Resolve ``--groups`` (targets) and ``--population-groups`` against the data's group names.

    Without ``--groups`` every group that is not a population group is a target. Unknown names are
    :class:`InputError` naming the nearest names.
    """
    raw_names = list(raw_names)
    every = resolve_groups(None, raw_names, file=file)
    population: dict[str, list[str]] = {}
    if cfg.population_groups:
        try:
            population = resolve_groups(list(cfg.population_groups), raw_names, file=file)
        except InputError as e:
            raise InputError(f"--population-groups: {e.detail}", file=e.file, field="population_groups") from None
    if cfg.groups:
        targets = resolve_groups(list(cfg.groups), raw_names, file=file)
    else:
        targets = {g: r for g, r in every.items() if g not in population}
        if not targets:
            raise InputError(f"every group of the data is a population group ({', '.join(population)}): name the "
                             "groups to train with --groups", file=file, field=field)
    return GroupRoles(every, targets, population)


def _role_stats(roles: GroupRoles, per_group: Mapping[str, Counter[str]], keys: Sequence[str]) -> dict[str, Any]:
    return {
        "target_groups": list(roles.targets),
        "population_groups": list(roles.population),
        "other_groups": roles.others,
        "pairs_other_groups": sum(per_group[g]["pairs"] for g in roles.others),
        "per_group": {g: {"role": roles.role(g), **{k: per_group[g][k] for k in keys}} for g in roles.all},
    }


# --------------------------------------------------------------------------------------------
# loaders


def _generated_id(row: int, given: set[str], prefix: str = "pairs") -> str:
    """``pairs-<row>``, made distinct from every id the file gives."""
    out = f"{prefix}-{row}"
    while out in given:
        out += "-generated"
    return out


_GROUP_HINT = "; a file that is all one group: --group-value NAME; a group column of another name: --group-column COL"


def _group_column(cfg: DataConfig) -> dict[str, str]:
    mapping = dict(cfg.columns)
    if cfg.group_column:
        mapping["group"] = cfg.group_column
    return mapping


def _map(cfg: DataConfig, required: Sequence[str], optional: Sequence[str], part: Part) -> dict[str, str | None]:
    mapping = _group_column(cfg)
    try:
        return map_columns(mapping, required, optional, part.columns, file=part.file)
    except InputError as e:
        if e.field == mapping.get("group", "group"):
            raise InputError(e.detail + _GROUP_HINT, file=e.file, field=e.field) from None
        raise


def _group_of(cfg: DataConfig, rec: Mapping[str, Any], cols: Mapping[str, str | None], *, file: str, row: int) -> str:
    if cfg.group_value is not None:
        return cfg.group_value.strip()
    return require_text(rec.get(cols["group"]), file=file, row=row, field=cols["group"], allow_numbers=True).strip()


def _files_label(parts: list[Part], prov: Mapping[str, Any]) -> str:
    return parts[0].file if len(parts) == 1 else str(prov.get("file", parts[0].file))


def load_pairs(cfg: DataConfig) -> PreferenceData:
    """Load preference pairs (see the module docstring for the sources, formats, columns and rules)."""
    parts, prov = read_source(cfg)
    file = _files_label(parts, prov)
    explicit_prompt = "prompt" in cfg.columns
    group_opt = ("group",) if cfg.group_value is not None else ()
    required = ("prompt", "chosen", "rejected") if explicit_prompt else ("chosen", "rejected")
    required = (*required, *(() if group_opt else ("group",)))
    optional = (*(() if explicit_prompt else ("prompt",)), *group_opt, "split_key", "pair_id")
    counts: Counter[str] = Counter()
    rows: list[tuple[str, int, str, str, str, str, str, str | None]] = []
    n_records = 0
    split_by_key = False
    for part in parts:
        cols = _map(cfg, required, optional, part)
        split_by_key |= cols["split_key"] is not None
        f = part.file
        n_records += len(part.records)
        for row, rec in part.records:
            prompt, chosen, rejected = pair_texts(rec, cols, file=f, row=row, counts=counts, present=part.columns)
            group = _group_of(cfg, rec, cols, file=f, row=row)
            split_key = prompt
            if cols["split_key"] is not None and rec.get(cols["split_key"]) not in (None, ""):
                split_key = require_text(rec.get(cols["split_key"]), file=f, row=row, field=cols["split_key"],
                                         allow_numbers=True)
            pair_id = None
            if cols["pair_id"] is not None and rec.get(cols["pair_id"]) not in (None, ""):
                pair_id = require_text(rec.get(cols["pair_id"]), file=f, row=row, field=cols["pair_id"],
                                       allow_numbers=True)
            rows.append((f, row, prompt, chosen, rejected, group, split_key, pair_id))

    gmap = group_map(r[5] for r in rows)
    group_field = "group" if cfg.group_value is not None else _group_column(cfg).get("group", "group")
    roles = group_roles(cfg, list(gmap), file=file, field=group_field)

    table, gtable = PairTable(), PairTable()
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    seen_pairs: set[tuple[str, str, str, str, str]] = set()
    seen_ids: dict[str, tuple[str, int]] = {}
    given_ids = {r[7] for r in rows if r[7] is not None}
    many = len(parts) > 1
    for k, (f, row, prompt, chosen, rejected, raw_group, split_key, pair_id) in enumerate(rows):
        group = gmap[raw_group]
        if pair_id is not None:
            if pair_id in seen_ids:
                where = seen_ids[pair_id]
                at = f"row {where[1]}" + (f" of {where[0]}" if where[0] != f else "")
                raise InputError(f"pair_id {pair_id!r} repeats {at}", file=f, row=row, field=cols_field(cfg, "pair_id"))
            seen_ids[pair_id] = (f, row)
        pg = per_group[group]
        if chosen == rejected:
            pg["identical_pairs"] += 1
            continue
        key = (group, prompt, chosen, rejected, split_key)
        if key in seen_pairs:
            pg["duplicate_pairs"] += 1
            continue
        seen_pairs.add(key)
        pg["pairs"] += 1
        pid = pair_id if pair_id is not None else _generated_id(k + 1 if many else row, given_ids)
        fields = dict(pair_id=pid, group=group, prompt=prompt, chosen=chosen, rejected=rejected,
                      split_key=split_key, raw_group=raw_group, source_row=row)
        if roles.in_pairs(group):
            table.add(**fields)
        if group in roles.population:
            gtable.add(**fields)
    target_pairs = sum(per_group[g]["pairs"] for g in roles.targets)
    if not target_pairs:
        dropped = {k: sum(per_group[g][k] for g in roles.targets) for k in ("identical_pairs", "duplicate_pairs")}
        what = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items() if v)
        scope = f"the requested group(s) {list(roles.targets)}" if cfg.groups else f"the target group(s) {list(roles.targets)}"
        raise InputError(f"no usable pairs in {scope}" + (f" ({what} dropped)" if what else ""), file=file,
                         field=group_field if (cfg.groups or cfg.population_groups) else None)
    stats = {
        "rows": n_records,
        "pairs": len(table),
        "global_pairs": len(gtable),
        "identical_pairs": sum(c["identical_pairs"] for c in per_group.values()),
        "duplicate_pairs": sum(c["duplicate_pairs"] for c in per_group.values()),
        **{k: counts[k] for k in ("implicit_prompt_rows", "conversational_rows", "context_dropped")},
        **_role_stats(roles, per_group, ("pairs", "identical_pairs", "duplicate_pairs")),
    }
    return PreferenceData(
        name="pairs",
        pairs=table.to_dataset(),
        global_pairs=gtable.to_dataset() if roles.population else None,
        default_groups=list(roles.targets),
        default_test_fraction=0.2,
        split_unit="split key" if split_by_key else "prompt",
        group_matches=roles.targets,
        stats=stats,
        provenance={**prov, "columns": dict(_group_column(cfg)),
                    **({"group_value": cfg.group_value} if cfg.group_value is not None else {})},
    )


def cols_field(cfg: DataConfig, name: str) -> str:
    """The file's name of a canonical column."""
    return _group_column(cfg).get(name, name)


def load_ratings(cfg: DataConfig) -> PreferenceData:
    """Load scored responses and form pairs within sessions (see the module docstring)."""
    parts, prov = read_source(cfg)
    file = _files_label(parts, prov)
    group_opt = ("group",) if cfg.group_value is not None else ()
    required = ("prompt", "response", "score", "session", *(() if group_opt else ("group",)))

    # unit = (raw group, session, prompt) -> scored responses; split key per unit
    units: dict[tuple[str, str, str], list[Scored]] = {}
    unit_split: dict[tuple[str, str, str], tuple[str, str, int]] = {}
    n_records = 0
    split_by_key = False
    for part in parts:
        cols = _map(cfg, required, (*group_opt, "split_key"), part)
        split_by_key |= cols["split_key"] is not None
        f = part.file
        n_records += len(part.records)
        for row, rec in part.records:
            prompt = require_text(rec.get(cols["prompt"]), file=f, row=row, field=cols["prompt"])
            response = require_text(rec.get(cols["response"]), file=f, row=row, field=cols["response"])
            score = parse_score(rec.get(cols["score"]), file=f, row=row, field=cols["score"])
            group = _group_of(cfg, rec, cols, file=f, row=row)
            session = require_text(rec.get(cols["session"]), file=f, row=row, field=cols["session"], allow_numbers=True)
            split_key = session
            if cols["split_key"] is not None and rec.get(cols["split_key"]) not in (None, ""):
                split_key = require_text(rec.get(cols["split_key"]), file=f, row=row, field=cols["split_key"],
                                         allow_numbers=True)
            key = (group, session, prompt)
            if key in unit_split and unit_split[key][0] != split_key:
                first, first_file, first_row = unit_split[key]
                at = f"row {first_row}" + (f" of {first_file}" if first_file != f else "")
                raise InputError(
                    f"split key {split_key!r} differs from {first!r} of {at} (same group, session "
                    "and prompt): its pairs would cross the train/test split",
                    file=f, row=row, field=cols["split_key"],
                )
            units.setdefault(key, []).append(Scored(prompt, response, score, row))
            unit_split.setdefault(key, (split_key, f, row))

    gmap = group_map(k[0] for k in units)
    group_field = "group" if cfg.group_value is not None else _group_column(cfg).get("group", "group")
    roles = group_roles(cfg, list(gmap), file=file, field=group_field)

    table, gtable = PairTable(), PairTable()
    per_group: dict[str, Counter[str]] = defaultdict(Counter)
    sessions: dict[str, set[str]] = defaultdict(set)
    many = len(parts) > 1
    for u, (key, items) in enumerate(units.items()):
        raw_group, session, prompt = key
        group = gmap[raw_group]
        pg = per_group[group]
        sessions[group].add(session)
        if len(items) < 2:
            pg["single_response_units"] += 1
            continue
        pairs, c = pairs_from_scores(items)
        pg.update(c)
        for chosen, rejected in pairs:
            pg["pairs"] += 1
            a, b = sorted((chosen.row, rejected.row))
            fields = dict(pair_id=f"ratings-{u + 1}-{a}-{b}" if many else f"ratings-{a}-{b}", group=group,
                          prompt=prompt, chosen=chosen.response, rejected=rejected.response,
                          split_key=unit_split[key][0], raw_group=raw_group, source_row=a)
            if roles.in_pairs(group):
                table.add(**fields)
            if group in roles.population:
                gtable.add(**fields)
    keys = ("pairs", "ties", "identical_texts", "single_response_units")
    if not sum(per_group[g]["pairs"] for g in roles.targets):
        detail = "; ".join(
            f"{g!r}: " + (", ".join(f"{per_group[g][k]} {k.replace('_', ' ')}" for k in keys[1:] if per_group[g][k])
                          or "no rows")
            for g in roles.targets
        )
        scope = "requested group(s)" if cfg.groups else "target group(s)"
        raise InputError(
            f"no usable pairs: every session/prompt of the {scope} has a single response or tied scores ({detail})",
            file=file, field=group_field if (cfg.groups or cfg.population_groups) else None,
        )
    role_stats = _role_stats(roles, per_group, keys)
    for g, st in role_stats["per_group"].items():
        st["sessions"] = len(sessions[g])
    stats = {
        "rows": n_records,
        "pairs": len(table),
        "global_pairs": len(gtable),
        **{k: sum(per_group[g][k] for g in roles.all) for k in keys[1:]},
        **role_stats,
    }
    return PreferenceData(
        name="ratings",
        pairs=table.to_dataset(),
        global_pairs=gtable.to_dataset() if roles.population else None,
        default_groups=list(roles.targets),
        default_test_fraction=0.2,
        split_unit="split key" if split_by_key else "session",
        group_matches=roles.targets,
        stats=stats,
        provenance={**prov, "columns": dict(_group_column(cfg)),
                    **({"group_value": cfg.group_value} if cfg.group_value is not None else {})},
    )


