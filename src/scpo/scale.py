"""An Arrow-backed data path for data sets too large for Python lists (PRISM x 10 and beyond).

:func:`scpo.pipeline.prepare` builds Python lists of every prompt and response and a dict keyed
by ``(prompt, response)``; at 700,000 responses that is millions of Python objects. This module
does the same steps on Arrow columns and numpy arrays, with the pair table memory-mapped from an
Arrow IPC file and the features written to a memory-mapped ``.npy`` file:

1. :func:`open_pairs` — the canonical pair table (see :mod:`scpo.load.base`), memory-mapped;
2. :func:`distinct_texts` — every distinct (prompt, response) and each pair's chosen/rejected
   row, by Arrow dictionary encoding and ``numpy.unique`` (no Python loop over pairs);
3. :func:`score_to_memmap` — features of every distinct text, a bounded chunk of texts at a time
   (only that chunk is ever a Python list), length-sorted batches, dynamic padding, inference
   mode (:func:`scpo.score._forward_features`), rows written to a memory-mapped file;
4. :func:`experiment` — split, global head and margins: an :class:`scpo.pipeline.Experiment`
   whose ``features`` is the memory map, ready for :func:`scpo.pipeline.fit_heads` (selection and
   the batched head training).

Head mode only: full and LoRA training read ``Experiment.prompts``/``responses`` lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

__all__ = ["TextIndex", "distinct_texts", "experiment", "open_pairs", "score_to_memmap", "tiny_encoder"]


def open_pairs(path: str | Path) -> pa.Table:
    """The pair table of an Arrow IPC file (``pa.ipc.new_file``), memory-mapped: zero copy."""
    source = pa.memory_map(str(path), "r")
    return pa.ipc.open_file(source).read_all()


def _codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(int codes, dictionary of distinct values) of a string column."""
    enc = pc.dictionary_encode(col)
    if isinstance(enc, pa.ChunkedArray):
        chunks = enc.unify_dictionaries().chunks
        dictionary = chunks[0].dictionary if chunks else pa.array([], pa.string())
        codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks]) if chunks else np.zeros(0)
    else:
        dictionary, codes = enc.dictionary, enc.indices.to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), dictionary


@dataclass
class TextIndex:
    """Every distinct (prompt, response) of a pair table, as codes into two Arrow dictionaries."""

    prompts: pa.Array
    """Distinct prompt strings."""
    responses: pa.Array
    """Distinct response strings (chosen and rejected together)."""
    text_prompt: np.ndarray
    """Prompt code of every distinct text."""
    text_response: np.ndarray
    """Response code of every distinct text."""
    chosen_row: np.ndarray
    """Distinct-text row of every pair's chosen response."""
    rejected_row: np.ndarray

    def __len__(self) -> int:
        return len(self.text_prompt)

    def texts(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """The (prompts, responses) of some text rows, as Python lists (one chunk at a time)."""
        p = self.prompts.take(pa.array(self.text_prompt[rows])).to_pylist()
        r = self.responses.take(pa.array(self.text_response[rows])).to_pylist()
        return p, r

    def digest(self) -> str:
        """Hash of the distinct texts (keys the feature memory map next to the model's feature key)."""
        h = hashlib.sha256()
        for arr in (self.prompts, self.responses):
            for buf in arr.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
        h.update(self.text_prompt.tobytes())
        h.update(self.text_response.tobytes())
        return h.hexdigest()[:16]


def distinct_texts(pairs: pa.Table) -> TextIndex:
    """Distinct (prompt, response) texts of the pairs and each pair's chosen/rejected text row."""
    p_codes, prompts = _codes(pairs.column("prompt"))
    both = pa.chunked_array(pairs.column("chosen").chunks + pairs.column("rejected").chunks)
    r_codes, responses = _codes(both)
    n = pairs.num_rows
    key = np.concatenate([p_codes, p_codes]) * max(len(responses), 1) + r_codes
    uniq, inverse = np.unique(key, return_inverse=True)
    n_resp = max(len(responses), 1)
    return TextIndex(
        prompts=prompts, responses=responses, text_prompt=uniq // n_resp, text_response=uniq % n_resp,
        chosen_row=inverse[:n].astype(np.int64), rejected_row=inverse[n:].astype(np.int64),
    )


def score_to_memmap(
    rm: Any,
    index: TextIndex,
    path: str | Path,
    *,
    batch_size: int = 64,
    chunk: int = 32768,
    progress: bool = False,
) -> tuple[np.memmap, dict[str, Any]]:
    """Features of every distinct text into a memory-mapped ``.npy`` file ``[texts, dim]``.

    Texts are taken ``chunk`` at a time, tokenised with the model's input formatter, sorted by
    length (longest first) and run in batches of ``batch_size`` with dynamic padding under
    ``torch.inference_mode``. A finished file (its ``.done`` marker present) is reused as is.
    """
    from tqdm.auto import tqdm

    from .score import _forward_features

    path = Path(path)
    done = path.with_name(path.name + ".done")
    stats: dict[str, Any] = {"texts": len(index), "computed": 0, "truncated": 0, "forward_passes": 0, "tokens": 0}
    if path.exists() and done.exists():
        return np.load(path, mmap_mode="r"), stats
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(index), rm.feature_dim))
    rm.model.eval()
    device = next(rm.model.parameters()).device
    bar = tqdm(total=len(index), desc="scoring", unit="text", disable=not progress, leave=False)
    for c0 in range(0, len(index), chunk):
        rows = np.arange(c0, min(c0 + chunk, len(index)))
        prompts, responses = index.texts(rows)
        ids, tt, n_trunc = rm.formatter.encode(rm.tokenizer, prompts, responses)
        del prompts, responses
        stats["truncated"] += n_trunc
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        stats["tokens"] += int(lengths.sum())
        order = np.argsort(lengths, kind="stable")[::-1]
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            feats = _forward_features(rm, [ids[i] for i in b], None if tt is None else [tt[i] for i in b], device)
            out[rows[b]] = feats
            stats["forward_passes"] += 1
        stats["computed"] += len(rows)
        bar.update(len(rows))
    bar.close()
    out.flush()
    done.write_text("ok\n")
    return out, stats


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


