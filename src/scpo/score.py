"""Step 3 of the pipeline: score every distinct (prompt, response) once with the global model.

One forward pass per distinct text gives both the reward and the *features* (the score layer's
input), which head mode trains on. The pass runs in eval mode under ``torch.inference_mode()``,
in batches of texts sorted by length with dynamic padding (no padding to a fixed length), and
results are cached on disk keyed by the model's body fingerprint and a hash of each text, so a
second run (another tau or beta, another method) runs no forward pass at all.

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
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import CacheCorruptWarning, ScpoError, TruncationWarning
from .model import RewardModel

log = logging.getLogger(__name__)

__all__ = ["FeatureCache", "ScoreStats", "encode_features", "text_key"]

FORWARD_PASSES = {"count": 0}
"""Process-wide count of model forward passes made by :func:`encode_features` (for tests)."""


def text_key(prompt: str, response: str) -> str:
    """Hash of one (prompt, response) input."""
    h = hashlib.sha256(prompt.encode("utf-8", "surrogatepass"))
    h.update(b"\x1e")
    h.update(response.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from .reliability import atomic_write_bytes

    atomic_write_bytes(path, data)


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
            import io

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
        from .reliability import remove_stale_temporaries

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
        import io

        feats = np.asarray(feats, dtype=np.float32)
        key_array = np.array(keys)
        buf = io.BytesIO()
        np.savez(buf, keys=key_array, features=feats)
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        shard = self.dir / f"shard-{digest[:24]}.npz"
        if not shard.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_bytes(shard.with_suffix(".sha256"), digest.encode())
            _atomic_write_bytes(shard, data)
        self._add(key_array, feats)


class ScoreStats(dict):
    """Counts of one scoring call: texts, distinct, cached, computed, truncated, forward passes."""


def _capture_features(rm: RewardModel):
    store: dict[str, torch.Tensor] = {}

    def hook(_module, inputs, _output):
        store["x"] = inputs[0]

    return store, rm.score_layer.register_forward_hook(hook)


@torch.inference_mode()
def _forward_features(rm: RewardModel, batch_ids: list[list[int]], batch_tt: list[list[int]] | None, device: torch.device) -> np.ndarray:
    pad = rm.tokenizer.pad_token_id or 0
    T = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), T), pad, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), T), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if batch_tt is not None:
        tt = torch.zeros_like(ids)
        for i, x in enumerate(batch_tt):
            tt[i, : len(x)] = torch.tensor(x)
        inputs["token_type_ids"] = tt.to(device)
    store, handle = _capture_features(rm)
    try:
        rm.model(**inputs)
    finally:
        handle.remove()
    FORWARD_PASSES["count"] += 1
    x = store["x"]
    if x.dim() == 3:  # decoder reward models score the last non-padding token
        last = mask.sum(1).to(x.device) - 1
        x = x[torch.arange(x.shape[0], device=x.device), last]
    return x.float().cpu().numpy()


def encode_features(
    rm: RewardModel,
    prompts: list[str],
    responses: list[str],
    *,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
    progress: bool = True,
    flush_every: int = 20,
    kill_point: str | None = "scoring",
    describe: Callable[[int], str] | None = None,
) -> tuple[np.ndarray, ScoreStats]:
    """Features (score-layer inputs) of every (prompt, response), row-aligned with the input.

    Distinct inputs are computed once; cached ones are not recomputed. Rewards are
    ``features @ w + b`` with the score layer's (w, b): see :func:`rewards_from_features`.
    Inputs longer than the formatter's ``max_length`` are truncated, counted in
    ``stats["truncated"]`` and reported in one :class:`~scpo.errors.TruncationWarning` naming the
    first of them through ``describe(row)`` (the caller's file/row/field of an input row).
    """
    from .reliability import log_work, maybe_kill

    keys = [text_key(p, r) for p, r in zip(prompts, responses)]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    distinct = list(first)
    found = cache.get(distinct) if cache is not None else {}
    todo = {k for k in distinct if k not in found}
    stats = ScoreStats(texts=len(keys), distinct=len(distinct), cached=len(distinct) - len(todo), computed=len(todo),
                       truncated=0, forward_passes=0)
    computed: dict[str, np.ndarray] = {}
    if distinct:
        # every distinct input is tokenised (cheap), so that truncation is counted whatever the cache
        # holds and the batches are the same as an uncached run's
        rows = [first[k] for k in distinct]
        ids, tt, n_trunc = rm.formatter.encode(rm.tokenizer, [prompts[i] for i in rows], [responses[i] for i in rows])
        stats["truncated"] = n_trunc
        if n_trunc:
            _warn_truncation(rm, prompts, responses, rows, ids, n_trunc, describe)
    if todo:
        rm.model.eval()
        device = next(rm.model.parameters()).device
        order = np.argsort([len(x) for x in ids], kind="stable")[::-1]  # longest first: fail fast on memory
        pending_k, pending_f = [], []
        bar = tqdm(total=len(todo), desc="scoring", unit="text", disable=not progress, leave=False)
        n_batches = 0
        for s in range(0, len(order), batch_size):
            b = [i for i in order[s : s + batch_size] if distinct[i] in todo]
            if not b:  # the whole planned batch is cached
                continue
            feats = _forward_features(rm, [ids[i] for i in b], None if tt is None else [tt[i] for i in b], device)
            if not np.isfinite(feats).all():
                bad = b[int(np.flatnonzero(~np.isfinite(feats).all(1))[0])]
                where = describe(rows[bad]) if describe else f"input {rows[bad] + 1}"
                raise ScpoError(
                    f"{where}: the global model produced non-finite features (NaN or inf); try --torch-dtype float32"
                )
            n_batches += 1
            log_work("scoring_forward_passes", texts=len(b))
            for j, i in enumerate(b):
                computed[distinct[i]] = feats[j]
                pending_k.append(distinct[i])
                pending_f.append(feats[j])
            bar.update(len(b))
            if cache is not None and n_batches % flush_every == 0:
                cache.put(pending_k, np.stack(pending_f))
                pending_k, pending_f = [], []
                if kill_point:
                    maybe_kill(kill_point)
        bar.close()
        if cache is not None and pending_k:
            cache.put(pending_k, np.stack(pending_f))
        stats["forward_passes"] = n_batches
    dim = rm.feature_dim
    out = np.empty((len(keys), dim), dtype=np.float32)
    for i, k in enumerate(keys):
        out[i] = found[k] if k in found else computed[k]
    return out, stats


def _untruncated_lengths(rm: RewardModel, prompts: list[str], responses: list[str]) -> list[int]:
    """Token counts of inputs before truncation, as :meth:`InputFormatter.encode` counts them."""
    fmt, tok = rm.formatter, rm.tokenizer
    if fmt.kind == "chat":
        return [len(x) for x in tok(fmt.texts(tok, prompts, responses), add_special_tokens=False)["input_ids"]]
    return [len(x) for x in tok(prompts, responses, truncation=False)["input_ids"]]


def _warn_truncation(rm: RewardModel, prompts: list[str], responses: list[str], rows: list[int],
                     ids: list[list[int]], n_trunc: int, describe: Callable[[int], str] | None) -> None:
    """One warning for every truncated input of a call, naming the first one and the longest."""
    max_len = rm.formatter.max_length
    cand = [j for j, x in enumerate(ids) if len(x) >= max_len]  # truncated inputs are exactly max_length long
    lengths = _untruncated_lengths(rm, [prompts[rows[j]] for j in cand], [responses[rows[j]] for j in cand]) if cand else []
    over = [(j, n) for j, n in zip(cand, lengths) if n > max_len]
    detail = ""
    if over:
        first_row = rows[over[0][0]]
        where = describe(first_row) if describe is not None else f"input {first_row + 1}"
        detail = f" (first: {where}, {over[0][1]} tokens; longest: {max(n for _, n in over)} tokens)"
    warnings.warn(
        f"{n_trunc} of {len(rows)} distinct inputs exceeded max_length={max_len} tokens and were truncated{detail}; "
        "the prompt is cut from its start and the response kept",
        TruncationWarning,
        stacklevel=3,
    )


def rewards_from_features(features: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """Rewards of a linear score layer over features, in float64."""
    return features.astype(np.float64) @ np.asarray(weight, dtype=np.float64) + float(bias)


@torch.inference_mode()
def score_texts(rm: RewardModel, prompts: list[str], responses: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Rewards from a full forward pass (no cache): for trained full/LoRA models and serving."""
    feats, _ = encode_features(rm, prompts, responses, batch_size=batch_size, cache=None, progress=progress, kill_point=None)
    w, b = rm.head_params()
    return rewards_from_features(feats, w.numpy(), float(b))
