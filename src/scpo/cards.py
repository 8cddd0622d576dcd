"""Model-card metadata, written with ``huggingface_hub.ModelCard`` / ``ModelCardData``.

Every card scpo writes (the steerable artifact's README, each group's card, a LoRA adapter's folder,
the single-checkpoint export) gets the same metadata block: ``base_model`` (the global model's
name as the user gave it, when it is a Hub id; never a local path), ``datasets`` (the data set's
Hub id, or the file's name for one's own data; none for the synthetic benchmark),
``library_name: transformers``, tags, and a ``model-index`` with each group's test accuracy
(:func:`eval_results`; the 95% CI is in the card's text, the model index has no field for it).
The body is markdown; :func:`render` joins them as the Hub reads them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

__all__ = ["KNOWN_DATASETS", "PACKAGED_MODEL", "base_model_id", "card_data", "dataset_id", "eval_results", "group_card", "pct",
           "render"]

PACKAGED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hub id of the encoder scpo packages (``global_model: packaged``)."""

KNOWN_DATASETS = {"goqa": "Anthropic/llm_global_opinions", "prism": "HannahRoseKirk/prism-alignment"}
"""The Hub ids of the public data sets scpo loads by name (``--dataset``)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def base_model_id(name: Any) -> str | None:
    """The Hub id of the global model ``name``, or None when it is not one (a local folder, nothing)."""
    if not isinstance(name, str) or not name:
        return None
    if name == "packaged":
        return PACKAGED_MODEL
    if name.startswith((".", "/", "~")) or Path(name).exists() or not _HUB_ID.match(name) or "/" not in name:
        return None
    return name


def dataset_id(data: dict[str, Any]) -> str | None:
    """The data set's Hub id (``goqa``, ``prism``, a Hub data set), or its file's name; None for synthetic data."""
    if not data or data.get("synthetic"):
        return None
    prov = data.get("provenance") or {}
    if isinstance(prov.get("hub_id"), str):
        return prov["hub_id"]
    name = data.get("name")
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name]
    if isinstance(prov.get("file"), str):
        return Path(prov["file"]).name
    return name if isinstance(name, str) and name else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def eval_results(manifest: dict[str, Any], models: list[tuple[str, str]]) -> list[Any]:
    """``EvalResult`` per (group, model) in ``models`` (model: a method, e.g. ``scpo`` or ``global``) whose
    accuracy on the group's test pairs the manifest holds."""
    from huggingface_hub import EvalResult

    data = manifest.get("data") or {}
    acc = manifest.get("accuracy") or {}
    ds = dataset_id(data) or str(data.get("name") or "preference pairs")
    out = []
    for g, m in models:
        e = (acc.get(g) or {}).get(m) or {}
        if not _finite(e.get("all")):
            continue
        out.append(EvalResult(
            task_type="text-classification", task_name="Reward modeling (chosen response scored above rejected)",
            dataset_type=ds, dataset_name=f"{data.get('name') or ds}: {g} test pairs", dataset_split="test",
            dataset_config=g, metric_type="accuracy", metric_value=round(float(e["all"]), 6),
            metric_name=f"pairwise accuracy ({m} model, {g})"))
    return out


def card_data(manifest: dict[str, Any], *, model_name: str, models: list[tuple[str, str]],
              tags: list[str] | None = None, **extra: Any) -> Any:
    """``ModelCardData`` of a card: base model, data set, library, tags, model index of ``models``."""
    from huggingface_hub import ModelCardData

    data = manifest.get("data") or {}
    gm = manifest.get("global_model") or {}
    base = base_model_id(gm.get("model"))
    ds = dataset_id(data)
    evals = eval_results(manifest, models)
    all_tags = ["reward-model", "scpo", *(tags or [])]
    if data.get("synthetic"):
        all_tags.append("synthetic-data")
    mode = manifest.get("mode")
    if mode:
        all_tags.append(f"scpo-{mode}")
    kw: dict[str, Any] = {"library_name": "transformers", "tags": list(dict.fromkeys(all_tags)), "license": None}
    if base:
        kw["base_model"] = base
    if ds:
        kw["datasets"] = [ds]
    if evals:
        kw["model_name"] = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-")  # the model index's name: no markup
        kw["eval_results"] = evals
    kw.update(extra)
    return ModelCardData(**{k: v for k, v in kw.items() if v is not None})