def _train_global_head(feats: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, cfg: Any, dim: int) -> np.ndarray:
    from .train import HeadJob, train_heads

    gd = torch.from_numpy(np.asarray(feats[chosen]) - np.asarray(feats[rejected]))
    job = HeadJob(train_idx=np.arange(len(gd)), weights=np.ones(len(gd)), init=np.zeros(dim), anchor=np.zeros(dim),
                  lr=cfg.train.global_learning_rate, pull=0.0, stream=12345)
    return train_heads(gd, [job], [cfg.train.global_steps], batch_size=64)[0, -1]


def experiment(cfg: Any, pairs: pa.Table, index: TextIndex, feats: np.ndarray, rm: Any, *, name: str = "arrow"):
    """Split, global head (on held-apart split keys) and margins: a head-mode :class:`~scpo.pipeline.Experiment`.

    Groups and split keys become integer codes (numpy), features stay the memory map; the
    global head trains on the ``global`` split keys of every group, as ``prepare`` does with
    ``global_source=holdout``.
    """
    import datasets
    from datasets.table import InMemoryTable

    from .load import PreferenceData, assign_splits
    from .pipeline import Experiment

    g_codes, g_names = _codes(pairs.column("group"))
    k_codes, _ = _codes(pairs.column("split_key"))
    group = np.asarray(g_names.to_pylist(), dtype=object)[g_codes].astype(str)
    groups = sorted(set(g_names.to_pylist()))
    if cfg.data.groups:
        groups = [g for g in groups if g in set(cfg.data.groups)]
    assignment = assign_splits(np.unique(k_codes).astype(str), seed=cfg.data.split_seed,
                               test_fraction=cfg.data.test_fraction or 0.2, global_fraction=cfg.data.global_fraction)
    labels = np.array(["train", "test", "global"])
    code_of = {"train": 0, "test": 1, "global": 2}
    key_split = np.zeros(int(k_codes.max()) + 1 if len(k_codes) else 0, dtype=np.int64)
    for k, s in assignment.items():
        key_split[int(k)] = code_of[s]
    split = labels[key_split[k_codes]]
    in_groups = np.isin(group, groups)
    glob = np.flatnonzero(split == "global")
    w = _train_global_head(feats, index.chosen_row[glob], index.rejected_row[glob], cfg, rm.feature_dim)
    rm.set_head(torch.from_numpy(w), 0.0)
    keep = np.flatnonzero(in_groups & (split != "global"))
    chosen_row, rejected_row = index.chosen_row[keep], index.rejected_row[keep]
    delta = np.empty(len(keep))
    w64 = w.astype(np.float64)
    for s in range(0, len(keep), 1 << 18):  # bounded temporaries
        c, r = chosen_row[s : s + (1 << 18)], rejected_row[s : s + (1 << 18)]
        delta[s : s + len(c)] = (np.asarray(feats[c], dtype=np.float64) - feats[r]) @ w64
    # a given fingerprint: datasets would otherwise hash the whole table to make one
    ds = datasets.Dataset(InMemoryTable(pairs), fingerprint="arrow-" + index.digest())
    data = PreferenceData(name=name, pairs=ds, default_groups=groups, split_unit="user", synthetic=True)
    return Experiment(
        cfg=cfg, data=data, groups=groups, group=group[keep], split=split[keep], split_key=k_codes[keep],
        chosen_row=chosen_row, rejected_row=rejected_row, contested=None, oracle_margin=None, prompts=[], responses=[],
        features=feats, rm=rm, global_info={"model": rm.name, "source": "holdout", "trained_on_pairs": len(glob)},
        delta=delta,
    )
