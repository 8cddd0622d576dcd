"""PRISM (Kirk et al. 2024): rated LLM responses of ~1,500 participants from 38 countries.

Source: ``cfg.data_path`` a local folder holding ``utterances.jsonl`` and ``survey.jsonl`` (the
files of the Hub data set), or, when ``data_path`` is ``None`` or looks like a Hub id, the Hub
data set ``HannahRoseKirk/prism-alignment`` (configs ``utterances`` and ``survey``, loaded with
``datasets.load_dataset``).

* Survey: ``user_id`` and ``location``, a struct with ``reside_country`` and ``birth_country``
  (a flattened ``location.reside_country`` column or a top-level ``reside_country`` is accepted);
  ``cfg.country_field`` picks the field. A user's group is the canonical name of that country
  (:mod:`.countries`). Users without a country are dropped and counted.
* Utterances: ``user_id``, ``interaction_id``, ``user_prompt``, ``model_response``, ``score``
  (``utterance_id`` and every other column optional and ignored; without ``interaction_id`` the
  pair ``conversation_id`` + ``turn`` identifies an interaction).
* Pairs: within one user's interaction (and prompt), every two responses with different scores,
  the higher score chosen (:func:`.files.pairs_from_scores`, shared with ``ratings``); ties and
  interactions with a single response are dropped and counted per group.
* ``split_key`` is the user: the pipeline holds out 15% of users by default.

Bad input (:class:`~scpo.errors.InputError` with file, row and field): a missing required column,
a missing ``user_id``, a non-numeric, NaN or infinite score, a missing ``turn`` (when interactions
are identified by ``conversation_id`` + ``turn``), malformed JSON, invalid UTF-8.
Valid but unusable rows are dropped and counted: utterances of users absent from the survey,
users without a country, empty prompt or response texts (``empty_texts``).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from ..config import DataConfig
from ..errors import ConfigError, InputError
from ..provenance import portable_path
from .base import PreferenceData
from .countries import PAPER_COUNTRIES, group_map
from .files import (
    PairTable,
    Scored,
    looks_like_hub_id,
    pairs_from_scores,
    parse_score,
    require_text,
    select_groups,
)
from .readers import read_records_hashed

HUB_ID = "HannahRoseKirk/prism-alignment"
COUNTRY_FIELDS = ("reside_country", "birth_country")


def _hub_records(hub_id: str, config: str) -> tuple[list[str], Iterable[tuple[int, dict[str, Any]]]]:
    try:
        ds = datasets.load_dataset(hub_id, config, split="train")
    except Exception as e:  # offline, unknown id, ...: one clear message
        raise InputError(
            f"cannot load the Hub data set {hub_id!r} (config {config!r}) ({type(e).__name__}: {e}); "
            + ("no local path of that name exists either; " if hub_id != HUB_ID else "")
            + "give --data-path a local folder holding utterances.jsonl and survey.jsonl",
            file=hub_id,
        ) from None
    return list(ds.column_names), ((i + 1, rec) for i, rec in enumerate(ds))


def _country(rec: dict[str, Any], field: str) -> str | None:
    loc = rec.get("location")
    if isinstance(loc, str) and loc.strip().startswith("{"):
        try:
            loc = json.loads(loc)
        except json.JSONDecodeError:
            loc = None
    value = loc.get(field) if isinstance(loc, dict) else None
    if value is None:
        value = rec.get(f"location.{field}", rec.get(field))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def load_prism(cfg: DataConfig) -> PreferenceData:
    """Load PRISM as canonical pairs, one group per country of ``cfg.country_field``."""
    if cfg.country_field not in COUNTRY_FIELDS:
        raise ConfigError(f"--country-field must be reside_country or birth_country, got {cfg.country_field!r}")
    field = cfg.country_field

    if cfg.data_path is None or looks_like_hub_id(cfg.data_path):
        hub_id = cfg.data_path or HUB_ID
        survey_file = utt_file = hub_id
        s_cols, s_recs = _hub_records(hub_id, "survey")
        u_cols, u_recs = _hub_records(hub_id, "utterances")
        provenance: dict[str, Any] = {"hub_id": hub_id, "configs": ["survey", "utterances"]}
    else:
        folder = Path(cfg.data_path)
        if not folder.is_dir():
            raise InputError("expected a folder holding utterances.jsonl and survey.jsonl", file=str(folder))
        survey_path, utt_path = folder / "survey.jsonl", folder / "utterances.jsonl"
        for p in (survey_path, utt_path):
            if not p.is_file():
                raise InputError(f"missing {p.name} in the PRISM folder", file=str(p))
        survey_file, utt_file = str(survey_path), str(utt_path)
        s_cols, s_recs, s_sha = read_records_hashed(survey_path)  # hashes of the very bytes read
        u_cols, u_recs, u_sha = read_records_hashed(utt_path)
        provenance = {"folder": portable_path(folder), "files": {survey_path.name: s_sha, utt_path.name: u_sha}}
    provenance["country_field"] = field

    # ---- survey: user -> raw country
    if "user_id" not in s_cols:
        raise InputError(
            f"missing column 'user_id'; columns present: {', '.join(s_cols)}", file=survey_file, field="user_id"
        )
    has_location = "location" in s_cols or f"location.{field}" in s_cols or field in s_cols
    if not has_location:
        raise InputError(
            f"missing column 'location' (with {field}); columns present: {', '.join(s_cols)}",
            file=survey_file,
            field="location",
        )
    user_country: dict[str, str | None] = {}
    user_row: dict[str, int] = {}
    for row, rec in s_recs:
        uid = require_text(rec.get("user_id"), file=survey_file, row=row, field="user_id", allow_numbers=True)
        country = _country(rec, field)
        if uid in user_country and user_country[uid] != country:
            raise InputError(
                f"user {uid!r} repeats row {user_row[uid]} with another country", file=survey_file, row=row, field=field
            )
        user_country[uid] = country
        user_row.setdefault(uid, row)

    # ---- utterances: interaction units
    required = ["user_id", "user_prompt", "model_response", "score"]
    by_turn = "interaction_id" not in u_cols
    required += ["conversation_id", "turn"] if by_turn else ["interaction_id"]
    missing = [c for c in required if c not in u_cols]
    if missing:
        raise InputError(
            f"missing column(s) {missing}; columns present: {', '.join(u_cols)}", file=utt_file, field=missing[0]
        )

    counts: Counter[str] = Counter()
    absent_users: set[str] = set()
    countryless_users: set[str] = set()
    units: dict[tuple[str, str, str], list[Scored]] = {}
    for row, rec in u_recs:
        counts["utterances"] += 1
        uid = require_text(rec.get("user_id"), file=utt_file, row=row, field="user_id", allow_numbers=True)
        score = parse_score(rec.get("score"), file=utt_file, row=row, field="score")
        if by_turn:
            conv = require_text(
                rec.get("conversation_id"), file=utt_file, row=row, field="conversation_id", allow_numbers=True
            )
            turn = rec.get("turn")
            if turn is None or isinstance(turn, bool) or (isinstance(turn, str) and not turn.strip()):
                raise InputError(f"missing or invalid turn {turn!r}", file=utt_file, row=row, field="turn")
            inter = f"{conv}/turn-{turn}"
        else:
            inter = require_text(
                rec.get("interaction_id"), file=utt_file, row=row, field="interaction_id", allow_numbers=True
            )
        prompt, response = rec.get("user_prompt"), rec.get("model_response")
        if uid not in user_country:
            counts["utterances_users_not_in_survey"] += 1
            absent_users.add(uid)
            continue
        if user_country[uid] is None:
            counts["utterances_without_country"] += 1
            countryless_users.add(uid)
            continue
        if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str) or not response.strip():
            counts["empty_texts"] += 1
            continue
        units.setdefault((uid, inter, prompt), []).append(Scored(prompt, response, score, row))

    raw_of_user = {uid: c for uid, c in user_country.items() if c is not None}
    used_raw = {raw_of_user[uid] for uid, _, _ in units}
    gmap = group_map(used_raw)
    matches, missing_defaults = select_groups(cfg.groups, PAPER_COUNTRIES, list(gmap), file=survey_file)
    keep_raw = {raw for raws in matches.values() for raw in raws}

    table = PairTable()
    per_group: dict[str, Counter[str]] = {g: Counter() for g in matches}
    users: dict[str, set[str]] = defaultdict(set)
    for (uid, _inter, prompt), items in units.items():
        raw = raw_of_user[uid]
        if raw not in keep_raw:
            continue
        group = gmap[raw]
        pg = per_group[group]
        users[group].add(uid)
        pg["interactions"] += 1
        if len(items) < 2:
            pg["single_response_interactions"] += 1
            continue
        pairs, c = pairs_from_scores(items)
        pg.update(c)
        for chosen, rejected in pairs:
            pg["pairs"] += 1
            a, b = sorted((chosen.row, rejected.row))
            table.add(
                pair_id=f"prism-{a}-{b}",
                group=group,
                prompt=prompt,
                chosen=chosen.response,
                rejected=rejected.response,
                split_key=uid,
                raw_group=raw,
                source_row=a,
            )

    keys = ("interactions", "pairs", "ties", "identical_texts", "single_response_interactions")
    stats: dict[str, Any] = {
        "country_field": field,
        "utterances": counts["utterances"],
        "survey_users": len(user_country),
        "users_not_in_survey": len(absent_users),
        "utterances_users_not_in_survey": counts["utterances_users_not_in_survey"],
        "users_without_country": sum(1 for c in user_country.values() if c is None),
        "utterances_without_country": counts["utterances_without_country"],
        "empty_texts": counts["empty_texts"],
        "pairs": len(table),
        **{k: sum(pg[k] for pg in per_group.values()) for k in keys[2:]},
        "default_groups_missing": missing_defaults,
        "per_group": {g: {"users": len(users[g]), **{k: per_group[g][k] for k in keys}} for g in matches},
    }
    return PreferenceData(
        name="prism",
        pairs=table.to_dataset(),
        default_groups=[g for g in PAPER_COUNTRIES if g in set(gmap.values())],
        default_test_fraction=0.15,
        split_unit="user",
        group_matches=matches,
        stats=stats,
        provenance=provenance,
    )
