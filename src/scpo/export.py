"""Export: one group's (or a blend's) reward model as a plain transformers checkpoint, the whole
artifact completed with its calibration, and the model cards.

* :func:`export_checkpoint` -- a plain ``AutoModelForSequenceClassification`` checkpoint whose
  rewards equal :meth:`scpo.steer.SteerableRewardModel.score` for that group and strength (LoRA
  merged, calibration baked into the score layer).
* :func:`export_artifact` -- a run's ``models/`` completed as a steerable artifact: the stored
  calibration, τ, β, provenance and accuracies in the manifest, a model card per group.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from .artifact import ARTIFACT_VERSION, GLOBAL, MODE_FOLDERS, group_dir, read_json, resolve_artifact, run_info, run_root
from .backends import load_checkpoint
from .cards import card_data, group_card, render
from .cards import pct as _pct
from .errors import ScpoError
from .forward import score_module
from .model import find_score_layer
from .names import path_component
from .rundir import atomic_write_json, atomic_write_text, run_fingerprint
from .steer import GroupSpec, SteerableRewardModel, describe_steering

__all__ = ["check_parts_agree", "export_artifact", "export_checkpoint", "group_card", "input_format_effect",
           "reward_function", "trl_inputs"]


def _affine_score_layer(model: nn.Module, name: str | None, weight: np.ndarray, bias: float) -> float:
    """Set the score layer to (weight, bias); returns the part of the bias that could not be stored."""
    layer = score_module(model, name)
    if not isinstance(layer, nn.Linear):
        layer = find_score_layer(model)[1]
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype).reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.fill_(float(bias))
            return 0.0
    return float(bias)


def _trainer_tokenizer(tokenizer: Any, formatter: Any, net: nn.Module) -> tuple[Any, dict[str, Any]]:
    """A copy of the tokenizer set up for TRL's trainers: EOS and pad tokens, ``model_max_length`` equal to
    the formatter's limit, truncation from the left (the response is kept), right padding."""
    tok = copy.deepcopy(tokenizer)
    notes: dict[str, Any] = {}
    if tok.eos_token is None:
        eos = tok.sep_token or tok.pad_token
        if eos is None:
            raise ScpoError("the tokenizer has no EOS, SEP or pad token: TRL's trainers need an EOS token")
        tok.eos_token = eos
        notes["eos_token_from"] = "sep_token" if tok.sep_token else "pad_token"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
        notes["pad_token_from"] = "eos_token"
    tok.model_max_length = int(formatter.max_length)
    tok.truncation_side = "left"
    tok.padding_side = "right"
    # saved with the tokenizer only through its init kwargs
    tok.init_kwargs.update(truncation_side="left", padding_side="right", model_max_length=tok.model_max_length)
    notes["max_positions"] = getattr(net.config, "max_position_embeddings", None)
    notes.update({"eos_token": tok.eos_token, "pad_token": tok.pad_token, "model_max_length": tok.model_max_length,
                  "truncation_side": "left", "padding_side": "right"})
    text_cfg = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    text_cfg.pad_token_id = tok.pad_token_id
    if getattr(text_cfg, "eos_token_id", None) is None:
        text_cfg.eos_token_id = tok.eos_token_id
    return tok, notes


def _value_head_prefix(net: nn.Module, score_name: str | None) -> str | None:
    """OpenRLHF's ``value_head_prefix`` when its value-head loader fits the model, else None.

    OpenRLHF rebuilds a reward model as ``AutoModel``'s base network under ``base_model_prefix`` plus a bias-free
    ``nn.Linear(hidden_size, 1)`` named ``value_head_prefix`` read at the last attended token. That is what a
    decoder's ``*ForSequenceClassification`` is (``score`` on top of ``model``/``transformer``). An encoder's head
    (BERT's pooler + ``classifier``, RoBERTa's two-layer ``classifier``) is not: None.
    """
    name = score_name or find_score_layer(net)[0]
    layer = score_module(net, name)
    hidden = getattr(net.config, "hidden_size", None)
    if "." in name or not isinstance(layer, nn.Linear) or layer.in_features != hidden:
        return None
    prefix = getattr(net, "base_model_prefix", "")
    if not prefix or not hasattr(net, prefix) or hasattr(getattr(net, prefix), "pooler") or getattr(net.config, "is_encoder_decoder", False):
        return None
    return name if name == "score" else None


