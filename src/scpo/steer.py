"""Steerable reward models in use: load a run's models, score by group and strength, export.

A finished run's ``models/`` directory *is* the artifact (``scpo export RUN_DIR --out DIR`` copies
it elsewhere and completes it). Its layout, written by :func:`scpo.report.save_models` and completed
by :func:`export_artifact`:

* ``global/`` — the global reward model, a plain transformers checkpoint with its tokenizer;
* the group models, by ``mode``:

  - ``head``: ``heads.safetensors``, keys ``<group>/<method>`` -> score-layer weight ``[d]`` over
    the global model's encoder (the bias, shared, in the file's metadata);
  - ``lora``: ``adapters/<group>/``, one PEFT adapter per group over ``global/``;
  - ``full``: ``groups/<group>/``, one transformers checkpoint per group;

* ``reference.jsonl`` — up to 512 ``{prompt, response}`` texts of the run's data;
* ``manifest.json`` — mode, groups, methods, score layer, input formatter, global model and, once
  exported: τ, β, data provenance, per-group accuracies and the **calibration**;
* ``cards/<group>/README.md`` — a model card per group (for ``lora``/``full`` also the group
  directory's ``README.md``) and ``README.md`` for the whole artifact.

**Calibration.** Bradley–Terry rewards are defined only up to a shift (and each model has its own
spread), so blending models needs a common scale. Every model ``m`` is put on one: on the reference
texts its raw rewards have mean ``μ_m`` and standard deviation ``σ_m``; the calibrated reward is
``z_m(x) = (r_m(x) − μ_m) · s_m`` with ``s_m = σ_global / σ_m``. So every model is centred on the
reference set and shares the global model's spread; the global model is only shifted (its
Bradley–Terry probabilities are unchanged). ``export_artifact`` stores ``μ, σ, s`` in the manifest;
loading an artifact without them (a run's ``models/`` before export) computes them the same way.

**Steering.** ``score(..., group=g, strength=α) = (1 − α) z_global + α z_g``; a mixture
``group={"a": 0.7, "b": 0.3}`` replaces ``z_g`` by ``Σ w_h z_h`` (weights normalised to sum 1);
``group=None`` is the global model. ``compare`` is the Bradley–Terry probability
``sigmoid(r(a) − r(b))`` of the steered reward.

Memory: one encoder for every group in ``head`` mode (one forward pass scores all groups); one
base model with every adapter attached for ``lora`` (groups switch adapters, sharing the base's
parameter storage); ``full`` checkpoints are separate models by nature and load on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import InputError, ScpoError
from .model import InputFormatter, find_score_layer
from .names import is_inside, path_component

log = logging.getLogger("scpo")

__all__ = [
    "ARTIFACT_VERSION",
    "Calibration",
    "GroupSpec",
    "ScoreRequest",
    "SteerableRewardModel",
    "bt_probability",
    "calibration_entry",
    "compute_calibration",
    "export_artifact",
    "export_checkpoint",
    "group_card",
    "models_fingerprint",
    "parse_group",
    "read_reference",
    "register",
    "rerank_file",
    "resolve_artifact",
    "run_info",
    "score_file",
]

ARTIFACT_VERSION = 1
"""Version of the manifest fields :func:`export_artifact` adds."""

DEFAULT_METHOD = "scpo"
GLOBAL = "global"
"""Model id of the global model (group models are ``<group>/<method>``)."""

GroupSpec = None | str | Mapping[str, float]
"""``None`` (global model), a group name, or a mixture ``{group: weight}``."""


# ---------------------------------------------------------------------------------------------
# calibration


@dataclass(frozen=True)
class Calibration:
    """Affine map of one model's raw rewards onto the common scale: ``(r - mean) * scale``."""

    mean: float
    std: float
    scale: float

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float64) - self.mean) * self.scale

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "scale": self.scale}


def compute_calibration(raw: Mapping[str, np.ndarray], scale: bool = True) -> tuple[dict[str, Calibration], float]:
    """Calibration of every model from its raw rewards on the reference set; returns (map, common std)."""
    stds = {m: float(np.std(np.asarray(r, dtype=np.float64))) for m, r in raw.items()}
    common = stds.get(GLOBAL, 1.0)
    if not (common > 1e-12 and math.isfinite(common)):
        common = 1.0
    out = {}
    for m, r in raw.items():
        sd = stds[m]
        s = common / sd if scale and sd > 1e-12 and math.isfinite(sd) else 1.0
        out[m] = Calibration(mean=float(np.mean(np.asarray(r, dtype=np.float64))), std=sd, scale=float(s))
    return out, common


