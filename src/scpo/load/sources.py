"""Where the user's data comes from (``--data-path``): a file, a folder of shards, a ``save_to_disk``
folder or a Hub id, each as :class:`Part` records for the loaders of :mod:`.files`.

Local files and shards are read by scpo's strict readers (:mod:`.readers`), so errors name the
shard and its row; ``save_to_disk`` folders through ``datasets.load_from_disk``; a Hub id through
``datasets.load_dataset(hub_id, split=--data-split)`` (tested on local folders of the same schema).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets.data_files import DataFilesDict, get_data_patterns

from ..config import DataConfig
from ..errors import ConfigError, InputError
from ..provenance import portable_path
from .base import file_sha256
from .readers import FILE_FORMATS, read_records_hashed, table_records

__all__ = ["Part", "looks_like_hub_id", "read_source"]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(name: str) -> bool:
    """True for ``owner/name`` that is not an existing local path nor a file name with a data suffix."""
    if Path(name).exists():
        return False
    if Path(name).suffix.lower() in (*FILE_FORMATS, ".tsv"):
        return False
    return bool(_HUB_ID.match(name))


@dataclass
class Part:
    """The records of one source file (or one ``datasets`` table): rows are 1-based within it."""

    file: str
    columns: list[str]
    records: list[tuple[int, dict[str, Any]]]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _inside(file: str | Path, folder: Path) -> str:
    """A file of ``folder`` named relative to it (else :func:`~scpo.provenance.portable_path`): no machine paths."""
    f = Path(file)
    try:
        return f.resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return portable_path(f)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _from_disk(path: Path, split: str) -> tuple[list[Part], dict[str, Any]]:
    file = str(path)
    try:
        ds = datasets.load_from_disk(file)
    except Exception as e:  # datasets raises several types for a damaged folder
        raise InputError(f"cannot load the save_to_disk folder: {_first_line(e)}", file=file) from None
    prov: dict[str, Any] = {"file": portable_path(path), "format": "save_to_disk"}
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"no split {split!r} (splits: {', '.join(ds)}); choose one with --data-split",
                             file=file, field="data_split")
        ds, prov["split"] = ds[split], split
    prov["files"] = {_inside(c["filename"], path): file_sha256(c["filename"]) for c in ds.cache_files}
    columns, records = table_records(ds.with_format("arrow")[:], file=file)
    if not records:
        raise InputError("no data rows (the data set is empty)", file=file)
    return [Part(file, columns, records)], prov


_SKIPPED_IN_FOLDERS = {".md", ".txt", ".yaml", ".yml", ".lock", ".gitattributes"}


def _from_folder(path: Path, split: str) -> tuple[list[Part], dict[str, Any]]:
    """A folder of shards, split by file name exactly as ``datasets`` (and the Hub) split a repository."""
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
        shas[_inside(f, path)] = sha
    return parts, {"file": portable_path(path), "format": "shards", "split": split, "files": shas}


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
    return [Part(name, columns, records)], {"file": portable_path(path), "sha256": sha}


def _require_path(cfg: DataConfig) -> Path:
    if not cfg.data_path:
        raise ConfigError(f"--data-path is required for --dataset {cfg.dataset}")
    return Path(cfg.data_path)
