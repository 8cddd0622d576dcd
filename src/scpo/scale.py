"""Helpers for data sets too large to hold twice: a memory-mapped pair table and a tiny encoder.

:func:`scpo.pipeline.prepare` itself scales (pairs read as Arrow columns, distinct texts by
dictionary encoding, texts made strings a chunk at a time, features optionally memory-mapped), so a
pair table larger than memory runs through it unchanged::

    data = PreferenceData(name="mine", pairs=open_pairs("pairs.arrow"), default_groups=groups)
    exp = prepare(cfg, data=data, features_file="features.npy")

:func:`open_pairs` memory-maps the canonical pair table (see :mod:`scpo.load.base`) of an Arrow IPC
file; :func:`tiny_encoder` is a randomly initialised small BERT for benchmarks of the data path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import pyarrow as pa
import torch

__all__ = ["open_pairs", "tiny_encoder"]


def open_pairs(path: str | Path) -> datasets.Dataset:
    """The pair table of an Arrow IPC file (``pa.ipc.new_file``), memory-mapped (zero copy), as a data set."""
    from datasets.table import InMemoryTable

    path = Path(path)
    table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    st = path.stat()
    # a given fingerprint (the file's identity): datasets would otherwise hash the whole table to make one
    fingerprint = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return datasets.Dataset(InMemoryTable(table), fingerprint=fingerprint)


def tiny_encoder(hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0, max_length: int = 256):
    """A randomly initialised BERT of the packaged encoder's architecture, much smaller, with its tokenizer.

    For benchmarks of the data and memory path only (its rewards mean nothing).
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from .model import InputFormatter, RewardModel, packaged_model_path

    src = packaged_model_path()
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg)
    model.config.problem_type = "regression"
    tok.padding_side = "right"
    rm = RewardModel(model, tok, InputFormatter.for_tokenizer(tok, "text-pair", max_length), f"tiny-bert-{hidden}x{layers}",
                     f"tiny-bert-{hidden}x{layers}-seed{seed}")
    rm.set_head(torch.zeros(rm.feature_dim), 0.0)
    return rm
