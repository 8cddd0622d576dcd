"""Step 3 of the pipeline: score every distinct (prompt, response) once with the global model.

One forward pass per distinct text gives both the reward and the *features* (the score layer's
input), which head mode trains on. The pass runs in eval mode under ``torch.inference_mode()``,
in batches of texts sorted by length with dynamic padding (no padding to a fixed length), and
results are cached on disk keyed by the model's body fingerprint and a hash of each text, so a
second run (another tau or beta, another method) runs no forward pass at all.

Texts come as a :class:`TextIndex`: the distinct (prompt, response) of a pair table as codes into
Arrow arrays of distinct prompts and responses (:func:`distinct_texts`, by dictionary encoding
and ``numpy.unique``); they become Python strings only :data:`TOKENIZE_CHUNK` texts at a time,
and their token ids are kept in flat integer arrays, not a Python list per text.

Cache layout (``cache_dir/features/<feature_key>/``): shards ``shard-<sha256 prefix>.npz`` holding
``keys`` (text hashes) and ``features`` (float32), each with a ``.sha256`` file holding the full
checksum. Shards are written atomically (temporary name, then rename) every ``flush_every``
batches, so an interrupted run keeps what it scored. A shard is never trusted: one whose checksum
file is missing or does not match, that cannot be read, or whose arrays are malformed or not
finite is reported (a warning and ``corrupt_shards``), deleted and its texts are recomputed.

Batches are planned over *every* distinct text of the call (sorted by token length), whatever the
cache holds, and only the texts the cache lacks are computed. A run resumed after an interruption
therefore computes the same batches, with the same padding, as an uninterrupted run would have,
and its features are bit-identical on the same machine.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from torch import nn
from tqdm.auto import tqdm

from .errors import CacheCorruptWarning, ScpoError, TruncationWarning
from .forward import Tokens, forward, plan, resolve_batch_size, tokenize
from .instrument import point
from .load.base import dictionary_codes
from .model import RewardModel
from .parallel import is_main_process, rank_and_world, union_mask
from .rundir import atomic_write_bytes, remove_stale_temporaries

log = logging.getLogger(__name__)

__all__ = ["FeatureCache", "ScoreStats", "TextIndex", "distinct_texts", "encode_features", "text_key"]


TOKENIZE_CHUNK = 16384
"""Texts made Python strings and tokenised at a time by :func:`encode_features`."""


def text_key(prompt: str, response: str) -> str:
    """Hash of one (prompt, response) input."""
    h = hashlib.sha256(prompt.encode("utf-8", "surrogatepass"))
    h.update(b"\x1e")
    h.update(response.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


@dataclass
class TextIndex:
    """Distinct (prompt, response) texts, as codes into Arrow arrays of distinct prompts and responses."""

    prompts: pa.Array
    """Distinct prompt strings."""
    responses: pa.Array
    """Distinct response strings."""
    text_prompt: np.ndarray
    """Prompt code of every text."""
    text_response: np.ndarray
    """Response code of every text."""

    def __len__(self) -> int:
        return len(self.text_prompt)

    def texts(self, rows: np.ndarray) -> tuple[list[str], list[str]]:
        """The (prompts, responses) of some text rows, as Python lists (one chunk at a time)."""
        rows = np.asarray(rows, dtype=np.int64)
        p = self.prompts.take(pa.array(self.text_prompt[rows])).to_pylist()
        r = self.responses.take(pa.array(self.text_response[rows])).to_pylist()
        return p, r

    @classmethod
    def of_lists(cls, prompts: Sequence[str], responses: Sequence[str]) -> tuple[TextIndex, np.ndarray, np.ndarray]:
        """``(index, text row of every input, first input of every text)`` of row-aligned lists."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        p_codes, p_values = dictionary_codes(pa.array(prompts, pa.string()))
        r_codes, r_values = dictionary_codes(pa.array(responses, pa.string()))
        return _number_texts(p_codes, r_codes, p_values, r_values)