def bt_probability(margin: np.ndarray | float) -> np.ndarray:
    """Bradley–Terry probability ``sigmoid(margin)`` that the first response is preferred (overflow-free)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(margin, dtype=np.float64)))


# ---------------------------------------------------------------------------------------------
# locating and reading an artifact


def resolve_artifact(path: str | Path) -> Path:
    """The directory holding ``manifest.json``: ``path`` itself or ``path/models`` (a run directory)."""
    p = Path(path)
    if (p / "manifest.json").is_file():
        return p
    if (p / "models" / "manifest.json").is_file():
        return p / "models"
    if not p.exists():
        raise ScpoError(f"{path}: no such directory")
    raise ScpoError(f"{path}: not a steerable reward model (no manifest.json here nor in models/, no {EXPORT_SPEC}); "
                    "give a finished run directory, its models/ directory, an exported artifact or a `scpo export --group` checkpoint")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ScpoError(f"cannot read {path}: {e}".splitlines()[0]) from None


def read_reference(models_dir: Path) -> tuple[list[str], list[str], str | None]:
    """Prompts, responses and sha256 of ``reference.jsonl`` (empty lists and None when absent)."""
    f = models_dir / "reference.jsonl"
    if not f.is_file():
        return [], [], None
    data = f.read_bytes()
    prompts, responses = [], []
    for i, line in enumerate(data.decode("utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON: {e.msg}", file=str(f), row=i + 1) from None
        for key, out in (("prompt", prompts), ("response", responses)):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise InputError("expected an object with text fields prompt and response", file=str(f), row=i + 1, field=key)
            out.append(rec[key])
    return prompts, responses, hashlib.sha256(data).hexdigest()


def _run_root(path: str | Path, models_dir: Path) -> Path | None:
    """The run directory (holding ``results.json``) the models came from, if at hand."""
    if (Path(path) / "results.json").is_file():
        return Path(path)
    if models_dir.name == "models" and (models_dir.parent / "results.json").is_file():
        return models_dir.parent
    return None


def run_info(run_dir: Path) -> dict[str, Any]:
    """τ, β, data provenance and per-group accuracies of a finished run, for the manifest."""
    import yaml

    info: dict[str, Any] = {}
    cfg_path = run_dir / "config.yaml"
    cfg: dict[str, Any] = {}
    if cfg_path.is_file():
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        sel = cfg.get("select", {})
        info["tau"], info["beta"] = sel.get("tau"), sel.get("beta")
        info["train_config"] = cfg.get("train", {})
    res_path = run_dir / "results.json"
    if res_path.is_file():
        res = _read_json(res_path)
        d = res.get("data", {})
        info["data"] = {
            "name": d.get("name"), "synthetic": res.get("synthetic_data"), "split_unit": d.get("split_unit"),
            "split_seed": d.get("split_seed"), "groups": d.get("groups"), "provenance": d.get("provenance", {}),
        }
        acc: dict[str, Any] = {}
        for g, per in res.get("metrics", {}).items():
            entry: dict[str, Any] = {"test_pairs": per.get("test_pairs", {}).get("all")}
            for m, e in per.items():
                if isinstance(e, dict) and "all" in e and isinstance(e["all"], dict):
                    entry[m] = {"all": e["all"].get("mean"), "distinctive": e.get("distinctive", {}).get("mean"),
                                "ci95": e["all"].get("ci95")}
            acc[g] = entry
        info["accuracy"] = acc
        info["selection"] = {g: {k: s.get(k) for k in ("train_pairs", "kept", "kept_share", "mean_weight_kept")}
                             for g, s in res.get("selection", {}).items()}
        info["grid_choices"] = res.get("grid", {}).get("choices", {})
        info["seeds"] = res.get("seeds")
        info["versions"] = res.get("versions", {})
    return info




_NOT_WEIGHTS = {"manifest.json", "README.md", "reference.jsonl"}


def models_fingerprint(models_dir: str | Path) -> str:
    """Cheap fingerprint of an artifact's model files (not its manifest, cards or reference set).

    Relative names and sizes of every file, the bytes of files under 1 MiB, the first and last
    MiB of larger ones. A stored calibration is used only while it matches.
    """
    root = Path(models_dir)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or rel.parts[0] == "cards" or any(p.startswith(".") for p in rel.parts) or f.name in _NOT_WEIGHTS:
            continue
        size = f.stat().st_size
        h.update(f"{rel.as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= (1 << 20):
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def _group_dir(models_dir: Path, manifest: dict[str, Any], group: str, sub: str) -> Path:
    """Directory of a group's model: ``manifest['paths'][group]`` or ``<sub>/<safe encoding of group>``.

    The group name is never joined to a path as it is, and a manifest path that leaves the artifact
    is refused (a manifest is input too).
    """
    rel = (manifest.get("paths") or {}).get(group)
    cands = ([models_dir / rel] if isinstance(rel, str) and rel else []) + [models_dir / sub / path_component(group)]
    if group not in ("", ".", "..") and Path(group).name == group and "\\" not in group:
        cands.append(models_dir / sub / group)  # artifacts written before the safe encoding
    for c in cands:
        if not is_inside(c, models_dir):
            raise ScpoError(f"{models_dir}: the manifest's folder for group {group!r} ({rel!r}) is outside the artifact")
        if c.is_dir():
            return c
    raise ScpoError(f"{models_dir}: no model directory for group {group!r} (looked for {', '.join(map(str, cands))})")


# ---------------------------------------------------------------------------------------------
# the forward pass


def _score_module(model: nn.Module, name: str | None) -> nn.Module | None:
    """The outermost module named ``name`` (or ``*.name``: PEFT wraps the model), else None."""
    if not name:
        return None
    found = [(n, m) for n, m in model.named_modules() if n == name or n.endswith("." + name)]
    if not found:
        return None
    return min(found, key=lambda x: len(x[0]))[1]


def _device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _load_checkpoint(path: Path, device: torch.device) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.to(device).eval()


class _Backend:
    """Raw (uncalibrated) rewards of the artifact's models; one subclass per mode."""

    mode = ""
    tokenizer_subdir = "global"
    """Where the tokenizer lies inside the artifact ("" for a single exported checkpoint)."""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
        from transformers import AutoTokenizer

        self.dir, self.manifest, self.device, self.batch_size = models_dir, manifest, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(models_dir / self.tokenizer_subdir))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        fmt = manifest.get("formatter") or {}
        self.formatter = InputFormatter(**fmt) if fmt else InputFormatter.for_tokenizer(self.tokenizer, "auto", 256)
        self.score_layer_name = manifest.get("score_layer")
        self.forward_passes = 0
        self.truncated = 0

    # every model this artifact holds, "global" first
    def model_ids(self) -> list[str]:
        raise NotImplementedError

    def modules(self) -> list[nn.Module]:
        """Every torch module in memory (for memory checks)."""
        raise NotImplementedError

    def module_for(self, model_id: str) -> nn.Module:
        raise NotImplementedError

    def encode(self, prompts: list[str], responses: list[str]) -> tuple[list[list[int]], list[list[int]] | None]:
        ids, tt, n_trunc = self.formatter.encode(self.tokenizer, prompts, responses)
        if n_trunc:
            self.truncated += n_trunc
            warnings.warn(f"{n_trunc} of {len(prompts)} inputs exceeded max_length={self.formatter.max_length} tokens "
                          "and were truncated (the prompt is cut from its start, the response kept)", stacklevel=3)
        return ids, tt

    @torch.inference_mode()
    def _forward(self, model: nn.Module, ids: list[list[int]], tt: list[list[int]] | None,
                 rows: np.ndarray, want_features: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """Features (score-layer inputs) and outputs of ``rows``, in batches sorted by length.

        Mirrors :func:`scpo.score.encode_features`: right padding, dynamic length, decoder models
        read at the last non-padding token.
        """
        pad = self.tokenizer.pad_token_id or 0
        module = _score_module(model, self.score_layer_name)
        order = rows[np.argsort([len(ids[i]) for i in rows], kind="stable")[::-1]]
        feats: dict[int, np.ndarray] = {}
        outs: dict[int, float] = {}
        for s in range(0, len(order), self.batch_size):
            b = order[s : s + self.batch_size]
            T = max(len(ids[i]) for i in b)
            input_ids = torch.full((len(b), T), pad, dtype=torch.long)
            mask = torch.zeros((len(b), T), dtype=torch.long)
            for j, i in enumerate(b):
                input_ids[j, : len(ids[i])] = torch.tensor(ids[i])
                mask[j, : len(ids[i])] = 1
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
            if tt is not None:
                tti = torch.zeros_like(input_ids)
                for j, i in enumerate(b):
                    tti[j, : len(tt[i])] = torch.tensor(tt[i])
                inputs["token_type_ids"] = tti.to(self.device)
            store: dict[str, torch.Tensor] = {}

            def hook(_m: nn.Module, inp: tuple, out: torch.Tensor, store: dict = store) -> None:
                store["x"], store["y"] = inp[0], out

            handle = module.register_forward_hook(hook) if module is not None else None
            try:
                result = model(**inputs)
            finally:
                if handle is not None:
                    handle.remove()
            self.forward_passes += 1
            x, y = (store["x"], store["y"]) if module is not None else (None, result.logits)
            if y.dim() == 3:  # decoder reward models: the last non-padding token
                last = mask.sum(1).to(y.device) - 1
                ar = torch.arange(y.shape[0], device=y.device)
                y = y[ar, last]
                x = x[ar, last] if x is not None else None
            yv = y.reshape(len(b), -1)[:, 0].double().cpu().numpy()
            xv = x.float().cpu().numpy() if (want_features and x is not None) else None
            for j, i in enumerate(b):
                outs[int(i)] = float(yv[j])
                if xv is not None:
                    feats[int(i)] = xv[j]
        out_arr = np.array([outs[int(i)] for i in rows], dtype=np.float64)
        feat_arr = np.stack([feats[int(i)] for i in rows]) if want_features and feats else None
        return feat_arr, out_arr

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw rewards: for each model id, an array over all texts (NaN where not requested)."""
        raise NotImplementedError


class _HeadBackend(_Backend):
    """Head mode: one encoder, the group models are linear score layers over its features."""

    mode = "head"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
        super().__init__(models_dir, manifest, device, batch_size)
        from safetensors import safe_open

        self.model = _load_checkpoint(models_dir / "global", device)
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(self.model)[0]
        layer = _score_module(self.model, self.score_layer_name)
        if not isinstance(layer, nn.Linear):
            raise ScpoError(f"{models_dir}: score layer {self.score_layer_name!r} is not a linear layer")
        self.weights: dict[str, np.ndarray] = {GLOBAL: layer.weight.detach().double().reshape(-1).cpu().numpy()}
        b0 = float(layer.bias.detach().reshape(())) if layer.bias is not None else 0.0
        self.biases: dict[str, float] = {GLOBAL: b0}
        hp = models_dir / "heads.safetensors"
        if not hp.is_file():
            raise ScpoError(f"{models_dir}: head mode but no heads.safetensors")
        with safe_open(str(hp), framework="pt") as f:
            meta = f.metadata() or {}
            bias = float(meta.get("bias", b0))
            for k in f.keys():  # noqa: SIM118 - safe_open has no iteration protocol
                self.weights[k] = f.get_tensor(k).double().reshape(-1).numpy()
                self.biases[k] = bias
        d = self.weights[GLOBAL].shape[0]
        bad = [k for k, w in self.weights.items() if w.shape[0] != d]
        if bad:
            raise ScpoError(f"{hp}: heads {bad} do not match the score layer's {d} features")

    def model_ids(self) -> list[str]:
        return list(self.weights)

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def module_for(self, model_id: str) -> nn.Module:
        return self.model

    def head(self, model_id: str) -> tuple[np.ndarray, float]:
        return self.weights[model_id], self.biases[model_id]

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(prompts)
        union = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in need.values()])) if need else np.zeros(0, np.int64)
        out = {m: np.full(n, np.nan) for m in need}
        if len(union) == 0:
            return out
        ids, tt = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        feats, _ = self._forward(self.model, ids, tt, np.arange(len(union)), want_features=True)
        f64 = feats.astype(np.float64)
        pos = {int(u): j for j, u in enumerate(union)}
        for m, rows in need.items():
            w, b = self.head(m)
            sel = np.array([pos[int(i)] for i in rows], dtype=np.int64)
            out[m][np.asarray(rows, dtype=np.int64)] = f64[sel] @ w + b
        return out


class _MultiBackend(_Backend):
    """``lora`` and ``full``: one forward pass per model over the texts that model must score."""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size)
        self.method = method
        self.groups = list(manifest.get("groups", []))

    def model_ids(self) -> list[str]:
        return [GLOBAL] + [f"{g}/{self.method}" for g in self.groups]

    def _run(self, model_id: str, ids: list[list[int]], tt: list[list[int]] | None, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(prompts)
        out = {m: np.full(n, np.nan) for m in need}
        union = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in need.values()])) if need else np.zeros(0, np.int64)
        if len(union) == 0:
            return out
        ids_u, tt_u = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        pos = {int(u): j for j, u in enumerate(union)}
        for m, rows in need.items():
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) == 0:
                continue
            local = np.array([pos[int(i)] for i in rows], dtype=np.int64)
            out[m][rows] = self._run(m, ids_u, tt_u, local)
        return out


class _LoraBackend(_MultiBackend):
    """LoRA mode: one base model with every group's adapter attached; groups switch adapters."""

    mode = "lora"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size, method)
        from peft import PeftModel

        base = _load_checkpoint(models_dir / "global", device)
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(base)[0]
        self.adapter_names: dict[str, str] = {}
        model = None
        for k, g in enumerate(self.groups):
            path = _group_dir(models_dir, manifest, g, "adapters")
            name = f"g{k}"  # adapter names must be valid module names; groups may hold any character
            if model is None:
                model = PeftModel.from_pretrained(base, str(path), adapter_name=name, is_trainable=False)
            else:
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            self.adapter_names[f"{g}/{method}"] = name
        self.model = (model if model is not None else base).to(device).eval()

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def module_for(self, model_id: str) -> nn.Module:
        return self.model

    def _run(self, model_id: str, ids: list[list[int]], tt: list[list[int]] | None, rows: np.ndarray) -> np.ndarray:
        if model_id == GLOBAL:
            if hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    return self._forward(self.model, ids, tt, rows, want_features=False)[1]
            return self._forward(self.model, ids, tt, rows, want_features=False)[1]
        self.model.set_adapter(self.adapter_names[model_id])
        return self._forward(self.model, ids, tt, rows, want_features=False)[1]