def _batched_rewards(net: nn.Module, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Rewards of token id lists, right-padded batches, attention mask only (token type ids 0), as TRL feeds them."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            n = max(len(x) for x in chunk)
            inp = torch.full((len(chunk), n), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), n), dtype=torch.long)
            for j, x in enumerate(chunk):
                inp[j, :len(x)] = torch.tensor(x)
                mask[j, :len(x)] = 1
            out.append(net(input_ids=inp, attention_mask=mask).logits[:, 0].double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def trl_inputs(tokenizer: Any, prompts: list[str], responses: list[str], trainer: str,
               max_positions: int | None = None) -> list[list[int]]:
    """The token ids TRL 1.16 builds for (prompt, response) from string (standard) data.

    ``trainer="reward"``: ``RewardTrainer`` -- ``tokenizer(prompt + response + eos)``, special tokens added
    (BERT: ``[CLS] prompt response [SEP] [SEP]``; token type ids all 0). ``trainer="grpo"``: ``GRPOTrainer`` with
    the model as a reward function -- ``tokenizer(prompt + completion, add_special_tokens=False)``.
    Conversational data with a chat template give the template's text in both (scpo's ``chat`` input). Inputs
    longer than ``max_positions`` keep their last tokens (TRL would drop or crash on them).
    """
    if trainer == "reward":
        eos = tokenizer.eos_token or ""
        texts = [p + r if (p + r).endswith(eos) else p + r + eos for p, r in zip(prompts, responses)]
        ids = tokenizer(texts, truncation=False)["input_ids"]
    elif trainer == "grpo":
        ids = tokenizer([p + r for p, r in zip(prompts, responses)], add_special_tokens=False, truncation=False)["input_ids"]
    else:
        raise ValueError(f"trainer must be 'reward' or 'grpo', got {trainer!r}")
    if max_positions:
        ids = [x[-max_positions:] for x in ids]
    return ids


def input_format_effect(srm: SteerableRewardModel, path: str | Path, prompts: list[str], chosen: list[str],
                        rejected: list[str], group: GroupSpec = None, strength: float = 1.0) -> dict[str, dict[str, float]]:
    """Pairwise accuracy and Pearson r (against scpo's rewards) of an exported checkpoint's rewards as
    TRL's trainers feed it (:func:`trl_inputs`), beside scpo's own input; measured on the pairs given."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    net = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    prompts2, responses = list(prompts) + list(prompts), list(chosen) + list(rejected)
    n = len(chosen)
    ref = srm.score(prompts2, responses, group=group, strength=strength)
    positions = getattr(net.config, "max_position_embeddings", None)
    out = {"scpo": {"accuracy": float(np.mean(ref[:n] > ref[n:])), "pearson_r": 1.0, "pairs": n}}
    for trainer, label in (("reward", "trl_reward_trainer"), ("grpo", "trl_grpo")):
        r = _batched_rewards(net, trl_inputs(tok, prompts2, responses, trainer, positions), tok.pad_token_id)
        out[label] = {"accuracy": float(np.mean(r[:n] > r[n:])), "pearson_r": float(np.corrcoef(r, ref)[0, 1]), "pairs": n}
    return out


def _message_text(x: Any, role: str) -> str:
    """A TRL prompt or completion as text: a string, or a message list's last ``role`` turn."""
    if isinstance(x, str):
        return x
    turns = [m.get("content", "") for m in x if m.get("role") == role] or [m.get("content", "") for m in x]
    return str(turns[-1]) if turns else ""


def reward_function(model: SteerableRewardModel | str | Path, group: GroupSpec = None, strength: float = 1.0):
    """A TRL reward function (``GRPOTrainer(reward_funcs=[reward_function(PATH, group)])``) giving scpo's rewards.

    It scores through :meth:`SteerableRewardModel.score`: scpo's own input format and truncation (the response
    kept), so completions of any length are scored as scpo scores them. Conversational prompts and completions
    (message lists) are scored as (last user turn, last assistant turn).
    """
    srm = model if isinstance(model, SteerableRewardModel) else SteerableRewardModel.from_pretrained(model)

    def scpo_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        p = [_message_text(x, "user") for x in prompts]
        c = [_message_text(x, "assistant") for x in completions]
        return [float(r) for r in srm.score(p, c, group=group, strength=strength)]

    return scpo_reward


def export_checkpoint(model: SteerableRewardModel | str | Path, out_dir: str | Path, group: GroupSpec = None,
                      strength: float = 1.0, eval_pairs: tuple[list[str], list[str], list[str]] | None = None) -> Path:
    """Write the steered reward as a plain transformers checkpoint (LoRA merged, calibration baked in).

    The result loads with ``AutoModelForSequenceClassification.from_pretrained(out_dir)`` and
    ``AutoTokenizer.from_pretrained(out_dir)`` and outputs the same rewards as
    ``model.score(..., group, strength)`` (text-pair models: ``tokenizer(prompt, response)``).
    Head mode exports any strength and mixture (they are linear in the score layer), except with
    ``--head-layers pooler``, where every model has its own pooler: there, as in lora/full, export
    one model (its pooler and score layer written into the checkpoint); lora/full
    export one model (``strength`` 0 or 1 and one group): a blend of separate networks is not one
    network. Score layers without a bias (Llama's ``score``) cannot store the centring offset: it
    is recorded in ``scpo_export.json`` as ``reward_offset`` and the checkpoint's rewards are the
    API's minus it.

    The tokenizer is saved set up for TRL's trainers (EOS -- BERT has none: its ``[SEP]`` --, pad,
    ``model_max_length`` = the formatter's limit, left truncation); decoder checkpoints whose score
    layer is OpenRLHF's value head also get ``value_head_prefix``, ``mean`` and ``std`` in
    ``config.json``. ``eval_pairs`` (prompts, chosen, rejected): measure :func:`input_format_effect`
    on them and put the table in the card.
    """
    srm = model if isinstance(model, SteerableRewardModel) else SteerableRewardModel.from_pretrained(model, device="cpu")
    if srm.mode == "export":
        raise ScpoError(f"{srm.path}: already a single exported checkpoint; export from the artifact it came from")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ScpoError(f"{out}: exists and is not empty")
    coef = srm.coefficients(group, strength)
    src = srm.path
    name = srm.score_layer_name
    if srm.mode == "head" and srm.pooler(GLOBAL) is not None:
        # --head-layers pooler: each model has its own pooler, so only one model is one network
        if len(coef) != 1:
            raise ScpoError("head mode with --head-layers pooler: every model has its own pooler, so a blend "
                            f"({', '.join(coef)}) is not one checkpoint; export strength 0 (global) or 1 with one group")
        (m,) = coef
        net = load_checkpoint(src / "global", torch.device("cpu"))
        pw, pb = srm.pooler(m)
        dense = net.get_submodule(srm.manifest["pooler"]["name"])
        with torch.no_grad():
            dense.weight.copy_(torch.as_tensor(pw, dtype=dense.weight.dtype))
            dense.bias.copy_(torch.as_tensor(pb, dtype=dense.bias.dtype))
        cal = srm.calibration[m]
        wm, bm = srm.head(m)
        w = cal.scale * wm
        b = cal.scale * (bm - cal.mean)
    elif srm.mode == "head":
        net = load_checkpoint(src / "global", torch.device("cpu"))
        w = np.zeros_like(srm.head(GLOBAL)[0])
        b = 0.0
        for m, c in coef.items():
            cal = srm.calibration[m]
            wm, bm = srm.head(m)
            w = w + c * cal.scale * wm
            b += c * cal.scale * (bm - cal.mean)
    else:
        if len(coef) != 1:
            raise ScpoError(f"{srm.mode} mode: a blend of several networks ({', '.join(coef)}) is not one checkpoint; "
                            "export strength 0 (global) or 1 with one group")
        (m,) = coef
        if m == GLOBAL:
            net = load_checkpoint(src / "global", torch.device("cpu"))
        elif srm.mode == "full":
            net = load_checkpoint(group_dir(src, srm.manifest, m.rsplit("/", 1)[0], MODE_FOLDERS["full"]), torch.device("cpu"))
        else:
            from peft import PeftModel  # PEFT loads only for LoRA artifacts

            base = load_checkpoint(src / "global", torch.device("cpu"))
            path = group_dir(src, srm.manifest, m.rsplit("/", 1)[0], MODE_FOLDERS["lora"])
            net = PeftModel.from_pretrained(base, str(path)).merge_and_unload().eval()
        layer = score_module(net, name)
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
    tok, tok_notes = _trainer_tokenizer(srm.tokenizer, srm.formatter, net)
    head_prefix = _value_head_prefix(net, name)
    openrlhf: dict[str, Any] | None = None
    if head_prefix is not None:
        # OpenRLHF's value head has no bias: what it cannot load (the offset, any bias) goes into config.mean,
        # which OpenRLHF subtracts with --normalize_reward ((reward - mean) / std)
        layer = score_module(net, name)
        bias = float(layer.bias.detach().reshape(())) if getattr(layer, "bias", None) is not None else 0.0
        openrlhf = {"value_head_prefix": head_prefix, "mean": -(offset + bias), "std": 1.0}
        net.config.value_head_prefix = head_prefix
        net.config.mean, net.config.std = openrlhf["mean"], openrlhf["std"]
    net.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    spec = {"group": dict(group) if isinstance(group, Mapping) else group, "strength": float(strength),
            "method": srm.method, "mode": srm.mode, "coefficients": coef, "reward_offset": offset,
            "formatter": srm.formatter.to_dict(), "source": str(src),
            "calibration": {m: srm.calibration[m].to_dict() for m in coef}, "calibration_info": srm.calibration_info,
            "tokenizer": tok_notes, "openrlhf": openrlhf}
    (tmp / "scpo_export.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(_export_card(srm, group, strength, coef, offset, tok_notes, openrlhf, None), encoding="utf-8")
    if eval_pairs is not None:
        effect = input_format_effect(srm, tmp, *eval_pairs, group=group, strength=strength)
        spec["input_format_effect"] = effect
        (tmp / "scpo_export.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_export_card(srm, group, strength, coef, offset, tok_notes, openrlhf, effect), encoding="utf-8")
    for f in tmp.iterdir():
        shutil.move(str(f), str(out / f.name))
    tmp.rmdir()
    return out


def _export_card(srm: SteerableRewardModel, group: GroupSpec, strength: float, coef: dict[str, float], offset: float,
                 tok_notes: dict[str, Any], openrlhf: dict[str, Any] | None, effect: dict[str, dict[str, float]] | None) -> str:
    man = srm.manifest
    pair = srm.formatter.kind == "text-pair"
    if len(coef) == 1 and GLOBAL in coef:
        evaluated = [(g, GLOBAL) for g in srm.groups]
    elif len(coef) == 1:
        g_m = next(iter(coef)).rsplit("/", 1)
        evaluated = [(g_m[0], g_m[1])]
    else:
        evaluated = []  # a blend of models: its accuracy was not measured
    meta = card_data(man, model_name=f"scpo-{describe_steering(group, strength)}", models=evaluated,
                     tags=["text-classification"], pipeline_tag="text-classification")
    call = ("enc = tok(prompt, response, truncation=True, return_tensors='pt')  # a text pair: [CLS] prompt [SEP] response [SEP]"
            if pair else
            "text = tok.apply_chat_template([{'role': 'user', 'content': prompt}, {'role': 'assistant', 'content': response}],\n"
            "                               tokenize=False)\n"
            "enc = tok(text, add_special_tokens=False, truncation=True, return_tensors='pt')  # the template has them already")
    lines = [
        f"# SCPO reward model: {describe_steering(group, strength)}", "",
        "A plain `AutoModelForSequenceClassification` checkpoint with one output, the reward, exported by "
        "`scpo export` from a steerable SCPO artifact"
        + (" (LoRA adapter merged into the base)." if srm.mode == "lora" else "."), "",
        "Reward = " + " + ".join(f"{c:.4g} · z[{m}]" for m, c in coef.items())
        + ", where z[m] is model m's reward centred (and scaled) on the artifact's reference set.", "",
        "Runs as written (`PATH`: this folder, or the Hub id it was uploaded to):", "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'PATH = "."',
        "prompt, response = \"How should I greet a new neighbour?\", \"Knock, smile and introduce yourself.\"",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "rm = AutoModelForSequenceClassification.from_pretrained(PATH).eval()",
        call,
        "with torch.no_grad():",
        "    reward = rm(**enc).logits[0, 0].item()" + (f" + {offset!r}  # the score layer has no bias: scpo's offset"
                                                      if offset else ""),
        "print(reward)",
        "```", "",
        f"Input format: `{srm.formatter.kind}`, at most {srm.formatter.max_length} tokens (scpo cuts the prompt from "
        "its start when an input is longer)"
        + (": `[CLS] prompt [SEP] response [SEP]` with segment ids 0/1." if pair else
           ": the chat template of one user turn (the prompt) and one assistant turn (the response), tokenized with "
           "`add_special_tokens=False` -- the template's text already holds them; the tokenizer's default would add a "
           "second BOS token and give other rewards."),
    ]
    acc = man.get("accuracy") or {}
    if evaluated:
        lines += ["", "Accuracy on held-out test pairs (chosen scored above rejected; 95% bootstrap CI, the run's `report.md` says what it resamples):", "",
                  "| group | model | test pairs | accuracy | 95% CI |", "|---|---|---|---|---|"]
        for g, m in evaluated:
            e = (acc.get(g) or {}).get(m) or {}
            ci = e.get("ci95") or [None, None]
            lines.append(f"| {g} | {m} | {(acc.get(g) or {}).get('test_pairs', '–')} | {_pct(e.get('all'))} | "
                         + (f"{_pct(ci[0])} – {_pct(ci[1])}" if ci[0] is not None else "–") + " |")
    elif len(coef) > 1:
        lines += ["", "This is a blend of models; its accuracy was not measured (the components': the artifact's cards)."]
    if offset:
        lines += ["", f"The score layer has no bias: add {offset:.6g} to this checkpoint's rewards to get scpo's."]
    lines += ["", "## In TRL and OpenRLHF", "",
              f"The tokenizer is saved for TRL's trainers: EOS `{tok_notes['eos_token']}`"
              + (" (the tokenizer has no EOS token: its SEP token stands in)" if tok_notes.get("eos_token_from") == "sep_token" else "")
              + f", pad `{tok_notes['pad_token']}`, `model_max_length` {tok_notes['model_max_length']} (scpo's limit), "
              "truncation from the left (the response is kept), padding on the right.", ""]
    if pair:
        lines += [
            "* `trl.RewardTrainer` (string prompt/chosen/rejected) trains it, but builds `[CLS] prompt response [SEP] [SEP]` "
            "(prompt and response concatenated, segment ids all 0), not scpo's text pair; it drops pairs longer than "
            "`RewardConfig.max_length`. Conversational data need a chat template, which this tokenizer has not.",
            "* `trl.GRPOTrainer(reward_funcs=<this checkpoint>)` (string prompts: conversational ones need a chat template) "
            "scores `prompt + completion` with no special tokens and no truncation: keep prompt + completion under the model's "
            f"{tok_notes.get('max_positions')}-token position limit (`max_completion_length`), or pass "
            "`scpo.export.reward_function(PATH)` as the reward function: scpo's own input and truncation, any length.",
            "* **OpenRLHF's reward-model loader does not fit this checkpoint**: it rebuilds a decoder's value head (a "
            "bias-free linear layer read at the last token), while this model reads its first (`[CLS]`) token through "
            "its own classification head (BERT: a pooler and a `classifier` with a bias). Use the remote protocol instead: `scpo serve --model PATH --port 5000` and "
            "OpenRLHF's `--remote_rm_url http://127.0.0.1:5000/get_reward`.",
        ]
    else:
        lines += [
            "* `trl.RewardTrainer` with conversational prompt/chosen/rejected (message lists) builds the chat template's "
            "text, scpo's own input; string data are concatenated as `prompt + response + EOS` without the template.",
            "* `trl.GRPOTrainer(reward_funcs=<this checkpoint>)` with conversational prompts scores the chat template of "
            "prompt + completion (scpo's input, not truncated by TRL); with string prompts `prompt + completion`.",
        ]
        if openrlhf:
            lines.append(
                f"* OpenRLHF: `--reward_pretrain PATH --value_head_prefix {openrlhf['value_head_prefix']}` (also in "
                "`config.json`). OpenRLHF reads the reward at the last token of the policy's own token ids, so the policy "
                "must share this tokenizer and chat template. Its value head has no bias: its rewards are scpo's minus "
                f"{-openrlhf['mean']:.6g}, and with `--normalize_reward` it subtracts `config.json`'s `mean` "
                f"({openrlhf['mean']:.6g}, std 1) and gives scpo's rewards exactly. Or use `scpo serve`'s `/get_reward`.")
        else:
            lines.append("* OpenRLHF's value-head loader does not fit this score layer; use `scpo serve`'s `/get_reward` "
                         "(`--remote_rm_url`).")
    if effect is None and pair:
        lines += ["", "What TRL's input costs was measured on the synthetic default (packaged MiniLM encoder, `group-c`'s "
                  "90 test pairs): 62.2% pairwise accuracy in scpo's input, 65.6% as RewardTrainer builds it, 63.3% as "
                  "GRPOTrainer feeds it, Pearson r 0.984 / 0.987 with scpo's rewards (scpo's `docs/interop.md`). For "
                  "this model, measure it on your pairs: `scpo.export.input_format_effect`, or `export_checkpoint(..., "
                  "eval_pairs=(prompts, chosen, rejected))` to put the table here."]
    if effect:
        lines += ["", f"Measured on {effect['scpo']['pairs']} held-out preference pairs "
                  "(`scpo.export.input_format_effect`):", "",
                  "| input | pairwise accuracy | Pearson r with scpo's rewards |", "|---|---|---|"]
        names = {"scpo": "scpo's own (as `scpo score` / `scpo serve`)", "trl_reward_trainer": "TRL RewardTrainer (string data)",
                 "trl_grpo": "TRL GRPOTrainer (string prompts)"}
        for k, e in effect.items():
            lines.append(f"| {names.get(k, k)} | {_pct(e['accuracy'])} | {e['pearson_r']:.3f} |")
    if man.get("tau") is not None:
        lines += ["", f"SCPO: τ = {man.get('tau')}, β = {man.get('beta')}, mode `{srm.mode}`, method `{srm.method}`."]
    return render(meta, "\n".join(lines) + "\n")


def export_artifact(run_dir: str | Path, out_dir: str | Path | None = None, *, scale: bool = True,
                    method: str | None = None, device: str | None = None, recalibrate: bool = False) -> Path:
    """Complete a run's models as a steerable artifact; returns its directory.

    Copies ``RUN_DIR/models`` to ``out_dir`` (or works in place when ``out_dir`` is None), computes
    the calibration on ``reference.jsonl`` (kept when the stored one still matches the texts and the
    weights, unless ``recalibrate``), adds τ, β, data provenance and per-group accuracies
    (from the run's ``config.yaml`` and ``results.json`` when at hand) to ``manifest.json``, and
    writes a model card per group and one for the artifact.
    """
    src = resolve_artifact(run_dir)
    root = run_root(run_dir, src)
    if root is not None:
        check_parts_agree(src, root)
    if out_dir is not None:
        target = Path(out_dir)
        if (target.exists() or target.is_symlink()) and not target.is_dir():
            raise ScpoError(f"--out {target}: exists and is not a directory")
        if target.resolve() != src.resolve():
            if target.exists() and any(target.iterdir()):
                raise ScpoError(f"{target}: exists and is not empty")
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_into_place(src, target)
    else:
        target = src
    manifest = read_json(target / "manifest.json")
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
            atomic_write_text(group_dir(target, manifest, g, MODE_FOLDERS[srm.mode]) / "README.md", card)
    manifest["cards"] = cards
    atomic_write_json(target / "manifest.json", manifest)
    atomic_write_text(target / "README.md", _artifact_card(manifest, srm))
    return target


def check_parts_agree(models_dir: Path, run_dir: Path) -> None:
    """Refuse an artifact whose parts come from different runs: the ``run_fingerprint`` of the
    models' manifest, of ``results.json`` and of the config in ``config.yaml`` must be one.

    A run of another config into the same directory invalidates the old results before it writes
    (:func:`scpo.rundir.invalidate_other_run`), so parts that disagree mean a copy assembled by hand
    or a directory written by an scpo before the fingerprint; artifacts where no part has one are
    let through unchecked.
    """
    parts: dict[str, str | None] = {}
    manifest = read_json(models_dir / "manifest.json")
    parts[f"{models_dir / 'manifest.json'}"] = manifest.get("run_fingerprint") if isinstance(manifest, dict) else None
    res = read_json(run_dir / "results.json")
    parts[f"{run_dir / 'results.json'}"] = res.get("run_fingerprint") if isinstance(res, dict) else None
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ScpoError(f"cannot read {cfg_path}: {e}".splitlines()[0]) from None
        parts[str(cfg_path)] = run_fingerprint(cfg) if isinstance(cfg, dict) else "unreadable"
    else:
        parts[str(cfg_path)] = None
    stored = [parts[k] for k in list(parts)[:2]]
    if all(v is None for v in stored):
        return  # written before run fingerprints: nothing to compare
    if len(set(parts.values())) > 1:
        raise ScpoError(f"{run_dir}: the artifact's parts come from different runs, refusing to export them together: "
                        + "; ".join(f"{k} is run {v or 'unknown (none stored)'}" for k, v in parts.items()))


def _copy_into_place(src: Path, target: Path) -> None:
    """Copy ``src`` to ``target`` through a temporary folder of this call's own (unique name, in
    ``target``'s folder), renamed into place; nothing that was there before is deleted."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if target.exists():
            target.rmdir()  # empty: checked by the caller
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _artifact_card(manifest: dict[str, Any], srm: SteerableRewardModel) -> str:
    data = manifest.get("data") or {}
    meta = card_data(manifest, model_name=f"scpo-steerable-{srm.method}", models=[(g, srm.method) for g in srm.groups],
                     tags=["steerable"])
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
    lines += ["", "Accuracy on each group's held-out test pairs (chosen scored above rejected); 95% CIs in the group cards.",
              "", "```python", "from scpo.steer import SteerableRewardModel", "",
              'THIS_DIR = "."', "rm = SteerableRewardModel.from_pretrained(THIS_DIR)",
              f"print(rm.score([\"How should I greet a new neighbour?\"], [\"Knock, smile and introduce yourself.\"], "
              f"group={srm.groups[0]!r}, strength=0.5))  # halfway from the global model", "```", ""]
    return render(meta, "\n".join(lines))
