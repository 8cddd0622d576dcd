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
from .readers import FILE_FORMATS, read_records, read_records_hashed, table_records

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

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` that is not an existing local path nor a file name with a data suffix."""
    if Path(name).exists():
        return False
    if Path(name).suffix.lower() in (*PAIR_FORMATS, ".tsv"):
        return False
    return bool(_HUB_ID.match(name))


# --------------------------------------------------------------------------------------------
# values


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
# sources: a file, a folder of shards, a save_to_disk folder, a Hub id


@dataclass
class Part:
    """The records of one source file (or one ``datasets`` table): rows are 1-based within it."""

    file: str
    columns: list[str]
    records: list[tuple[int, dict[str, Any]]]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _from_disk(path: Path, split: str) -> tuple[list[Part], dict[str, Any]]:
    file = str(path)
    try:
        ds = datasets.load_from_disk(file)
    except Exception as e:  # datasets raises several types for a damaged folder
        raise InputError(f"cannot load the save_to_disk folder: {_first_line(e)}", file=file) from None
    prov: dict[str, Any] = {"file": str(path.resolve()), "format": "save_to_disk"}
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"no split {split!r} (splits: {', '.join(ds)}); choose one with --data-split",
                             file=file, field="data_split")
        ds, prov["split"] = ds[split], split
    prov["files"] = {c["filename"]: file_sha256(c["filename"]) for c in ds.cache_files}
    columns, records = table_records(ds.with_format("arrow")[:], file=file)
    if not records:
        raise InputError("no data rows (the data set is empty)", file=file)
    return [Part(file, columns, records)], prov


_SKIPPED_IN_FOLDERS = {".md", ".txt", ".yaml", ".yml", ".lock", ".gitattributes"}


def _from_folder(path: Path, split: str) -> tuple[list[Part], dict[str, Any]]:
    """A folder of shards, split by file name exactly as ``datasets`` (and the Hub) split a repository."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    file = str(path)
    try:
        patterns = get_data_patterns(file)
        found = DataFilesDict.from_patterns(patterns, base_path=file)
    except FileNotFoundError:
        raise InputError("the folder holds no data files (.jsonl, .json, .csv, .parquet)", file=file) from None
    except Exception as e:
        raise InputError(f"cannot list the folder's data files: {_first_line(e)}", file=file) from None
    if split not in found:
        raise InputError(f"no split {split!r} among the folder's files (splits: {', '.join(map(str, found))}); "
                         "choose one with --data-split", file=file, field="data_split")
    shards = [Path(f) for f in found[split] if Path(f).suffix.lower() not in _SKIPPED_IN_FOLDERS]
    bad = [str(f) for f in shards if f.suffix.lower() not in FILE_FORMATS]
    if bad:
        raise InputError(f"unsupported shard type {Path(bad[0]).suffix!r}; shards must be .jsonl, .json, .csv or "
                         ".parquet", file=bad[0])
    if not shards:
        raise InputError("the folder holds no data files (.jsonl, .json, .csv, .parquet)", file=file)
    parts, shas = [], {}
    for f in shards:
        columns, records, sha = read_records_hashed(f)
        parts.append(Part(str(f), columns, records))
        shas[str(f.resolve())] = sha
    return parts, {"file": str(path.resolve()), "format": "shards", "split": split, "files": shas}


def _from_hub(hub_id: str, split: str) -> tuple[list[Part], dict[str, Any]]:
    """``datasets.load_dataset(hub_id, split=split)``: the Hub code path (tested on local folders of the same schema)."""
    label = f"{hub_id} (split {split})"
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # offline, unknown repo, unknown split, bad files: datasets raises many types
        raise InputError(f"cannot load the Hub data set with datasets.load_dataset: {_first_line(e)}",
                         file=label) from None
    if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict)):  # pragma: no cover - not asked for
        raise InputError("a streaming data set cannot be loaded; download it", file=label)
    columns, records = table_records(ds.with_format("arrow")[:], file=label)
    if not records:
        raise InputError("no data rows (the split is empty)", file=label)
    return [Part(label, columns, records)], {"hub_id": hub_id, "split": split,
                                             "fingerprint": getattr(ds, "_fingerprint", None)}


def read_source(cfg: DataConfig) -> tuple[list[Part], dict[str, Any]]:
    """The parts of ``cfg.data_path`` and its provenance: a file, a folder (shards or ``save_to_disk``) or a Hub id."""
    path = _require_path(cfg)
    name = str(cfg.data_path)
    if path.is_dir():
        return _from_disk(path, cfg.data_split) if _is_saved_dataset(path) else _from_folder(path, cfg.data_split)
    if not (path.exists() or path.is_symlink()) and looks_like_hub_id(name):
        return _from_hub(name, cfg.data_split)
    columns, records, sha = read_records_hashed(path)
    return [Part(name, columns, records)], {"file": str(path.resolve()), "sha256": sha}


# --------------------------------------------------------------------------------------------
# TRL's preference formats


def _shared_prefix(a: Sequence[Any], b: Sequence[Any], *, text: bool) -> int:
    """Length of the shared prefix of ``chosen`` and ``rejected``, as TRL's ``extract_prompt`` cuts it
    (for text, a space just before the first difference goes with the completions)."""
    k = 0
    n = min(len(a), len(b))
    while k < n and a[k] == b[k]:
        k += 1
    if text and 0 < k < n and a[k - 1] == " ":
        k -= 1
    return k


def _messages(value: Any, *, file: str, row: int, field: str) -> list[dict[str, str]]:
    """A conversational value: a non-empty list of ``{"role": str, "content": str}``."""
    if not isinstance(value, list) or not value:
        raise InputError(f"expected a list of messages, got {type(value).__name__}", file=file, row=row, field=field)
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"message {k + 1}: expected {{'role': ..., 'content': ...}}, got {type(m).__name__}",
                             file=file, row=row, field=field)
        if not isinstance(m["content"], str):
            raise InputError(f"message {k + 1}: content must be text, got {type(m['content']).__name__}",
                             file=file, row=row, field=field)
    return value


def _last_user_turn(msgs: list[dict[str, str]], *, file: str, row: int, field: str) -> tuple[str, bool]:
    """(the content of the last user turn, whether other turns of the prompt were dropped)."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise InputError(f"the prompt has no user turn (roles {[m['role'] for m in msgs]})", file=file, row=row,
                         field=field)
    text = require_text(msgs[users[-1]]["content"], file=file, row=row, field=field)
    return text, len(msgs) > 1


def _reply(msgs: list[dict[str, str]], *, file: str, row: int, field: str) -> str:
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise InputError(f"expected one assistant message after the prompt, got roles {[m['role'] for m in msgs]}",
                         file=file, row=row, field=field)
    return require_text(msgs[0]["content"], file=file, row=row, field=field)


def _no_prompt(present: Sequence[str], *, file: str, row: int) -> InputError:
    return InputError(
        f"missing column 'prompt' (columns present: {', '.join(map(repr, present)) or 'none'}), and chosen and "
        "rejected share no prefix to take as the prompt (TRL's implicit prompt); map a prompt column with "
        "--columns prompt=COL",
        file=file, row=row, field="prompt",
    )


def pair_texts(rec: Mapping[str, Any], cols: Mapping[str, str | None], *, file: str, row: int,
               counts: Counter[str], present: Sequence[str] = ()) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` texts of one row in any of TRL's preference formats.

    Explicit prompt (a ``prompt`` column) or implicit (none: the prompt is the shared prefix of
    ``chosen`` and ``rejected``); standard (texts) or conversational (message lists). A
    conversation becomes the last user turn of the prompt and the assistant reply; other turns
    (a system message, earlier turns) are dropped and counted (``context_dropped``).
    """
    fc, fr, fp = cols["chosen"], cols["rejected"], cols["prompt"]
    c, r = rec.get(fc), rec.get(fr)
    p = rec.get(fp) if fp is not None else None
    if not (isinstance(c, list) or isinstance(r, list)):  # standard: every value must be text
        if fp is not None:
            return (require_text(p, file=file, row=row, field=fp), require_text(c, file=file, row=row, field=fc),
                    require_text(r, file=file, row=row, field=fr))
        c, r = require_text(c, file=file, row=row, field=fc), require_text(r, file=file, row=row, field=fr)
        counts["implicit_prompt_rows"] += 1
        if c == r:
            return IDENTICAL
        k = _shared_prefix(c, r, text=True)
        if not c[:k].strip():
            raise _no_prompt(present, file=file, row=row)
        return (c[:k], require_text(c[k:], file=file, row=row, field=fc),
                require_text(r[k:], file=file, row=row, field=fr))
    counts["conversational_rows"] += 1
    cm, rm = _messages(c, file=file, row=row, field=fc), _messages(r, file=file, row=row, field=fr)
    if cm == rm:
        return IDENTICAL
    if fp is None:
        k = _shared_prefix(cm, rm, text=False)
        if k == 0:
            raise _no_prompt(present, file=file, row=row)
        counts["implicit_prompt_rows"] += 1
        prompt, dropped = _last_user_turn(cm[:k], file=file, row=row, field=fc)
    else:
        if isinstance(p, list):
            prompt, dropped = _last_user_turn(_messages(p, file=file, row=row, field=fp), file=file, row=row, field=fp)
        else:
            prompt, dropped = require_text(p, file=file, row=row, field=fp), False
        # a prompt column beside whole conversations (HuggingFaceH4/ultrafeedback_binarized): the replies
        # are what follows the conversations' shared prefix
        k = _shared_prefix(cm, rm, text=False) if len(cm) > 1 or len(rm) > 1 else 0
    cm, rm = cm[k:], rm[k:]
    counts["context_dropped"] += int(dropped)
    return prompt, _reply(cm, file=file, row=row, field=fc), _reply(rm, file=file, row=row, field=fr)


IDENTICAL = ("", "", "")
"""What :func:`pair_texts` gives for a row whose chosen and rejected are identical (dropped and counted)."""


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


def _require_path(cfg: DataConfig) -> Path:
    if not cfg.data_path:
        raise ConfigError(f"--data-path is required for --dataset {cfg.dataset}")
    return Path(cfg.data_path)


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


def iter_dataset_rows(ds: Iterable[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based row, record) over a Hub ``datasets.Dataset`` (or any iterable of dicts)."""
    for i, rec in enumerate(ds):
        yield i + 1, rec