class _FullBackend(_MultiBackend):
    """Full mode: a checkpoint per group (separate models by nature), each loaded on first use."""

    mode = "full"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size, method)
        self.paths = {GLOBAL: models_dir / "global"}
        for g in self.groups:
            self.paths[f"{g}/{method}"] = _group_dir(models_dir, manifest, g, "groups")
        self.loaded: dict[str, nn.Module] = {}
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(self.module_for(GLOBAL))[0]

    def modules(self) -> list[nn.Module]:
        return list(self.loaded.values())

    def module_for(self, model_id: str) -> nn.Module:
        if model_id not in self.loaded:
            self.loaded[model_id] = _load_checkpoint(self.paths[model_id], self.device)
        return self.loaded[model_id]

    def _run(self, model_id: str, ids: list[list[int]], tt: list[list[int]] | None, rows: np.ndarray) -> np.ndarray:
        return self._forward(self.module_for(model_id), ids, tt, rows, want_features=False)[1]


EXPORT_SPEC = "scpo_export.json"
"""What :func:`export_checkpoint` writes beside a single checkpoint: group, strength, calibration, formatter."""


class _ExportBackend(_Backend):
    """A single checkpoint written by :func:`export_checkpoint`: one network, the steered reward baked in.

    Every model id scores with that one network (the calibration is in its score layer).
    """

    mode = "export"
    tokenizer_subdir = ""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
        super().__init__(models_dir, manifest, device, batch_size)
        self.model = _load_checkpoint(models_dir, device)
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(self.model)[0]

    def model_ids(self) -> list[str]:
        return [GLOBAL]

    def modules(self) -> list[nn.Module]:
        return [self.model]

    def module_for(self, model_id: str) -> nn.Module:
        return self.model

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(prompts)
        out = {m: np.full(n, np.nan) for m in need}
        union = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in need.values()])) if need else np.zeros(0, np.int64)
        if len(union) == 0:
            return out
        ids, tt = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        _, y = self._forward(self.model, ids, tt, np.arange(len(union)), want_features=False)
        full = np.full(n, np.nan)
        full[union] = y
        for m, rows in need.items():
            rows = np.asarray(rows, dtype=np.int64)
            out[m][rows] = full[rows]
        return out


