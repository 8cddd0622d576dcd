"""Steerable reward models in use: load an artifact, score by group and strength, rank candidates.

The artifact's format (layout, manifest, calibration) is :mod:`scpo.artifact`; exporting checkpoints
and model cards is :mod:`scpo.export`; the command line is :mod:`scpo.cli`.

**Steering.** ``score(..., group=g, strength=α) = (1 − α) z_global + α z_g`` with ``z`` the
calibrated rewards (:mod:`scpo.artifact`); a mixture ``group={"a": 0.7, "b": 0.3}`` replaces ``z_g``
by ``Σ w_h z_h`` (weights normalised to sum 1); ``group=None`` is the global model. ``compare`` is
the Bradley–Terry probability ``sigmoid(r(a) − r(b))`` of the steered reward.

The models of each mode are held by :mod:`scpo.backends` (one encoder for every group in ``head``
mode, one base with every adapter for ``lora``, a checkpoint per group for ``full``).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .artifact import (
    DEFAULT_METHOD,
    EXPORT_SPEC,
    GLOBAL,
    Calibration,
    calibration_valid,
    compute_calibration,
    export_manifest,
    models_fingerprint,
    read_json,
    read_reference,
    resolve_artifact,
    run_info,
    run_root,
)
from .backends import BACKENDS, Backend, ExportBackend, HeadBackend
from .errors import InputError, ScpoError
from .load.files import read_records
from .model import InputFormatter
from .parallel import resolve_device

log = logging.getLogger("scpo")

__all__ = [
    "GroupSpec",
    "ScoreRequest",
    "SteerableRewardModel",
    "bt_probability",
    "describe_steering",
    "parse_group",
    "rerank_file",
    "score_file",
]


GroupSpec = None | str | Mapping[str, float]
"""``None`` (global model), a group name, or a mixture ``{group: weight}``."""


def bt_probability(margin: np.ndarray | float) -> np.ndarray:
    """Bradley–Terry probability ``sigmoid(margin)`` that the first response is preferred (overflow-free)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(margin, dtype=np.float64)))














@dataclass
class ScoreRequest:
    """One scoring job: texts and the steering (group or mixture, strength α)."""

    prompts: list[str]
    responses: list[str]
    group: GroupSpec = None
    strength: float = 1.0
    coefficients: dict[str, float] = field(default_factory=dict)
    """Filled by :meth:`SteerableRewardModel.coefficients` (model id -> weight)."""