def _number_texts(prompt_codes: np.ndarray, response_codes: np.ndarray, prompts: pa.Array,
                  responses: pa.Array) -> tuple[TextIndex, np.ndarray, np.ndarray]:
    """Distinct (prompt code, response code) occurrences, numbered in order of first appearance:
    ``(index, text row of every occurrence, first occurrence of every text)``."""
    n_resp = max(len(responses), 1)
    key = prompt_codes * n_resp + response_codes
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    ordered = uniq[order]
    index = TextIndex(prompts=prompts, responses=responses, text_prompt=ordered // n_resp,
                      text_response=ordered % n_resp)
    return index, rank[inverse.reshape(-1)], first[order]


def distinct_texts(parts: Sequence[tuple[pa.Table, np.ndarray | None]]) -> tuple[TextIndex, list[tuple[np.ndarray, np.ndarray]]]:
    """Every distinct (prompt, response) of some rows of pair tables, and each such row's chosen and
    rejected text row, by Arrow dictionary encoding and ``numpy.unique`` (no Python loop over rows).

    ``parts`` are ``(table, rows)`` (``rows=None``: every row); a table given in several parts is
    encoded once. Texts are numbered in order of first appearance: the first part's chosen texts,
    its rejected texts, then the next part's. Returns ``(index, [(chosen_row, rejected_row)] per part)``.
    """
    tables: list[pa.Table] = []
    for table, _ in parts:
        if not any(table is t for t in tables):
            tables.append(table)
    p_codes, prompts = dictionary_codes(pa.chunked_array(
        [c for t in tables for c in t.column("prompt").chunks], type=tables[0].column("prompt").type))
    r_codes, responses = dictionary_codes(pa.chunked_array(
        [c for t in tables for name in ("chosen", "rejected") for c in t.column(name).chunks],
        type=tables[0].column("chosen").type))
    start = np.cumsum([0] + [t.num_rows for t in tables])  # of each table's prompts; x2 for its responses
    occ_p, occ_r, sizes = [], [], []
    for table, rows in parts:
        k = next(i for i, t in enumerate(tables) if t is table)
        n = table.num_rows
        rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
        p = p_codes[start[k] + rows]
        occ_p += [p, p]
        occ_r += [r_codes[2 * start[k] + rows], r_codes[2 * start[k] + n + rows]]
        sizes.append(len(rows))
    index, text_row, _ = _number_texts(np.concatenate(occ_p), np.concatenate(occ_r), prompts, responses)
    rows_of, s = [], 0
    for m in sizes:
        rows_of.append((text_row[s : s + m], text_row[s + m : s + 2 * m]))
        s += 2 * m
    return index, rows_of