def _export_manifest(path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a single exported checkpoint, from its ``scpo_export.json``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("formatter"), dict):
        raise ScpoError(f"{path / EXPORT_SPEC}: not an scpo export (no formatter)")
    group = spec.get("group")
    return {"mode": "export", "groups": [group] if isinstance(group, str) else [], "formatter": spec["formatter"],
            "group_method": spec.get("method") or DEFAULT_METHOD, "export": spec}


# ---------------------------------------------------------------------------------------------
# the public model


def _calibration_valid(stored: dict[str, Any], ref_sha: str, models_dir: Path, ids: Sequence[str], scale: bool) -> bool:
    """True when a stored calibration covers ``ids`` and was made on these texts and these weights."""
    return (stored.get("reference_sha256") == ref_sha and bool(stored.get("scaled", True)) == scale
            and all(m in stored.get("models", {}) for m in ids)
            and stored.get("models_fingerprint") == models_fingerprint(models_dir))


def calibration_entry(raw: Mapping[str, np.ndarray], models_dir: str | Path, *, scale: bool = True) -> dict[str, Any]:
    """The manifest's ``calibration`` block from raw rewards on ``models_dir/reference.jsonl``.

    For writers that already hold those rewards (the pipeline has every reference text's features
    in head mode): store it as ``manifest["calibration"]`` after the model files are written and
    :meth:`SteerableRewardModel.from_pretrained` uses it instead of recomputing.
    """
    cal, common = compute_calibration(raw, scale=scale)
    n = len(next(iter(raw.values()))) if raw else 0
    return {"method": "center-scale" if scale else "center", "scaled": scale, "reference": "reference.jsonl", "n": n,
            "common_std": common, "reference_sha256": read_reference(Path(models_dir))[2],
            "models_fingerprint": models_fingerprint(models_dir), "models": {m: c.to_dict() for m, c in cal.items()}}


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

    def __init__(self, path: Path, manifest: dict[str, Any], backend: _Backend, method: str,
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
        """
        if not (Path(path) / "manifest.json").is_file() and (Path(path) / EXPORT_SPEC).is_file():
            return cls._from_export(Path(path), device=device, batch_size=batch_size)
        models_dir = resolve_artifact(path)
        manifest = _read_json(models_dir / "manifest.json")
        mode = manifest.get("mode")
        if mode not in ("head", "lora", "full"):
            raise ScpoError(f"{models_dir}/manifest.json: unknown mode {mode!r}")
        if batch_size < 1:
            raise ScpoError(f"batch_size must be >= 1, got {batch_size}")
        if not (models_dir / "global").is_dir():
            raise ScpoError(f"{models_dir}: no global/ model")
        root = _run_root(path, models_dir)
        if root is not None and "accuracy" not in manifest:
            manifest = {**run_info(root), **manifest}
        dev = _device(device)
        groups = list(manifest.get("groups", []))
        if mode == "head":
            backend: _Backend = _HeadBackend(models_dir, manifest, dev, batch_size)
            trained = [k.rsplit("/", 1)[1] for k in backend.model_ids() if "/" in k]
            methods = list(dict.fromkeys(trained))
            if method is None:
                method = DEFAULT_METHOD if DEFAULT_METHOD in methods else (methods[-1] if methods else DEFAULT_METHOD)
            missing = [g for g in groups if f"{g}/{method}" not in backend.model_ids()]
            if missing:
                raise ScpoError(f"{models_dir}: no {method!r} head for group(s) {missing}; heads: {backend.model_ids()[1:]}")
        else:
            method = method or manifest.get("group_method", DEFAULT_METHOD)
            cls_ = _LoraBackend if mode == "lora" else _FullBackend
            backend = cls_(models_dir, manifest, dev, batch_size, method)
        stored = manifest.get("calibration") or {}
        prompts, responses, ref_sha = read_reference(models_dir)
        use_scale = bool(stored.get("scaled", True)) if scale is None else scale
        ids = backend.model_ids() if mode == "head" else [GLOBAL] + [f"{g}/{method}" for g in groups]
        srm = cls(models_dir, manifest, backend, method, {}, {})
        if not recalibrate and ref_sha is not None and _calibration_valid(stored, ref_sha, models_dir, ids, use_scale):
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
        """A single checkpoint of :func:`export_checkpoint` as a one-group model (its calibration baked in).

        ``group=None`` and the exported group (a group name only; mixtures and the global model
        export no group) both give the exported reward, the API's at export time: the checkpoint's
        output plus ``reward_offset``. Other strengths, groups and mixtures are refused: the other
        models are not in the checkpoint.
        """
        if batch_size < 1:
            raise ScpoError(f"batch_size must be >= 1, got {batch_size}")
        spec = _read_json(path / EXPORT_SPEC)
        manifest = _export_manifest(path, spec)
        offset = spec.get("reward_offset") or 0.0
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ScpoError(f"{path / EXPORT_SPEC}: reward_offset must be a finite number, got {offset!r}")
        backend = _ExportBackend(path, manifest, _device(device), batch_size)
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
            import difflib

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
        what = f"a single exported checkpoint ({_describe(spec.get('group'), float(spec.get('strength', 1.0)))})"
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

    # -- export ----------------------------------------------------------------------------
    def export(self, out_dir: str | Path, group: GroupSpec = None, strength: float = 1.0) -> Path:
        """Write the steered reward model as one plain transformers checkpoint; see :func:`export_checkpoint`."""
        return export_checkpoint(self, out_dir, group=group, strength=strength)


# ---------------------------------------------------------------------------------------------
# single-checkpoint export (drop-in for RLHF trainers)


def _affine_score_layer(model: nn.Module, name: str | None, weight: np.ndarray, bias: float) -> float:
    """Set the score layer to (weight, bias); returns the part of the bias that could not be stored."""
    layer = _score_module(model, name) if name else None
    if not isinstance(layer, nn.Linear):
        layer = find_score_layer(model)[1]
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype).reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.fill_(float(bias))
            return 0.0
    return float(bias)


def export_checkpoint(model: SteerableRewardModel | str | Path, out_dir: str | Path, group: GroupSpec = None,
                      strength: float = 1.0) -> Path:
    """Write the steered reward as a plain transformers checkpoint (LoRA merged, calibration baked in).

    The result loads with ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` and outputs the same rewards as
    ``model.score(..., group, strength)`` (text-pair models: ``tokenizer(prompt, response)``).
    Head mode exports any strength and mixture (they are linear in the score layer); lora/full
    export one model (``strength`` 0 or 1 and one group): a blend of separate networks is not one
    network. Score layers without a bias (Llama's ``score``) cannot store the centring offset: it
    is recorded in ``scpo_export.json`` as ``reward_offset`` and the checkpoint's rewards are the
    API's minus it.
    """
    srm = model if isinstance(model, SteerableRewardModel) else SteerableRewardModel.from_pretrained(model, device="cpu")
    if srm.mode == "export":
        raise ScpoError(f"{srm.path}: already a single exported checkpoint; export from the artifact it came from")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ScpoError(f"{out}: exists and is not empty")
    coef = srm.coefficients(group, strength)
    src = srm.path
    name = srm._backend.score_layer_name
    if srm.mode == "head":
        net = _load_checkpoint(src / "global", torch.device("cpu"))
        be: _HeadBackend = srm._backend  # type: ignore[assignment]
        w = np.zeros_like(be.weights[GLOBAL])
        b = 0.0
        for m, c in coef.items():
            cal = srm.calibration[m]
            wm, bm = be.head(m)
            w = w + c * cal.scale * wm
            b += c * cal.scale * (bm - cal.mean)
    else:
        if len(coef) != 1:
            raise ScpoError(f"{srm.mode} mode: a blend of several networks ({', '.join(coef)}) is not one checkpoint; "
                            "export strength 0 (global) or 1 with one group")
        (m,) = coef
        if m == GLOBAL:
            net = _load_checkpoint(src / "global", torch.device("cpu"))
        elif srm.mode == "full":
            net = _load_checkpoint(_group_dir(src, srm.manifest, m.rsplit("/", 1)[0], "groups"), torch.device("cpu"))
        else:
            from peft import PeftModel

            base = _load_checkpoint(src / "global", torch.device("cpu"))
            path = _group_dir(src, srm.manifest, m.rsplit("/", 1)[0], "adapters")
            net = PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
        layer = _score_module(net, name) if name else None
        if not isinstance(layer, nn.Linear):
            layer = find_score_layer(net)[1]
        cal = srm.calibration[m]
        w = layer.weight.detach().double().reshape(-1).numpy() * cal.scale
        b0 = float(layer.bias.detach().reshape(())) if layer.bias is not None else 0.0
        b = (b0 - cal.mean) * cal.scale
    offset = _affine_score_layer(net, name, w, b)
    if offset:
        warnings.warn(f"the score layer has no bias: the checkpoint's rewards are the API's minus {offset:.6g} "
                      "(recorded as reward_offset in scpo_export.json); comparisons are unaffected", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(str(tmp))
    srm.tokenizer.save_pretrained(str(tmp))
    spec = {"group": dict(group) if isinstance(group, Mapping) else group, "strength": float(strength),
            "method": srm.method, "mode": srm.mode, "coefficients": coef, "reward_offset": offset,
            "formatter": srm.formatter.to_dict(), "source": str(src),
            "calibration": {m: srm.calibration[m].to_dict() for m in coef}, "calibration_info": srm.calibration_info}
    (tmp / "scpo_export.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(_export_card(srm, group, strength, coef, offset), encoding="utf-8")
    for f in tmp.iterdir():
        shutil.move(str(f), str(out / f.name))
    tmp.rmdir()
    return out


def _describe(group: GroupSpec, strength: float) -> str:
    if group is None:
        return "the global model"
    if isinstance(group, str):
        return f"group `{group}` at strength α = {strength:g}"
    return "mixture " + ", ".join(f"`{g}` × {w:g}" for g, w in group.items()) + f" at strength α = {strength:g}"


def _export_card(srm: SteerableRewardModel, group: GroupSpec, strength: float, coef: dict[str, float], offset: float) -> str:
    man = srm.manifest
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-classification", "tags: [reward-model, scpo]", "---", "",
        f"# SCPO reward model: {_describe(group, strength)}", "",
        "A plain `AutoModelForSequenceClassification` checkpoint with one output, the reward, exported by "
        "`scpo export` from a steerable SCPO artifact"
        + (" (LoRA adapter merged into the base)." if srm.mode == "lora" else "."), "",
        "Reward = " + " + ".join(f"{c:.4g} · z[{m}]" for m, c in coef.items())
        + ", where z[m] is model m's reward centred (and scaled) on the artifact's reference set.", "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "rm = AutoModelForSequenceClassification.from_pretrained(PATH).eval()",
        "reward = rm(**tok(prompt, response, return_tensors='pt')).logits[0, 0]"
        if srm.formatter.kind == "text-pair" else
        "text = tok.apply_chat_template([{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': response}], tokenize=False)",
        "```", "",
        f"Input format: `{srm.formatter.kind}`, at most {srm.formatter.max_length} tokens (scpo cuts the prompt from "
        "its start when an input is longer).",
    ]
    if offset:
        lines += ["", f"The score layer has no bias: add {offset:.6g} to this checkpoint's rewards to get scpo's."]
    if man.get("tau") is not None:
        lines += ["", f"SCPO: τ = {man.get('tau')}, β = {man.get('beta')}, mode `{srm.mode}`, method `{srm.method}`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# artifact export (calibration, manifest, model cards)


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def group_card(group: str, manifest: dict[str, Any], method: str) -> str:
    """A model card (markdown) for one group's reward model, from the completed manifest."""
    data = manifest.get("data") or {}
    gm = manifest.get("global_model") or {}
    acc = (manifest.get("accuracy") or {}).get(group, {})
    sel = (manifest.get("selection") or {}).get(group, {})
    cal = (manifest.get("calibration") or {}).get("models", {}).get(f"{group}/{method}", {})
    choices = (manifest.get("grid_choices") or {}).get(group, {}).get(method, {})
    tc = manifest.get("train_config") or {}
    mode = manifest.get("mode")
    lines = ["---", "library_name: transformers", "tags: [reward-model, scpo, steerable]", "---", "",
             f"# SCPO reward model for `{group}`", ""]
    if data.get("synthetic"):
        lines += ["> **Synthetic data.** Trained and evaluated on scpo's embedded synthetic benchmark (invented "
                  "groups, known ground truth), not on real people's preferences.", ""]
    lines += [
        "## How it was trained", "",
        f"* Global model: `{gm.get('model', '?')}` ({gm.get('trained_on', '')}).",
        f"* Group model: mode `{mode}` ("
        + {"head": "the score layer over the frozen global encoder", "lora": "a LoRA adapter over the global model",
           "full": "full fine-tuning of the global model"}.get(str(mode), "?")
        + f"), method `{method}`.",
        f"* SCPO selection: keep a training pair where sigmoid(Δ) < τ = {manifest.get('tau', '?')}, weight it "
        f"w = min(exp(Δ/β), 1) with β = {manifest.get('beta', '?')} (Δ: the global model's margin).",
    ]
    if sel:
        lines.append(f"* Training pairs of the group: {sel.get('train_pairs')}, kept by the filter: {sel.get('kept')} "
                     f"({_pct(sel.get('kept_share'))}), mean weight of the kept: "
                     + (f"{sel['mean_weight_kept']:.3f}" if isinstance(sel.get("mean_weight_kept"), (int, float)) else "–") + ".")
    if choices:
        c0 = next(iter(choices.values()))
        lines.append(f"* Chosen on validation folds: learning rate {c0.get('learning_rate')}, pull {c0.get('pull')}, "
                     f"steps {c0.get('steps')} (validation accuracy {_pct(c0.get('val_accuracy'))}).")
    if tc:
        lines.append(f"* Seeds {manifest.get('seeds', tc.get('seeds'))}; batch size {tc.get('batch_size')}"
                     + (f"; LoRA r = {tc.get('lora_r')}, α = {tc.get('lora_alpha')}" if mode == "lora" else "") + ".")
    lines.append(f"* Data: `{data.get('name', '?')}`, split by {data.get('split_unit', '?')} (seed {data.get('split_seed', '?')}); "
                 "provenance in the artifact's `manifest.json`.")
    lines += ["", "## How it was evaluated", ""]
    if acc:
        lines += [f"Accuracy on the group's {acc.get('test_pairs', '?')} held-out test pairs (chosen scored above rejected):", "",
                  "| model | all | 95% CI | distinctive |", "|---|---|---|---|"]
        for m, e in acc.items():
            if isinstance(e, dict):
                ci = e.get("ci95") or [None, None]
                cis = f"{_pct(ci[0])} – {_pct(ci[1])}" if ci[0] is not None else "–"
                lines.append(f"| {m} | {_pct(e.get('all'))} | {cis} | {_pct(e.get('distinctive'))} |")
        lines += ["", "`distinctive`: the test pairs the global model ranks wrongly (0% for it by construction)."]
    else:
        lines.append("No evaluation results were found with these models (no results.json).")
    lines += ["", "## Calibration", ""]
    if cal:
        lines.append(f"On the {manifest['calibration'].get('n')} reference texts this model's raw rewards have mean "
                     f"{cal['mean']:.4g} and std {cal['std']:.4g}; scpo reports `(r - mean) × {cal['scale']:.4g}`, the "
                     "common scale shared with the global model, so strengths and mixtures blend comparable rewards.")
    lines += ["", "## Use", "", "```python", "from scpo.steer import SteerableRewardModel",
              "rm = SteerableRewardModel.from_pretrained(ARTIFACT_DIR)",
              f"rm.score(prompts, responses, group={group!r}, strength=1.0)", "```", "",
              f"Plain transformers checkpoint for RLHF trainers: `scpo export ARTIFACT_DIR --group '{group}' --out DIR`. "
              "Server: `scpo serve --model ARTIFACT_DIR`."]
    return "\n".join(lines) + "\n"


def export_artifact(run_dir: str | Path, out_dir: str | Path | None = None, *, scale: bool = True,
                    method: str | None = None, device: str | None = None, recalibrate: bool = False) -> Path:
    """Complete a run's models as a steerable artifact; returns its directory.

    Copies ``RUN_DIR/models`` to ``out_dir`` (or works in place when ``out_dir`` is None), computes
    the calibration on ``reference.jsonl`` (kept when the stored one still matches the texts and the
    weights, unless ``recalibrate``), adds τ, β, data provenance and per-group accuracies
    (from the run's ``config.yaml`` and ``results.json`` when at hand) to ``manifest.json``, and
    writes a model card per group and one for the artifact.
    """
    from .reliability import atomic_write_json, atomic_write_text

    src = resolve_artifact(run_dir)
    root = _run_root(run_dir, src)
    if out_dir is not None:
        target = Path(out_dir)
        if target.resolve() != src.resolve():
            if target.exists() and any(target.iterdir()):
                raise ScpoError(f"{target}: exists and is not empty")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            if target.exists():
                target.rmdir()
            tmp.rename(target)
    else:
        target = src
    manifest = _read_json(target / "manifest.json")
    if root is not None:
        manifest.update(run_info(root))
    atomic_write_json(target / "manifest.json", manifest)
    srm = SteerableRewardModel.from_pretrained(target, method=method, device=device, scale=scale, recalibrate=recalibrate)
    manifest = srm.manifest
    manifest["artifact_version"] = ARTIFACT_VERSION
    manifest["group_method"] = srm.method
    manifest["calibration"] = {**srm.calibration_info, "models": {m: c.to_dict() for m, c in srm.calibration.items()}}
    cards = {}
    for g in srm.groups:
        card = group_card(g, manifest, srm.method)
        rel = f"cards/{path_component(g)}/README.md"
        atomic_write_text(target / rel, card)
        cards[g] = rel
        if srm.mode in ("lora", "full"):
            atomic_write_text(_group_dir(target, manifest, g, "adapters" if srm.mode == "lora" else "groups") / "README.md", card)
    manifest["cards"] = cards
    atomic_write_json(target / "manifest.json", manifest)
    atomic_write_text(target / "README.md", _artifact_card(manifest, srm))
    return target


def _artifact_card(manifest: dict[str, Any], srm: SteerableRewardModel) -> str:
    data = manifest.get("data") or {}
    lines = ["# Steerable SCPO reward models", "",
             f"Mode `{srm.mode}`, method `{srm.method}`, groups: " + ", ".join(f"`{g}`" for g in srm.groups) + ".",
             f"Data `{data.get('name', '?')}`" + (" (synthetic)" if data.get("synthetic") else "")
             + f"; τ = {manifest.get('tau', '?')}, β = {manifest.get('beta', '?')}.", "",
             "| group | test pairs | global | " + srm.method + " | card |", "|---|---|---|---|---|"]
    acc = manifest.get("accuracy") or {}
    for g in srm.groups:
        a = acc.get(g, {})
        lines.append(f"| {g} | {a.get('test_pairs', '–')} | {_pct((a.get('global') or {}).get('all'))} | "
                     f"{_pct((a.get(srm.method) or {}).get('all'))} | [card]({manifest['cards'][g]}) |")
    lines += ["", "```python", "from scpo.steer import SteerableRewardModel", "rm = SteerableRewardModel.from_pretrained(THIS_DIR)",
              "rm.score(prompts, responses, group=GROUP, strength=0.5)  # halfway from the global model", "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# command line: scpo export / score / rerank


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


def _parse_strength(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a run directory, its models/ or an exported artifact")
    p.add_argument("--group", metavar="G", help="a group, or a mixture G1=0.7,G2=0.3 (default: the global model)")
    p.add_argument("--strength", type=_parse_strength, default=1.0, metavar="A",
                   help="0 = the global model ... 1 = the group's (default 1)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--input", required=True, metavar="FILE", help="JSONL, CSV or Parquet file")
    p.add_argument("--output", metavar="FILE", help="JSONL output (default: standard output)")


def _open_model(args: argparse.Namespace) -> SteerableRewardModel:
    _quiet_transformers()
    if args.batch_size < 1:
        raise ScpoError(f"--batch-size must be >= 1, got {args.batch_size}")
    return SteerableRewardModel.from_pretrained(args.model, method=args.method, device=args.device,
                                                batch_size=args.batch_size)


def _text(rec: dict[str, Any], col: str, file: str, row: int) -> str:
    v = rec.get(col)
    if not isinstance(v, str):
        raise InputError("missing value" if v is None else f"expected text, got {type(v).__name__}",
                         file=file, row=row, field=col)
    return v


def _write_jsonl(rows: Sequence[dict[str, Any]], output: str | None) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from .reliability import atomic_write_text

        atomic_write_text(output, text)


PAIR_COLUMNS = (("chosen", "rejected", "p_chosen"), ("response_a", "response_b", "p_a"), ("a", "b", "p_a"))
"""Pair-file columns ``scpo score`` recognises: (first, second, output field of P(first preferred))."""


def score_file(srm: SteerableRewardModel, path: str | Path, group: GroupSpec = None, strength: float = 1.0) -> list[dict[str, Any]]:
    """Score a file: rows with ``prompt, response`` get ``reward``; pair rows get both rewards and P(first)."""
    from .load.files import read_records

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
    from .load.files import read_records

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


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (or its models/, or an artifact)")
    p.add_argument("--out", metavar="DIR", help="output directory (without --group: default in place, RUN_DIR/models)")
    p.add_argument("--group", metavar="G",
                   help="export one plain transformers checkpoint for this group (or mixture G1=0.7,G2=0.3); "
                        "without it the whole steerable artifact is exported")
    p.add_argument("--strength", type=_parse_strength, default=1.0, metavar="A", help="with --group: strength α (default 1)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--no-scale", action="store_true", help="calibration: centre only, do not rescale to the global spread")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")


def _export(args: argparse.Namespace) -> int:
    _quiet_transformers()
    if args.group is None:
        path = export_artifact(args.run_dir, args.out, scale=not args.no_scale, method=args.method, device=args.device)
        print(path)
        return 0
    if not args.out:
        raise ScpoError("--group needs --out DIR (where to write the checkpoint)")
    srm = SteerableRewardModel.from_pretrained(args.run_dir, method=args.method, device=args.device,
                                               scale=False if args.no_scale else None)
    print(export_checkpoint(srm, args.out, group=parse_group(args.group, srm.groups), strength=args.strength))
    return 0


def _score_cmd(args: argparse.Namespace) -> int:
    srm = _open_model(args)
    rows = score_file(srm, args.input, parse_group(args.group, srm.groups), args.strength)
    _write_jsonl(rows, args.output)
    return 0


def _add_rerank_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K best candidates per prompt")


def _rerank_cmd(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise ScpoError(f"--top-k must be >= 1, got {args.top_k}")
    srm = _open_model(args)
    rows = rerank_file(srm, args.input, parse_group(args.group, srm.groups), args.strength, args.top_k)
    _write_jsonl(rows, args.output)
    return 0


def register(commands: dict) -> None:
    """Add ``scpo export``, ``scpo score`` and ``scpo rerank`` to the CLI."""
    commands["export"] = ("export a run's steerable reward models (or one group's plain transformers checkpoint)",
                          _add_export_args, _export)
    commands["score"] = ("score (prompt, response) rows, or pairs, with a group's reward model", _add_model_args, _score_cmd)
    commands["rerank"] = ("order candidate responses per prompt for a group (best-of-n)", _add_rerank_args, _rerank_cmd)
