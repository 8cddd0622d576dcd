"""The steerable-model artifact: its on-disk format, written by a run and read by steering, export, serving.

A finished run's ``models/`` directory *is* the artifact (``scpo export RUN_DIR --out DIR`` copies
it elsewhere and completes it). Its layout, written by :func:`save_models` and completed by
:func:`scpo.export.export_artifact`:

* ``global/`` — the global reward model, a plain transformers checkpoint with its tokenizer;
* the group models, by ``mode``:

  - ``head``: ``heads.safetensors``, keys ``<group>/<method>`` -> score-layer weight ``[d]`` over
    the global model's encoder (the bias, shared, in the file's metadata); with
    ``--head-layers pooler`` (``manifest["head_layers"] == "pooler"``, ``manifest["pooler"]`` naming
    the dense layer and its activation) also ``poolers.safetensors``, the same keys ->
    ``[h, h + 1]``: each model's pooler dense weight with its bias as the last column;
  - ``lora``: ``adapters/<folder>/``, one PEFT adapter per group over ``global/``;
  - ``full``: ``groups/<folder>/``, one transformers checkpoint per group;

  where ``<folder>`` is the group's safe encoding (:func:`scpo.names.path_component`), listed in
  ``manifest["paths"]``;
* ``reference.jsonl`` — up to 512 ``{prompt, response}`` texts of the run's data;
* ``manifest.json`` — mode, groups, methods, score layer, input formatter, global model and, once
  exported: τ, β, data provenance, per-group accuracies and the **calibration**;
* ``cards/<folder>/README.md`` — a model card per group (for ``lora``/``full`` also the group
  directory's ``README.md``) and ``README.md`` for the whole artifact.

**Calibration.** Bradley–Terry rewards are defined only up to a shift (and each model has its own
spread), so blending models needs a common scale. Every model ``m`` is put on one: on the reference
texts its raw rewards have mean ``μ_m`` and standard deviation ``σ_m``; the calibrated reward is
``z_m(x) = (r_m(x) − μ_m) · s_m`` with ``s_m = σ_global / σ_m``. So every model is centred on the
reference set and shares the global model's spread; the global model is only shifted (its
Bradley–Terry probabilities are unchanged). ``export_artifact`` stores ``μ, σ, s`` in the manifest;
loading an artifact without them (a run's ``models/`` before export) computes them the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from .cards import group_card
from .errors import InputError, ScpoError
from .hashing import files_fingerprint
from .model import PoolerHead
from .names import is_inside, path_component, rmtree_inside

if TYPE_CHECKING:  # for annotations only: the writer's caller holds an experiment, readers never do
    from .experiment import Experiment

__all__ = [
    "ARTIFACT_VERSION",
    "EXPORT_SPEC",
    "GLOBAL",
    "MODE_FOLDERS",
    "Calibration",
    "calibration_entry",
    "calibration_valid",
    "compute_calibration",
    "export_manifest",
    "group_dir",
    "models_fingerprint",
    "read_json",
    "read_reference",
    "resolve_artifact",
    "run_info",
    "run_root",
    "safetensors_bytes",
    "save_models",
]

MODE_FOLDERS = {"lora": "adapters", "full": "groups"}
"""Where each Trainer mode keeps its group models (head mode keeps them in ``heads.safetensors``)."""

EXPORT_SPEC = "scpo_export.json"
"""What :func:`scpo.export.export_checkpoint` writes beside a single checkpoint: group, strength,
calibration, formatter. A folder holding it (and no manifest) is a one-group model."""


ARTIFACT_VERSION = 1
"""Version of the manifest fields :func:`export_artifact` adds."""


DEFAULT_METHOD = "scpo"


GLOBAL = "global"
"""Model id of the global model (group models are ``<group>/<method>``)."""


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
                    "give a finished run directory, its models/ directory, an exported artifact or a "
                    "`scpo export --group` checkpoint")


def read_json(path: Path) -> Any:
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


def run_root(path: str | Path, models_dir: Path) -> Path | None:
    """The run directory (holding ``results.json``) the models came from, if at hand."""
    if (Path(path) / "results.json").is_file():
        return Path(path)
    if models_dir.name == "models" and (models_dir.parent / "results.json").is_file():
        return models_dir.parent
    return None


def run_info(run_dir: Path) -> dict[str, Any]:
    """τ, β, data provenance and per-group accuracies of a finished run, for the manifest."""
    cfg_path = run_dir / "config.yaml"
    cfg = (yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}) if cfg_path.is_file() else None
    res_path = run_dir / "results.json"
    return run_info_of(cfg, read_json(res_path) if res_path.is_file() else None)


def run_info_of(cfg: dict[str, Any] | None, res: dict[str, Any] | None) -> dict[str, Any]:
    """:func:`run_info` from a config (as ``config.yaml`` holds it) and results (as ``results.json``)."""
    info: dict[str, Any] = {}
    if cfg is not None:
        sel = cfg.get("select", {})
        info["tau"], info["beta"] = sel.get("tau"), sel.get("beta")
        info["train_config"] = cfg.get("train", {})
    if res is not None:
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


def export_manifest(path: Path, spec: Any) -> dict[str, Any]:
    """The manifest of a single exported checkpoint, from its ``scpo_export.json``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("formatter"), dict):
        raise ScpoError(f"{path / EXPORT_SPEC}: not an scpo export (no formatter)")
    group = spec.get("group")
    return {"mode": "export", "groups": [group] if isinstance(group, str) else [], "formatter": spec["formatter"],
            "group_method": spec.get("method") or DEFAULT_METHOD, "export": spec}