class FeatureCache:
    """On-disk cache of feature vectors keyed by text hash, for one model body + formatter.

    Shards are content-addressed (their name is a prefix of their sha256), so two processes that
    share a cache directory never overwrite each other's shards with different content. In memory
    every shard stays its ``keys`` and ``features`` arrays, looked up through one sorted key array
    (``numpy.searchsorted``); a key in several shards takes the features added last.
    """

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / "features" / key
        self._keys: list[np.ndarray] = []
        self._feats: list[np.ndarray] = []
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        """(distinct keys sorted, each one's position in the concatenated shards), built on demand."""
        self._loaded = False
        self._dim: int | None = None
        self.corrupt_shards: list[str] = []

    def _check(self, shard: Path) -> tuple[np.ndarray, np.ndarray] | str:
        """The shard's (keys, features), or why it cannot be trusted."""
        sig = shard.with_suffix(".sha256")
        if not sig.exists():
            return "its checksum file is missing"
        try:
            data = shard.read_bytes()
            expected = sig.read_text().strip()
        except OSError as e:
            return f"it cannot be read ({e.strerror})"
        if hashlib.sha256(data).hexdigest() != expected:
            return "it fails its sha256 checksum"
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                keys, feats = z["keys"], z["features"]
        except Exception as e:  # noqa: BLE001 - any unreadable shard is corrupt
            return f"it cannot be parsed ({type(e).__name__})"
        if keys.ndim != 1 or keys.dtype.kind != "U" or feats.ndim != 2 or len(keys) != len(feats):
            return "its arrays are malformed"
        if feats.dtype != np.float32 or not np.isfinite(feats).all():
            return "its features are not finite float32"
        if self._dim is not None and feats.shape[1] != self._dim:
            return f"its features have dimension {feats.shape[1]}, not {self._dim}"
        return keys, feats

    def _add(self, keys: np.ndarray, feats: np.ndarray) -> None:
        self._keys.append(keys)
        self._feats.append(feats)
        self._dim = feats.shape[1]
        self._sorted = None

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.dir.exists():
            return
        remove_stale_temporaries(self.dir)
        for shard in sorted(self.dir.glob("shard-*.npz")):
            got = self._check(shard)
            if isinstance(got, str):
                warnings.warn(
                    f"{shard}: corrupt feature-cache shard ({got}): deleted, its texts will be recomputed",
                    CacheCorruptWarning,
                    stacklevel=3,
                )
                self.corrupt_shards.append(str(shard))
                shard.unlink(missing_ok=True)
                shard.with_suffix(".sha256").unlink(missing_ok=True)
                continue
            self._add(*got)
        # checksum files whose shard is gone (a write killed between the two renames)
        for sig in self.dir.glob("shard-*.sha256"):
            if not sig.with_suffix(".npz").exists():
                sig.unlink(missing_ok=True)

    def find(self, keys: Sequence[str]) -> np.ndarray:
        """Where the cache holds each key's features (a position for :meth:`read`), -1 where it does not."""
        self._load()
        query = np.asarray(keys, dtype=str)
        if self._sorted is None:
            held = np.concatenate(self._keys) if self._keys else np.zeros(0, dtype=str)
            uniq, last = np.unique(held[::-1], return_index=True)  # first seen in reverse: added last
            self._sorted = (uniq, len(held) - 1 - last)
        uniq, position = self._sorted
        if not len(uniq):
            return np.full(len(query), -1, dtype=np.int64)
        i = np.minimum(np.searchsorted(uniq, query), len(uniq) - 1)
        return np.where(uniq[i] == query, position[i], -1)

    def read(self, positions: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """``out[rows] =`` the features at ``positions`` (from :meth:`find`, none -1), a shard at a time."""
        start = np.cumsum([0] + [len(k) for k in self._keys])
        shard = np.searchsorted(start, positions, side="right") - 1
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(len(self._keys) + 1))
        for s in range(len(self._keys)):
            sel = order[bounds[s] : bounds[s + 1]]
            if len(sel):
                out[rows[sel]] = self._feats[s][positions[sel] - start[s]]

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The features of those ``keys`` the cache holds."""
        positions = self.find(keys)
        hit = np.flatnonzero(positions >= 0)
        feats = np.empty((len(hit), self._dim or 0), dtype=np.float32)
        self.read(positions[hit], feats, np.arange(len(hit)))
        return {keys[i]: feats[j] for j, i in enumerate(hit)}

    def put(self, keys: list[str], feats: np.ndarray) -> None:
        """Write one shard atomically: its checksum file, then the shard (a shard without a
        matching checksum file is never trusted)."""
        self._load()
        if not keys:
            return
        feats = np.asarray(feats, dtype=np.float32)
        key_array = np.array(keys)
        buf = io.BytesIO()
        np.savez(buf, keys=key_array, features=feats)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        shard = self.dir / f"shard-{digest[:24]}.npz"
        if not shard.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            sig = shard.with_suffix(".sha256")
            atomic_write_bytes(sig, digest.encode())
            try:
                atomic_write_bytes(shard, data)
            except BaseException:  # a full disk: no checksum file without its shard
                sig.unlink(missing_ok=True)
                raise
        self._add(key_array, feats)


class ScoreStats(dict):
    """Counts of one scoring call: texts, distinct, cached, computed, truncated, forward passes."""








def _tokenize(rm: RewardModel, texts: TextIndex) -> tuple[list[str], Tokens, int]:
    """Every text's cache key and tokens (the model's input formatter), :data:`TOKENIZE_CHUNK`
    texts at a time, and the number of truncated texts."""
    keys: list[str] = []
    parts: list[Tokens] = []
    n_trunc = 0
    for c0 in range(0, len(texts), TOKENIZE_CHUNK):
        prompts, responses = texts.texts(np.arange(c0, min(c0 + TOKENIZE_CHUNK, len(texts))))
        keys.extend(map(text_key, prompts, responses))
        tokens, chunk_trunc = tokenize(rm.formatter, rm.tokenizer, prompts, responses)
        parts.append(tokens)
        n_trunc += chunk_trunc
    return keys, Tokens.concat(parts), n_trunc








def encode_features(
    rm: RewardModel,
    prompts: Sequence[str] | None = None,
    responses: Sequence[str] | None = None,
    *,
    texts: TextIndex | None = None,
    out: np.ndarray | None = None,
    batch_size: int = 0,
    cache: FeatureCache | None = None,
    progress: bool = True,
    flush_every: int = 20,
    kill_point: str | None = "scoring",
    describe: Callable[[int], str] | None = None,
    module: nn.Linear | None = None,
) -> tuple[np.ndarray, ScoreStats]:
    """Features (score-layer inputs) of every (prompt, response), row-aligned with the input.

    ``module``: the linear layer whose input the features are (default the score layer; pooler
    mode passes the pooler's dense layer, :meth:`~scpo.model.RewardModel.pooler_layer_of`). The
    cache must be keyed to match (:meth:`~scpo.model.RewardModel.feature_key`).

    The input is row-aligned ``prompts`` and ``responses`` lists, or a :class:`TextIndex` ``texts``
    (the result's rows are then its text rows). ``out`` (float32 ``[rows, dim]``, e.g. a
    ``numpy.lib.format.open_memmap``) receives the features instead of a new array and is returned.
    Distinct inputs are computed once; cached ones are not recomputed. Rewards are
    ``features @ w + b`` with the score layer's (w, b): see :func:`rewards_from_features`.
    Inputs longer than the formatter's ``max_length`` are truncated, counted in
    ``stats["truncated"]`` and reported in one :class:`~scpo.errors.TruncationWarning` naming the
    first of them through ``describe(row)`` (the caller's file/row/field of an input row).

    Under a launcher (``accelerate launch``, ``torchrun``) the planned batches are shared between
    the ranks (:func:`scpo.parallel.map_batches`): each computes every ``world``-th one, every rank
    returns every feature, and rank 0 writes the cache. A collective call: every rank must make it.
    """
    first_input = None
    if texts is None:
        if prompts is None or responses is None:
            raise TypeError("encode_features needs prompts and responses, or texts")
        texts, input_text, first_input = TextIndex.of_lists(prompts, responses)
        n_rows = len(input_text)
    else:
        n_rows = len(texts)
    layer = rm.score_layer if module is None else module
    dim = layer.in_features
    if out is not None and (out.shape != (n_rows, dim) or out.dtype != np.float32):
        raise ValueError(f"out must be float32 of shape {(n_rows, dim)}, not {out.dtype} of shape {out.shape}")

    def where(j: int) -> str:
        """The caller's description of text row ``j`` (of its first input row)."""
        row = j if first_input is None else int(first_input[j])
        return describe(row) if describe is not None else f"input {row + 1}"

    n = len(texts)
    feats = out if out is not None and first_input is None else np.empty((n, dim), dtype=np.float32)
    stats = ScoreStats(texts=n_rows, distinct=n, cached=0, computed=n, truncated=0, forward_passes=0)
    if n:
        # every distinct input is tokenised (cheap), so that truncation is counted whatever the cache
        # holds and the batches are the same as an uncached run's
        keys, tokens, n_trunc = _tokenize(rm, texts)
        todo = np.ones(n, dtype=bool)
        if cache is not None:
            positions = cache.find(keys)
            hit = np.flatnonzero(positions >= 0)
            cache.read(positions[hit], feats, hit)
            todo[hit] = False
        todo = union_mask(todo)  # under a launcher, ranks plan the same work even if their cache views differ
        stats.update(cached=n - int(todo.sum()), computed=int(todo.sum()), truncated=n_trunc)
        if n_trunc:
            _warn_truncation(rm, texts, tokens.lengths, n_trunc, where)
    if stats["computed"]:
        device = next(rm.model.parameters()).device
        # the plan: batches of every distinct text by length, less what the cache holds
        batches = plan(tokens.lengths, resolve_batch_size(batch_size, device), todo)
        main = is_main_process()
        writes = cache is not None and main  # every rank ends with every feature: rank 0 writes the cache
        pending_rows, pending_f = [], []
        bar = tqdm(total=stats["computed"], desc="scoring", unit="text", disable=not progress or not main, leave=False)
        # each batch computed once, by one rank (scpo.parallel.map_batches), seen by every rank
        computed = forward(rm.model, tokens, batches, pad_id=rm.tokenizer.pad_token_id or 0, output="features",
                           module=layer, work="scoring_forward_passes")
        for i, f in computed:
            b = batches[i]
            if not np.isfinite(f).all():
                bad = int(b[np.flatnonzero(~np.isfinite(f).all(1))[0]])
                raise ScpoError(
                    f"{where(bad)}: the global model produced non-finite features (NaN or inf); try --torch-dtype float32"
                )
            feats[b] = f
            bar.update(len(b))
            if not writes:
                continue
            pending_rows.append(b)
            pending_f.append(f)
            if (i + 1) % flush_every == 0:
                cache.put([keys[j] for j in np.concatenate(pending_rows)], np.concatenate(pending_f))
                pending_rows, pending_f = [], []
                if kill_point:
                    point(kill_point)
        bar.close()
        if writes and pending_rows:
            cache.put([keys[j] for j in np.concatenate(pending_rows)], np.concatenate(pending_f))
        stats["forward_passes"] = computed.computed
        stats["processes"] = rank_and_world()[1]
    if first_input is None:
        return feats, stats
    if out is None:
        return feats[input_text], stats
    out[...] = feats[input_text]
    return out, stats


def _untruncated_lengths(rm: RewardModel, prompts: list[str], responses: list[str]) -> list[int]:
    """Token counts of inputs before truncation, as :meth:`InputFormatter.encode` counts them."""
    fmt, tok = rm.formatter, rm.tokenizer
    if fmt.kind == "chat":
        return [len(x) for x in tok(fmt.texts(tok, prompts, responses), add_special_tokens=False)["input_ids"]]
    return [len(x) for x in tok(prompts, responses, truncation=False)["input_ids"]]


def _warn_truncation(rm: RewardModel, texts: TextIndex, lengths: np.ndarray, n_trunc: int,
                     where: Callable[[int], str]) -> None:
    """One warning for every truncated text of a call, naming the first one (``where(row)``) and the longest."""
    max_len = rm.formatter.max_length
    cand = np.flatnonzero(lengths >= max_len)  # truncated inputs are exactly max_length long
    full = _untruncated_lengths(rm, *texts.texts(cand)) if len(cand) else []
    over = [(int(j), n) for j, n in zip(cand, full) if n > max_len]
    detail = ""
    if over:
        detail = f" (first: {where(over[0][0])}, {over[0][1]} tokens; longest: {max(n for _, n in over)} tokens)"
    warnings.warn(
        f"{n_trunc} of {len(lengths)} distinct inputs exceeded max_length={max_len} tokens and were truncated{detail}; "
        "the prompt is cut from its start and the response kept",
        TruncationWarning,
        stacklevel=3,
    )


def rewards_from_features(features: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """Rewards of a linear score layer over features, in float64."""
    return features.astype(np.float64) @ np.asarray(weight, dtype=np.float64) + float(bias)


