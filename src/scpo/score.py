"""Step 3 of the pipeline: score every distinct (prompt, response) once with the global model.

One forward pass per distinct text gives both the reward and the *features* (the score layer's
input), which head mode trains on. The pass runs in eval mode under ``torch.inference_mode()``,
in batches of texts sorted by length with dynamic padding (no padding to a fixed length), and
results are cached on disk keyed by the model's body fingerprint and a hash of each text, so a
second run (another tau or beta, another method) runs no forward pass at all.

Cache layout (``cache_dir/features/<feature_key>/``): shards ``shard-<n>.npz`` holding ``keys``
(text hashes) and ``features`` (float32), each with a ``.sha256`` checksum file. Shards are
written atomically (temporary name, then rename) every few batches, so an interrupted run keeps
what it scored; a shard whose checksum does not match is reported, deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

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
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FeatureCache:
    """On-disk cache of feature vectors keyed by text hash, for one model body + formatter."""

    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / "features" / key
        self._mem: dict[str, np.ndarray] = {}
        self._loaded = False
        self.corrupt_shards: list[str] = []

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.dir.exists():
            return
        for shard in sorted(self.dir.glob("shard-*.npz")):
            sig = shard.with_suffix(".sha256")
            data = shard.read_bytes()
            ok = sig.exists() and sig.read_text().strip() == hashlib.sha256(data).hexdigest()
            if ok:
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        keys, feats = z["keys"], z["features"]
                    ok = len(keys) == len(feats)
                except Exception:  # noqa: BLE001 - any unreadable shard is corrupt
                    ok = False
            if not ok:
                warnings.warn(f"cache shard {shard} failed its checksum: deleted, will recompute", stacklevel=2)
                self.corrupt_shards.append(str(shard))
                shard.unlink(missing_ok=True)
                sig.unlink(missing_ok=True)
                continue
            for k, f in zip(keys.tolist(), feats):
                self._mem[k] = f

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        self._load()
        return {k: self._mem[k] for k in keys if k in self._mem}

    def put(self, keys: list[str], feats: np.ndarray) -> None:
        """Write one shard atomically (data, then its checksum)."""
        self._load()
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.dir.glob("shard-*.npz")))
        while (self.dir / f"shard-{n:05d}.npz").exists():
            n += 1
        shard = self.dir / f"shard-{n:05d}.npz"
        import io

        buf = io.BytesIO()
        np.savez(buf, keys=np.array(keys), features=feats.astype(np.float32))
        data = buf.getvalue()
        _atomic_write_bytes(shard.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
        _atomic_write_bytes(shard, data)
        for k, f in zip(keys, feats):
            self._mem[k] = f


class ScoreStats(dict):
    """Counts of one scoring call: texts, cached, computed, truncated, forward passes."""


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
) -> tuple[np.ndarray, ScoreStats]:
    """Features (score-layer inputs) of every (prompt, response), row-aligned with the input.

    Distinct inputs are computed once; cached ones are not recomputed. Rewards are
    ``features @ w + b`` with the score layer's (w, b): see :func:`rewards_from_features`.
    """
    from .reliability import maybe_kill

    keys = [text_key(p, r) for p, r in zip(prompts, responses)]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    distinct = list(first)
    found = cache.get(distinct) if cache is not None else {}
    todo = [k for k in distinct if k not in found]
    stats = ScoreStats(texts=len(keys), distinct=len(distinct), cached=len(found), computed=len(todo), truncated=0, forward_passes=0)
    computed: dict[str, np.ndarray] = {}
    if todo:
        rm.model.eval()
        device = next(rm.model.parameters()).device
        rows = [first[k] for k in todo]
        ids, tt, n_trunc = rm.formatter.encode(rm.tokenizer, [prompts[i] for i in rows], [responses[i] for i in rows])
        stats["truncated"] = n_trunc
        if n_trunc:
            warnings.warn(
                f"{n_trunc} of {len(rows)} inputs exceeded max_length={rm.formatter.max_length} tokens and were "
                "truncated (the prompt is cut from its start, the response kept)",
                stacklevel=2,
            )
        order = np.argsort([len(x) for x in ids], kind="stable")[::-1]  # longest first: fail fast on memory
        pending_k, pending_f = [], []
        bar = tqdm(total=len(todo), desc="scoring", unit="text", disable=not progress, leave=False)
        n_batches = 0
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            feats = _forward_features(rm, [ids[i] for i in b], None if tt is None else [tt[i] for i in b], device)
            n_batches += 1
            for j, i in enumerate(b):
                computed[todo[i]] = feats[j]
                pending_k.append(todo[i])
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


def rewards_from_features(features: np.ndarray, weight: np.ndarray, bias: float) -> np.ndarray:
    """Rewards of a linear score layer over features, in float64."""
    return features.astype(np.float64) @ np.asarray(weight, dtype=np.float64) + float(bias)


@torch.inference_mode()
def score_texts(rm: RewardModel, prompts: list[str], responses: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Rewards from a full forward pass (no cache): for trained full/LoRA models and serving."""
    feats, _ = encode_features(rm, prompts, responses, batch_size=batch_size, cache=None, progress=progress, kill_point=None)
    w, b = rm.head_params()
    return rewards_from_features(feats, w.numpy(), float(b))