def models_fingerprint(models_dir: str | Path) -> str:
    """Cheap fingerprint of an artifact's model files (not its manifest, cards or reference set).

    :func:`scpo.hashing.files_fingerprint` of the folder; a stored calibration is used only while it matches.
    """
    return files_fingerprint(models_dir, skip=lambda rel: rel.parts[0] == "cards" or rel.name in _NOT_WEIGHTS
                             or any(p.startswith(".") for p in rel.parts))


def group_dir(models_dir: Path, manifest: dict[str, Any], group: str, sub: str) -> Path:
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


def calibration_valid(stored: dict[str, Any], ref_sha: str, models_dir: Path, ids: Sequence[str], scale: bool) -> bool:
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


def save_models(run_dir: Path, exp: Experiment, models: dict, results: dict[str, Any]) -> None:
    """Write ``RUN_DIR/models``, the artifact: the global model (a plain transformers checkpoint),
    every group's model (head: ``heads.safetensors``; lora/full: the jobs' saved folders, hard-linked),
    the reference texts and the manifest (with the serving calibration in head mode).

    Written under ``RUN_DIR/.models.tmp`` and renamed into place.
    """
    mdir = run_dir / "models"
    tmp = run_dir / ".models.tmp"
    rmtree_inside(tmp, run_dir)
    try:
        (tmp / "global").mkdir(parents=True)
        exp.rm.model.save_pretrained(tmp / "global")
        exp.rm.tokenizer.save_pretrained(tmp / "global")
        pooled = results["mode"] == "head" and exp.pooler_inputs is not None
        if results["mode"] == "head":
            seed = results["seeds"][0]
            heads, poolers = {}, {}
            for (g, m, s), w in models.items():
                if s == seed and m != "global":
                    if isinstance(w, PoolerHead):
                        poolers[f"{g}/{m}"] = torch.from_numpy(np.concatenate(
                            [np.asarray(w.weight, np.float32), np.asarray(w.bias, np.float32)[:, None]], axis=1)).contiguous()
                        w = w.score
                    heads[f"{g}/{m}"] = torch.as_tensor(np.asarray(w, dtype=np.float32)).contiguous()
            (tmp / "heads.safetensors").write_bytes(
                safetensors_bytes(heads, {"seed": str(seed), "bias": str(float(exp.rm.head_params()[1]))}))
            if pooled:
                (tmp / "poolers.safetensors").write_bytes(
                    safetensors_bytes(poolers, {"seed": str(seed), **exp.rm.pooler_spec.to_dict()}))
        else:
            for name, path in models.items():
                if not is_inside(tmp / name, tmp) or not is_inside(path, run_dir):
                    raise ScpoError(f"{run_dir}: refusing to save model {name!r} from {path}: outside the run directory")
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                # hard links (a copy across file systems): the job records keep pointing at real files
                shutil.copytree(str(path), str(tmp / name), copy_function=_link_or_copy)
        # a reference set of texts on which serving centres and scales every model's rewards
        rng = np.random.default_rng(0)
        n = len(exp.text_index)
        pick = np.sort(rng.choice(n, size=min(512, n), replace=False))
        with open(tmp / "reference.jsonl", "w", encoding="utf-8") as f:
            for prompt, response in zip(*exp.texts(pick)):
                f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
        calibration = None
        if results["mode"] == "head":
            # the reference texts' features are in memory: store the serving calibration now
            feats = exp.features[pick].astype(np.float64)
            bias = float(exp.rm.head_params()[1])
            raw = {"global": feats @ exp.rm.head_params()[0].numpy().astype(np.float64) + bias}
            for key, w in heads.items():
                if pooled:  # each model through its own pooler, from the pooler's inputs
                    pw = poolers[key].numpy()
                    raw[key] = PoolerHead(pw[:, :-1], pw[:, -1], w.numpy()).rewards(
                        exp.pooler_inputs[pick], exp.rm.pooler_spec.activation, bias)
                else:
                    raw[key] = feats @ w.numpy().astype(np.float64) + bias
            calibration = raw
        manifest = {
            "mode": results["mode"], "groups": results["data"]["groups"], "methods": results["methods"],
            "score_layer": exp.rm.score_layer_name, "formatter": exp.rm.formatter.to_dict(),
            "global_model": results["global_model"], "run_fingerprint": results.get("run_fingerprint"),
        }
        if pooled:
            manifest["head_layers"] = "pooler"
            manifest["pooler"] = exp.rm.pooler_spec.to_dict()
        if results["mode"] != "head":  # each group's folder, named by its safe encoding, never by the raw name
            sub = MODE_FOLDERS[results["mode"]]
            manifest["paths"] = {g: f"{sub}/{path_component(g)}" for g in results["data"]["groups"]
                                 if f"{sub}/{path_component(g)}" in models}
        if calibration is not None:
            manifest["calibration"] = calibration_entry(calibration, tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if results["mode"] != "head":  # a card of its own in each group's folder, not PEFT's blank template
            described = {**manifest, **run_info_of(yaml.safe_load(exp.cfg.to_yaml()), results)}
            for g, rel in manifest["paths"].items():
                (tmp / rel / "README.md").unlink(missing_ok=True)  # a hard link into the job's saved folder
                (tmp / rel / "README.md").write_text(group_card(g, described, "scpo"), encoding="utf-8")
        rmtree_inside(mdir, run_dir)
        tmp.rename(mdir)
    except BaseException:  # a full disk, a kill by exception: no half-written .models.tmp/ stays behind
        rmtree_inside(tmp, run_dir)
        raise


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file of ``tensors`` with the same bytes for the same input, every time.

    ``safetensors.torch.save_file`` writes the metadata in hash-map order, which changes from one
    process to the next; here the header is JSON with sorted keys (metadata and tensors), the tensors
    follow in name order, little-endian, and the header is padded with spaces to 8 bytes, as the
    format asks. ``safetensors`` reads it like any other.
    """
    dtypes = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16"}
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        arr = t.numpy()
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