class SteerableRewardModel:
    """A global reward model and its group models, scored on one common scale and steerable.

    Build with :meth:`from_pretrained`. Scoring runs in eval mode under ``torch.inference_mode()``
    in length-sorted batches; it is thread-safe (one scoring at a time).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], backend: Backend, method: str,
                 calibration: dict[str, Calibration], calibration_info: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self._backend = backend
        self.method = method
        self.calibration = calibration
        self.calibration_info = calibration_info
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, method: str | None = None, device: str | None = None,
                        batch_size: int = 64, scale: bool | None = None, recalibrate: bool = False) -> SteerableRewardModel:
        """Load an artifact: a run directory, its ``models/`` directory or an exported artifact.

        ``method`` picks which trained model stands for each group (head mode holds every method;
        default ``scpo``). ``device``: ``auto`` (CUDA when present) or a torch device. The
        calibration stored in the manifest is used when it matches ``reference.jsonl``; else (or
        with ``recalibrate``) it is computed on the reference texts (``scale=False``: centring only).
        A single checkpoint of ``scpo export --group`` loads as a one-group model (:meth:`_from_export`).
        """
        if not (Path(path) / "manifest.json").is_file() and (Path(path) / EXPORT_SPEC).is_file():
            return cls._from_export(Path(path), device=device, batch_size=batch_size)
        models_dir = resolve_artifact(path)
        manifest = read_json(models_dir / "manifest.json")
        mode = manifest.get("mode")
        if mode not in ("head", "lora", "full"):
            raise ScpoError(f"{models_dir}/manifest.json: unknown mode {mode!r}")
        if batch_size < 1:
            raise ScpoError(f"batch_size must be >= 1, got {batch_size}")
        if not (models_dir / "global").is_dir():
            raise ScpoError(f"{models_dir}: no global/ model")
        root = run_root(path, models_dir)
        if root is not None and "accuracy" not in manifest:
            manifest = {**run_info(root), **manifest}
        dev = resolve_device(device)
        groups = list(manifest.get("groups", []))
        if mode == "head":
            backend: Backend = HeadBackend(models_dir, manifest, dev, batch_size)
            trained = [k.rsplit("/", 1)[1] for k in backend.model_ids() if "/" in k]
            methods = list(dict.fromkeys(trained))
            if method is None:
                method = DEFAULT_METHOD if DEFAULT_METHOD in methods else (methods[-1] if methods else DEFAULT_METHOD)
            missing = [g for g in groups if f"{g}/{method}" not in backend.model_ids()]
            if missing:
                raise ScpoError(f"{models_dir}: no {method!r} head for group(s) {missing}; heads: {backend.model_ids()[1:]}")
        else:
            method = method or manifest.get("group_method", DEFAULT_METHOD)
            backend = BACKENDS[mode](models_dir, manifest, dev, batch_size, method)
        stored = manifest.get("calibration") or {}
        prompts, responses, ref_sha = read_reference(models_dir)
        use_scale = bool(stored.get("scaled", True)) if scale is None else scale
        ids = backend.model_ids() if mode == "head" else [GLOBAL] + [f"{g}/{method}" for g in groups]
        srm = cls(models_dir, manifest, backend, method, {}, {})
        if not recalibrate and ref_sha is not None and calibration_valid(stored, ref_sha, models_dir, ids, use_scale):
            srm.calibration = {m: Calibration(**v) for m, v in stored["models"].items()}
            srm.calibration_info = {k: v for k, v in stored.items() if k != "models"}
        elif ref_sha is None or not prompts:
            warnings.warn(f"{models_dir}: no reference texts (reference.jsonl), so no calibration: rewards are raw and strengths and "
                          "mixtures blend models on unrelated scales", stacklevel=2)
            srm.calibration = {m: Calibration(0.0, 1.0, 1.0) for m in ids}
            srm.calibration_info = {"method": "none"}
        else:
            if not recalibrate:
                log.info("%s: computing the calibration on reference.jsonl (%d texts); `scpo export` stores it",
                         models_dir, len(prompts))
            srm.calibrate(prompts, responses, scale=use_scale, model_ids=ids)
            srm.calibration_info["reference_sha256"] = ref_sha
            srm.calibration_info["models_fingerprint"] = models_fingerprint(models_dir)
        return srm

    @classmethod
    def _from_export(cls, path: Path, *, device: str | None, batch_size: int) -> SteerableRewardModel:
        """A single checkpoint of :func:`scpo.export.export_checkpoint` as a one-group model (its calibration baked in).

        ``group=None`` and the exported group (a group name only; mixtures and the global model
        export no group) both give the exported reward, the API's at export time: the checkpoint's
        output plus ``reward_offset``. Other strengths, groups and mixtures are refused: the other
        models are not in the checkpoint.
        """
        if batch_size < 1:
            raise ScpoError(f"batch_size must be >= 1, got {batch_size}")
        spec = read_json(path / EXPORT_SPEC)
        manifest = export_manifest(path, spec)
        offset = spec.get("reward_offset") or 0.0
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ScpoError(f"{path / EXPORT_SPEC}: reward_offset must be a finite number, got {offset!r}")
        backend = ExportBackend(path, manifest, resolve_device(device), batch_size)
        method = manifest["group_method"]
        cal = Calibration(mean=-float(offset), std=1.0, scale=1.0)  # the checkpoint's output + offset
        calibration = {GLOBAL: cal, **{f"{g}/{method}": cal for g in manifest["groups"]}}
        info = spec.get("calibration_info") if isinstance(spec.get("calibration_info"), dict) else {}
        return cls(path, manifest, backend, method, calibration, {**info, "baked_into_checkpoint": True})

    def calibrate(self, prompts: list[str], responses: list[str], *, scale: bool = True,
                  model_ids: Sequence[str] | None = None) -> dict[str, Calibration]:
        """Compute (and adopt) the calibration of ``model_ids`` (default: every group's) on these texts."""
        if not prompts:
            raise ScpoError("calibration needs at least one reference text")
        ids = list(model_ids) if model_ids is not None else self._steerable_ids()
        if GLOBAL not in ids:
            ids = [GLOBAL] + ids
        with self._lock:
            rows = np.arange(len(prompts))
            raw = self._backend.raw(list(prompts), list(responses), {m: rows for m in ids})
        cal, common = compute_calibration(raw, scale=scale)
        self.calibration = cal
        self.calibration_info = {"method": "center-scale" if scale else "center", "scaled": scale,
                                 "reference": "reference.jsonl", "n": len(prompts), "common_std": common}
        return cal

    def _steerable_ids(self) -> list[str]:
        return [GLOBAL] + [self.model_id(g) for g in self.groups]

    # -- description -----------------------------------------------------------------------
    @property
    def groups(self) -> list[str]:
        """The groups, in the manifest's order."""
        return list(self.manifest.get("groups", []))

    @property
    def mode(self) -> str:
        """``head``, ``lora`` or ``full``: how the group models are stored."""
        return self._backend.mode

    @property
    def formatter(self) -> InputFormatter:
        """The input formatter (the pipeline's, from the manifest)."""
        return self._backend.formatter

    @property
    def device(self) -> torch.device:
        """Where the models run."""
        return self._backend.device

    @property
    def tokenizer(self) -> Any:
        """The global model's tokenizer (every model's input is formatted with it)."""
        return self._backend.tokenizer

    @property
    def forward_passes(self) -> int:
        """Model forward passes made so far (one per batch of texts per model)."""
        return self._backend.forward_passes

    @property
    def score_layer_name(self) -> str | None:
        """Name of the score layer in the models' module tree."""
        return self._backend.score_layer_name

    def head(self, model_id: str) -> tuple[np.ndarray, float]:
        """Head mode: the (weight, bias) of a model's score layer (``global`` or ``<group>/<method>``)."""
        if not isinstance(self._backend, HeadBackend):
            raise ScpoError(f"{self.mode} mode has no separate score layers")
        return self._backend.head(model_id)

    def pooler(self, model_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``--head-layers pooler`` artifacts: the (weight, bias) of a model's pooler dense layer; None otherwise.

        Such models differ below the score layer, so a strength between 0 and 1 or a mixture blends
        their calibrated *rewards* (as every mode does here); it is no longer one score layer.
        """
        if not isinstance(self._backend, HeadBackend):
            return None
        return self._backend.pooler_of(model_id)

    @property
    def truncated(self) -> int:
        """Inputs truncated to the formatter's ``max_length`` so far."""
        return self._backend.truncated

    def model_id(self, group: str) -> str:
        """Internal id of a group's model (``<group>/<method>``)."""
        return f"{group}/{self.method}"

    def module(self, group: str | None = None) -> nn.Module:
        """The torch module that scores ``group`` (``None``: the global model)."""
        return self._backend.module_for(GLOBAL if group is None else self.model_id(self._check_group(group)))

    def modules(self) -> list[nn.Module]:
        """Every torch module this model holds in memory."""
        return self._backend.modules()

    def _check_group(self, group: Any) -> str:
        if not isinstance(group, str):
            raise InputError(f"group must be a string, got {type(group).__name__}", field="group")
        if group not in self.groups:
            close = difflib.get_close_matches(group, self.groups, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise InputError(f"unknown group {group!r}{hint}; groups: {', '.join(self.groups)}", field="group")
        return group

    def coefficients(self, group: GroupSpec = None, strength: float = 1.0) -> dict[str, float]:
        """Model id -> weight of the calibrated rewards that make up the steered reward.

        Raises :class:`~scpo.errors.InputError` for unknown groups, bad mixture weights and
        strengths outside [0, 1].
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)):
            raise InputError(f"strength must be a number in [0, 1], got {strength!r}", field="strength")
        a = float(strength)
        if not (math.isfinite(a) and 0.0 <= a <= 1.0):
            raise InputError(f"strength must be in [0, 1], got {strength!r}", field="strength")
        if group is None:
            return {GLOBAL: 1.0}
        if self.mode == "export":  # one network: the exported reward, nothing to blend it with
            return self._export_coefficients(group, a)
        if isinstance(group, str):
            mix = {self._check_group(group): 1.0}
        elif isinstance(group, Mapping):
            if not group:
                raise InputError("a mixture needs at least one group", field="group")
            mix = {}
            for g, w in group.items():
                self._check_group(g)
                if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not (
                    math.isfinite(float(w)) and float(w) >= 0
                ):
                    raise InputError(f"mixture weight of {g!r} must be a finite number >= 0, got {w!r}", field="group")
                mix[g] = float(w)
            total = sum(mix.values())
            if total <= 0:
                raise InputError("mixture weights must not all be 0", field="group")
            mix = {g: w / total for g, w in mix.items() if w > 0}
        else:
            raise InputError(f"group must be None, a group name or a mapping of group to weight, got {type(group).__name__}",
                             field="group")
        coef: dict[str, float] = {}
        if a < 1.0:
            coef[GLOBAL] = 1.0 - a
        if a > 0.0:
            for g, w in mix.items():
                coef[self.model_id(g)] = coef.get(self.model_id(g), 0.0) + a * w
        return coef

    def _export_coefficients(self, group: GroupSpec, strength: float) -> dict[str, float]:
        spec = self.manifest.get("export") or {}
        what = f"a single exported checkpoint ({describe_steering(spec.get('group'), float(spec.get('strength', 1.0)))})"
        names = list(group) if isinstance(group, Mapping) else [group]
        for g in names:
            self._check_group(g)
        if isinstance(group, Mapping):
            if len(names) != 1:
                raise InputError(f"{what} cannot blend groups", field="group")
            w = next(iter(group.values()))
            if isinstance(w, bool) or not isinstance(w, (int, float, np.floating, np.integer)) or not (
                math.isfinite(float(w)) and float(w) > 0
            ):
                raise InputError(f"mixture weight of {names[0]!r} must be a finite number > 0, got {w!r}", field="group")
        if strength != 1.0:
            raise InputError(f"{what} holds one reward; its strength is fixed (give 1, got {strength:g})", field="strength")
        return {GLOBAL: 1.0}

    # -- scoring ---------------------------------------------------------------------------
    def score_requests(self, requests: Sequence[ScoreRequest]) -> list[np.ndarray]:
        """Score many requests together: every distinct text once per model it needs.

        In head mode that is one forward pass per batch of distinct texts whatever the groups; in
        lora/full mode one per batch per model needed. Requests are validated before any pass.
        """
        for r in requests:
            if len(r.prompts) != len(r.responses):
                raise InputError(f"{len(r.prompts)} prompts but {len(r.responses)} responses")
            for t in (*r.prompts, *r.responses):
                if not isinstance(t, str):
                    raise InputError(f"texts must be strings, got {type(t).__name__}")
            r.coefficients = self.coefficients(r.group, r.strength)
        index: dict[tuple[str, str], int] = {}
        prompts: list[str] = []
        responses: list[str] = []
        rows_of: list[np.ndarray] = []
        need: dict[str, set[int]] = {}
        for r in requests:
            rows = np.empty(len(r.prompts), dtype=np.int64)
            for j, key in enumerate(zip(r.prompts, r.responses)):
                k = index.get(key)
                if k is None:
                    k = index[key] = len(prompts)
                    prompts.append(key[0])
                    responses.append(key[1])
                rows[j] = k
            rows_of.append(rows)
            for m in r.coefficients:
                need.setdefault(m, set()).update(rows.tolist())
        with self._lock:
            raw = self._backend.raw(prompts, responses, {m: np.array(sorted(v), dtype=np.int64) for m, v in need.items()})
        cal = {m: self.calibration[m].apply(raw[m]) for m in raw}
        out = []
        for r, rows in zip(requests, rows_of):
            total = np.zeros(len(rows), dtype=np.float64)
            for m, c in r.coefficients.items():
                total += c * cal[m][rows]
            out.append(total)
        return out

    def score(self, prompts: str | Sequence[str], responses: str | Sequence[str], group: GroupSpec = None,
              strength: float = 1.0) -> np.ndarray:
        """Steered rewards of (prompt, response) pairs, float64 ``[n]`` on the common scale.

        ``prompts`` may be one string shared by every response. ``group``: ``None`` (global),
        a group name, or a mixture ``{group: weight}``; ``strength`` α in [0, 1] blends from the
        global model (0) to the group's (1).
        """
        if isinstance(responses, str):
            responses = [responses]
        responses = list(responses)
        prompts = [prompts] * len(responses) if isinstance(prompts, str) else list(prompts)
        return self.score_requests([ScoreRequest(prompts, responses, group, strength)])[0]

    def raw_rewards(self, prompts: Sequence[str], responses: Sequence[str], group: str | None = None) -> np.ndarray:
        """Uncalibrated rewards of one model (``None``: the global model), as the model outputs them."""
        mid = GLOBAL if group is None else self.model_id(self._check_group(group))
        with self._lock:
            return self._backend.raw(list(prompts), list(responses), {mid: np.arange(len(prompts))})[mid]

    def compare(self, prompt: str | Sequence[str], a: str | Sequence[str], b: str | Sequence[str],
                group: GroupSpec = None, strength: float = 1.0) -> float | np.ndarray:
        """Bradley–Terry probability that ``a`` is preferred to ``b``: ``sigmoid(r(a) - r(b))``.

        A float for one pair (strings), an array for lists of pairs.
        """
        single = isinstance(a, str) and isinstance(b, str)
        a_l = [a] if isinstance(a, str) else list(a)
        b_l = [b] if isinstance(b, str) else list(b)
        if len(a_l) != len(b_l):
            raise InputError(f"{len(a_l)} responses a but {len(b_l)} responses b")
        p_l = [prompt] * len(a_l) if isinstance(prompt, str) else list(prompt)
        r = self.score(p_l + p_l, a_l + b_l, group=group, strength=strength)
        p = bt_probability(r[: len(a_l)] - r[len(a_l) :])
        return float(p[0]) if single else p


def describe_steering(group: GroupSpec, strength: float) -> str:
    """In words: the global model, a group at a strength, or a mixture."""
    if group is None:
        return "the global model"
    if isinstance(group, str):
        return f"group `{group}` at strength α = {strength:g}"
    return "mixture " + ", ".join(f"`{g}` × {w:g}" for g, w in group.items()) + f" at strength α = {strength:g}"


def parse_group(text: str | None, groups: Sequence[str]) -> GroupSpec:
    """``None``/``global`` -> None, a group name, or ``a=0.7,b=0.3`` -> a mixture."""
    if text is None or (text == GLOBAL and GLOBAL not in groups):
        return None
    if text in groups or "=" not in text:
        return text
    mix: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        g, sep, w = part.rpartition("=")
        if not sep or not g.strip():
            raise InputError(f"--group: expected GROUP or GROUP=WEIGHT,GROUP=WEIGHT, got {text!r}", field="group")
        try:
            mix[g.strip()] = float(w)
        except ValueError:
            raise InputError(f"--group: weight of {g.strip()!r} is not a number: {w!r}", field="group") from None
    return mix


def _text(rec: dict[str, Any], col: str, file: str, row: int) -> str:
    v = rec.get(col)
    if not isinstance(v, str):
        raise InputError("missing value" if v is None else f"expected text, got {type(v).__name__}",
                         file=file, row=row, field=col)
    return v


PAIR_COLUMNS = (("chosen", "rejected", "p_chosen"), ("response_a", "response_b", "p_a"), ("a", "b", "p_a"))
"""Pair-file columns ``scpo score`` recognises: (first, second, output field of P(first preferred))."""


def score_file(srm: SteerableRewardModel, path: str | Path, group: GroupSpec = None, strength: float = 1.0) -> list[dict[str, Any]]:
    """Score a file: rows with ``prompt, response`` get ``reward``; pair rows get both rewards and P(first)."""
    file = str(path)
    columns, records = read_records(path)
    if "prompt" not in columns:
        raise InputError(f"missing column 'prompt'; columns present: {', '.join(map(repr, columns)) or 'none'}", file=file)
    srm.coefficients(group, strength)  # fail on a bad group before reading texts
    if "response" in columns:
        prompts = [_text(r, "prompt", file, i) for i, r in records]
        responses = [_text(r, "response", file, i) for i, r in records]
        rewards = srm.score(prompts, responses, group=group, strength=strength)
        return [{**r, "reward": float(x)} for (_, r), x in zip(records, rewards)]
    for first, second, name in PAIR_COLUMNS:
        if first in columns and second in columns:
            prompts = [_text(r, "prompt", file, i) for i, r in records]
            a = [_text(r, first, file, i) for i, r in records]
            b = [_text(r, second, file, i) for i, r in records]
            rw = srm.score(prompts + prompts, a + b, group=group, strength=strength)
            ra, rb = rw[: len(a)], rw[len(a) :]
            p = bt_probability(ra - rb)
            return [{**r, f"reward_{first}": float(x), f"reward_{second}": float(y), name: float(q)}
                    for (_, r), x, y, q in zip(records, ra, rb, p)]
    raise InputError("expected a column 'response' (rewards) or a pair of columns chosen/rejected, response_a/response_b "
                     f"or a/b (preference probabilities); columns present: {', '.join(map(repr, columns))}", file=file)


def rerank_file(srm: SteerableRewardModel, path: str | Path, group: GroupSpec = None, strength: float = 1.0,
                top_k: int | None = None) -> list[dict[str, Any]]:
    """Best-of-n: per prompt, the candidates ordered by steered reward (best first)."""
    file = str(path)
    columns, records = read_records(path)
    srm.coefficients(group, strength)
    cands: dict[str, list[str]] = {}
    if "responses" in columns:
        for i, r in records:
            p = _text(r, "prompt", file, i)
            rs = r.get("responses")
            if isinstance(rs, str):
                try:
                    rs = json.loads(rs)
                except json.JSONDecodeError:
                    rs = None
            if not isinstance(rs, list) or not rs or not all(isinstance(x, str) for x in rs):
                raise InputError("expected a non-empty list of texts", file=file, row=i, field="responses")
            cands.setdefault(p, []).extend(rs)
    elif "response" in columns and "prompt" in columns:
        for i, r in records:
            cands.setdefault(_text(r, "prompt", file, i), []).append(_text(r, "response", file, i))
    else:
        raise InputError("expected columns prompt and responses (a list) or prompt and response (one candidate a row); "
                         f"columns present: {', '.join(map(repr, columns))}", file=file)
    reqs = [ScoreRequest([p] * len(rs), rs, group, strength) for p, rs in cands.items()]
    scores = srm.score_requests(reqs) if reqs else []
    out = []
    for (p, rs), sc in zip(cands.items(), scores):
        order = sorted(range(len(rs)), key=lambda j: (-sc[j], j))
        ranked = [{"rank": k + 1, "response": rs[j], "reward": float(sc[j]), "index": j} for k, j in enumerate(order)]
        if top_k is not None:
            ranked = ranked[:top_k]
        out.append({"prompt": p, "best": rs[order[0]], "ranking": ranked})
    return out