def render(data: Any, body: str) -> str:
    """The card's text: the metadata block, then the markdown body (``ModelCard``'s own format)."""
    from huggingface_hub import ModelCard

    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}")
    return str(card).rstrip("\n") + "\n"


def pct(x: Any) -> str:
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
    meta = card_data(manifest, model_name=f"scpo-{group}-{method}", models=[(group, method)],
                     tags=["steerable"])
    lines = [f"# SCPO reward model for `{group}`", ""]
    if data.get("synthetic"):
        lines += ["> **Synthetic data.** Trained and evaluated on scpo's embedded synthetic benchmark (invented "
                  "groups, known ground truth), not on real people's preferences.", ""]
    lines += [
        "## How it was trained", "",
        f"* Global model: `{gm.get('model', '?')}`" + (f" (`{PACKAGED_MODEL}`)" if gm.get("model") == "packaged" else "")
        + f" ({gm.get('trained_on', '')}).",
        f"* Group model: mode `{mode}` ("
        + ("the pooler's dense layer and the score layer over the frozen global encoder"
           if mode == "head" and manifest.get("head_layers") == "pooler" else
           {"head": "the score layer over the frozen global encoder", "lora": "a LoRA adapter over the global model",
            "full": "full fine-tuning of the global model"}.get(str(mode), "?"))
        + f"), method `{method}`.",
        f"* SCPO selection: keep a training pair where sigmoid(Δ) < τ = {manifest.get('tau', '?')}, weight it "
        f"w = min(exp(Δ/β), 1) with β = {manifest.get('beta', '?')} (Δ: the global model's margin).",
    ]
    if sel:
        lines.append(f"* Training pairs of the group: {sel.get('train_pairs')}, kept by the filter: {sel.get('kept')} "
                     f"({pct(sel.get('kept_share'))}), mean weight of the kept: "
                     + (f"{sel['mean_weight_kept']:.3f}" if isinstance(sel.get("mean_weight_kept"), (int, float)) else "–") + ".")
    if choices:
        c0 = next(iter(choices.values()))
        if c0.get("learning_rate") is None:  # head mode solved to convergence: the pull is the only choice
            lines.append(f"* Chosen on validation folds: pull {c0.get('pull')} (layer solved to convergence; "
                         f"validation accuracy {pct(c0.get('val_accuracy'))}).")
        else:
            lines.append(f"* Chosen on validation folds: learning rate {c0.get('learning_rate')}, pull {c0.get('pull')}, "
                         f"steps {c0.get('steps')} (validation accuracy {pct(c0.get('val_accuracy'))}).")
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
                cis = f"{pct(ci[0])} – {pct(ci[1])}" if ci[0] is not None else "–"
                lines.append(f"| {m} | {pct(e.get('all'))} | {cis} | {pct(e.get('distinctive'))} |")
        lines += ["", "`distinctive`: the test pairs the global model ranks wrongly (0% for it by construction)."]
    else:
        lines.append("No evaluation results were found with these models (no results.json).")
    lines += ["", "## Calibration", ""]
    if cal:
        lines.append(f"On the {manifest['calibration'].get('n')} reference texts this model's raw rewards have mean "
                     f"{cal['mean']:.4g} and std {cal['std']:.4g}; scpo reports `(r - mean) × {cal['scale']:.4g}`, the "
                     "common scale shared with the global model, so strengths and mixtures blend comparable rewards.")
    lines += ["", "## Use", "", "`ARTIFACT_DIR`: the artifact's folder (the one with `manifest.json`).", "",
              "```python", "from scpo.steer import SteerableRewardModel", "",
              'ARTIFACT_DIR = "."', "rm = SteerableRewardModel.from_pretrained(ARTIFACT_DIR)",
              f"print(rm.score([\"How should I greet a new neighbour?\"], [\"Knock, smile and introduce yourself.\"], "
              f"group={group!r}, strength=1.0))", "```", "",
              f"Plain transformers checkpoint for RLHF trainers: `scpo export ARTIFACT_DIR --group '{group}' --out DIR`. "
              "Server: `scpo serve --model ARTIFACT_DIR`."]
    return render(meta, "\n".join(lines) + "\n")
