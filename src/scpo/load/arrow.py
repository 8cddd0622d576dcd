"""Pair tables too large to hold twice: a memory-mapped Arrow IPC file as a data set.

:func:`scpo.experiment.prepare` itself scales (pairs read as Arrow columns, distinct texts by
dictionary encoding, texts made strings a chunk at a time, features optionally memory-mapped), so a
pair table larger than memory runs through it unchanged::

    data = PreferenceData(name="mine", pairs=open_pairs("pairs.arrow"), default_groups=groups)
    exp = prepare(cfg, data=data, features_file="features.npy")
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

__all__ = ["open_pairs"]


def open_pairs(path: str | Path) -> datasets.Dataset:
    """The pair table of an Arrow IPC file (``pa.ipc.new_file``), memory-mapped (zero copy), as a data set."""
    path = Path(path)
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    st = path.stat()
    # a given fingerprint (the file's identity): datasets would otherwise hash the whole table to make one
    fingerprint = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint)
