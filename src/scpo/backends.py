"""Model holders of an artifact, one per mode: raw (uncalibrated) rewards of its global and group models.

* :class:`HeadBackend` -- one encoder; the group models are linear score layers over its features,
  so one forward pass scores every group (``--head-layers pooler`` artifacts: each model is its own
  pooler dense layer and score layer over the encoder's first-token states, still one pass);
* :class:`LoraBackend` -- one base model with every group's adapter attached; groups switch adapters;
* :class:`FullBackend` -- a checkpoint per group, each loaded on first use.

Every forward pass is :func:`scpo.forward.forward`. Calibration and steering on top of these raw
rewards are :mod:`scpo.steer`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .artifact import GLOBAL, MODE_FOLDERS, group_dir
from .errors import ScpoError
from .forward import Tokens, forward, plan, score_module, tokenize
from .model import POOLER_ACTIVATIONS, InputFormatter, PoolerHead, PoolerSpec, find_score_layer

__all__ = ["BACKENDS", "Backend", "ExportBackend", "FullBackend", "HeadBackend", "LoraBackend", "load_checkpoint"]


def load_checkpoint(path: Path, device: torch.device) -> nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.to(device).eval()


class Backend:
    """Raw (uncalibrated) rewards of the artifact's models; one subclass per mode."""

    mode = ""
    tokenizer_subdir = "global"
    """Where the tokenizer lies inside the artifact ("" for a single exported checkpoint)."""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
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

    def encode(self, prompts: list[str], responses: list[str]) -> Tokens:
        tokens, n_trunc = tokenize(self.formatter, self.tokenizer, prompts, responses)
        if n_trunc:
            self.truncated += n_trunc
            warnings.warn(f"{n_trunc} of {len(prompts)} inputs exceeded max_length={self.formatter.max_length} tokens "
                          "and were truncated (the prompt is cut from its start, the response kept)", stacklevel=3)
        return tokens

    def _forward(self, model: nn.Module, tokens: Tokens, rows: np.ndarray,
                 output: Literal["features", "rewards"], module: nn.Module | None = None) -> np.ndarray:
        """Features (float32 inputs of ``module``, default the score layer) or rewards (float64) of ``rows``:
        :func:`scpo.forward.forward`."""
        sub = np.asarray(rows, dtype=np.int64)
        batches = [sub[b] for b in plan(tokens.lengths[sub], self.batch_size)]
        run = forward(model, tokens, batches, pad_id=self.tokenizer.pad_token_id or 0, output=output,
                      module=module if module is not None else score_module(model, self.score_layer_name),
                      work="serving_forward_passes")
        pos = {int(r): j for j, r in enumerate(sub)}
        out = None
        for i, res in run:
            if out is None:
                out = np.zeros((len(sub), res.shape[1]), dtype=np.float32 if output == "features" else np.float64)
            out[[pos[int(r)] for r in batches[i]]] = res
        self.forward_passes += run.computed
        if out is None:
            out = np.zeros((0, 1))
        return out if output == "features" else out[:, 0].astype(np.float64)

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw rewards: for each model id, an array over all texts (NaN where not requested)."""
        raise NotImplementedError


class HeadBackend(Backend):
    """Head mode: one encoder, the group models are linear score layers over its features."""

    mode = "head"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
        super().__init__(models_dir, manifest, device, batch_size)
        self.model = load_checkpoint(models_dir / "global", device)
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(self.model)[0]
        layer = score_module(self.model, self.score_layer_name)
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
        self.pooler: PoolerSpec | None = None
        self.poolers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if manifest.get("head_layers") == "pooler":
            self._load_poolers(models_dir, manifest, d)

    def _load_poolers(self, models_dir: Path, manifest: dict[str, Any], d: int) -> None:
        """``--head-layers pooler``: every model's pooler dense layer (the global one from ``global/``)."""
        spec = manifest.get("pooler") or {}
        if not isinstance(spec, dict) or spec.get("activation") not in POOLER_ACTIVATIONS or not isinstance(spec.get("name"), str):
            raise ScpoError(f"{models_dir}/manifest.json: head_layers pooler without a pooler name and known activation "
                            f"({', '.join(POOLER_ACTIVATIONS)}): {spec!r}")
        self.pooler = PoolerSpec(spec["name"], spec["activation"])
        try:
            dense = self.model.get_submodule(self.pooler.name)
        except AttributeError:
            raise ScpoError(f"{models_dir}/global: no pooler layer {self.pooler.name!r}") from None
        if not isinstance(dense, nn.Linear) or dense.out_features != d:
            raise ScpoError(f"{models_dir}/global: {self.pooler.name!r} is not a linear layer of {d} outputs")
        self.pooler_module = dense
        self.poolers[GLOBAL] = (dense.weight.detach().double().cpu().numpy(),
                                dense.bias.detach().double().cpu().numpy() if dense.bias is not None else np.zeros(d))
        pp = models_dir / "poolers.safetensors"
        if not pp.is_file():
            raise ScpoError(f"{models_dir}: head_layers pooler but no poolers.safetensors")
        with safe_open(str(pp), framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open has no iteration protocol
                t = f.get_tensor(k).double().numpy()
                if t.shape != (dense.out_features, dense.in_features + 1):
                    raise ScpoError(f"{pp}: {k!r} has shape {list(t.shape)}, not "
                                    f"{[dense.out_features, dense.in_features + 1]} (the pooler's weight and bias)")
                self.poolers[k] = (t[:, :-1], t[:, -1])
        missing = [k for k in self.weights if k not in self.poolers]
        if missing:
            raise ScpoError(f"{pp}: no pooler for {missing}")

    def pooler_of(self, model_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``--head-layers pooler``: the (weight [h, h], bias [h]) of a model's pooler dense layer; None otherwise."""
        return self.poolers.get(model_id) if self.pooler is not None else None

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
        tokens = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        module = self.pooler_module if self.pooler is not None else None  # pooler mode: the pooler's inputs
        f64 = self._forward(self.model, tokens, np.arange(len(union)), "features", module).astype(np.float64)
        pos = {int(u): j for j, u in enumerate(union)}
        for m, rows in need.items():
            w, b = self.head(m)
            sel = np.array([pos[int(i)] for i in rows], dtype=np.int64)
            if self.pooler is not None:
                pw, pb = self.poolers[m]
                out[m][np.asarray(rows, dtype=np.int64)] = PoolerHead(pw, pb, w).rewards(f64[sel], self.pooler.activation, b)
            else:
                out[m][np.asarray(rows, dtype=np.int64)] = f64[sel] @ w + b
        return out


class MultiBackend(Backend):
    """``lora`` and ``full``: one forward pass per model over the texts that model must score."""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size)
        self.method = method
        self.groups = list(manifest.get("groups", []))

    def model_ids(self) -> list[str]:
        return [GLOBAL] + [f"{g}/{self.method}" for g in self.groups]

    def _run(self, model_id: str, tokens: Tokens, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def raw(self, prompts: list[str], responses: list[str], need: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(prompts)
        out = {m: np.full(n, np.nan) for m in need}
        union = np.unique(np.concatenate([np.asarray(v, dtype=np.int64) for v in need.values()])) if need else np.zeros(0, np.int64)
        if len(union) == 0:
            return out
        tokens = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        pos = {int(u): j for j, u in enumerate(union)}
        for m, rows in need.items():
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) == 0:
                continue
            local = np.array([pos[int(i)] for i in rows], dtype=np.int64)
            out[m][rows] = self._run(m, tokens, local)
        return out


class LoraBackend(MultiBackend):
    """LoRA mode: one base model with every group's adapter attached; groups switch adapters."""

    mode = "lora"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size, method)
        from peft import PeftModel  # PEFT loads only for LoRA artifacts

        base = load_checkpoint(models_dir / "global", device)
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(base)[0]
        self.adapter_names: dict[str, str] = {}
        model = None
        for k, g in enumerate(self.groups):
            path = group_dir(models_dir, manifest, g, MODE_FOLDERS["lora"])
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

    def _run(self, model_id: str, tokens: Tokens, rows: np.ndarray) -> np.ndarray:
        if model_id == GLOBAL:
            if hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    return self._forward(self.model, tokens, rows, "rewards")
            return self._forward(self.model, tokens, rows, "rewards")
        self.model.set_adapter(self.adapter_names[model_id])
        return self._forward(self.model, tokens, rows, "rewards")


class FullBackend(MultiBackend):
    """Full mode: a checkpoint per group (separate models by nature), each loaded on first use."""

    mode = "full"

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int, method: str):
        super().__init__(models_dir, manifest, device, batch_size, method)
        self.paths = {GLOBAL: models_dir / "global"}
        for g in self.groups:
            self.paths[f"{g}/{method}"] = group_dir(models_dir, manifest, g, MODE_FOLDERS["full"])
        self.loaded: dict[str, nn.Module] = {}
        if not self.score_layer_name:
            self.score_layer_name = find_score_layer(self.module_for(GLOBAL))[0]

    def modules(self) -> list[nn.Module]:
        return list(self.loaded.values())

    def module_for(self, model_id: str) -> nn.Module:
        if model_id not in self.loaded:
            self.loaded[model_id] = load_checkpoint(self.paths[model_id], self.device)
        return self.loaded[model_id]

    def _run(self, model_id: str, tokens: Tokens, rows: np.ndarray) -> np.ndarray:
        return self._forward(self.module_for(model_id), tokens, rows, "rewards")



class ExportBackend(Backend):
    """A single checkpoint written by :func:`scpo.export.export_checkpoint`: one network, the steered
    reward baked in. Every model id scores with that one network (the calibration is in its score layer)."""

    mode = "export"
    tokenizer_subdir = ""

    def __init__(self, models_dir: Path, manifest: dict[str, Any], device: torch.device, batch_size: int):
        super().__init__(models_dir, manifest, device, batch_size)
        self.model = load_checkpoint(models_dir, device)
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
        tokens = self.encode([prompts[i] for i in union], [responses[i] for i in union])
        full = np.full(n, np.nan)
        full[union] = self._forward(self.model, tokens, np.arange(len(union)), "rewards")
        for m, rows in need.items():
            rows = np.asarray(rows, dtype=np.int64)
            out[m][rows] = full[rows]
        return out


BACKENDS: dict[str, type[Backend]] = {"head": HeadBackend, "lora": LoraBackend, "full": FullBackend}
"""The model holder of each artifact mode."""
