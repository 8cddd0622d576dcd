"""The tau x beta sweep of SCPO (``scpo sweep``; head mode).

``scpo sweep --tau 0.5,0.6,0.7,0.8,1.0 --beta 0.5,1.1,2,inf`` trains SCPO for every (tau, beta)
cell on the same split and seeds (the features and the global model's margins are computed once
and cached; only the score layers train), with its own grid search of learning rate, steps and
pull on the validation folds, like every method. Each cell reports the mean test accuracy over
groups with a 95% CI, the paired difference to full fine-tuning, the validation accuracy and the
share of pairs the filter keeps. ``tau = 1, beta = inf`` is full fine-tuning written as SCPO.

Test accuracy per cell is a sensitivity analysis: picking the best cell by it would tune on the
test set. Choose tau and beta by ``val_accuracy`` (the grid search's k-fold validation accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evaluate import evaluate_splits
from ..experiment import Experiment, FitResult, group_sets, split_margins
from ..fitting import fit

__all__ = ["cell_label", "run_sweep"]


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def cell_label(tau: float, beta: float) -> str:
    """``scpo[tau=0.7,beta=1.1]``: the method name of one sweep cell."""
    return f"scpo[tau={_num(tau)},beta={_num(beta)}]"


def run_sweep(exp: Experiment, taus: Sequence[float], betas: Sequence[float], seeds: Sequence[int],
              reference: FitResult | None = None, progress: bool = False) -> dict[str, Any]:
    """Train SCPO for every (tau, beta) on ``exp``'s split (head mode) and evaluate every cell.

    ``reference``, the main comparison's fit, supplies the global model and full fine-tuning
    (trained here when absent). Each cell is one :func:`scpo.fitting.fit` call with its (τ, β).
    """
    seeds = list(seeds)
    taus = list(dict.fromkeys(float(t) for t in taus))
    betas = list(dict.fromkeys(float(b) for b in betas))
    margins: dict[tuple, np.ndarray] = {}
    used: dict[tuple, tuple[float, float]] = {}
    ref_m, ref_u = (reference.margins, reference.used) if reference is not None else ({}, {})
    need = [m for m in ("global", "full") if any((g, m, s) not in ref_m for g in exp.groups for s in seeds)]
    for m in ("global", "full"):
        if m not in need:
            for g in exp.groups:
                for s in seeds:
                    margins[(g, m, s)], used[(g, m, s)] = ref_m[(g, m, s)], ref_u[(g, m, s)]
    if need:
        ref = fit(exp, need, seeds, progress=progress)
        for (g, m, s), mg in ref.margins.items():
            if m in need:
                margins[(g, m, s)], used[(g, m, s)] = mg, ref.used[(g, m, s)]
    cells: list[dict[str, Any]] = []
    labels = []
    for tau in taus:
        for beta in betas:
            label = cell_label(tau, beta)
            labels.append(label)
            res = fit(exp, ["scpo"], seeds, tau=tau, beta=beta, progress=progress)
            vals = []
            for g in exp.groups:
                for s in seeds:
                    margins[(g, label, s)], used[(g, label, s)] = res.margins[(g, "scpo", s)], res.used[(g, "scpo", s)]
                    ch = res.grid.get("choices", {}).get(g, {}).get("scpo", {}).get(str(s), {})
                    if "val_accuracy" in ch:
                        vals.append(ch["val_accuracy"])
            train_n = {g: int(((exp.group == g) & (exp.split == "train")).sum()) for g in exp.groups}
            kept = [np.mean([used[(g, label, s)][0] for s in seeds]) / max(train_n[g], 1) for g in exp.groups]
            cells.append({"tau": tau, "beta": beta if math.isfinite(beta) else "inf", "label": label,
                          "val_accuracy": float(np.mean(vals)) if vals else float("nan"),
                          "kept_share": float(np.mean(kept)),
                          "pairs_used": float(np.mean([used[(g, label, s)][0] for g in exp.groups for s in seeds]))})
    methods = ["global", "full"] + labels
    sp = split_margins(exp, margins, used)
    sets = group_sets(exp)
    ev, _ = evaluate_splits([sp], exp.groups, methods, seeds, group_sets=sets, n_boot=exp.cfg.output.n_boot,
                         comparisons=[(lab, "full") for lab in labels] + [(lab, "global") for lab in labels])
    summ = ev["summary"]
    for c in cells:
        lab = c["label"]
        for name in summ:
            row = summ[name][lab]
            c[name] = {s: row[s] for s in ev["subsets"]} | {"all_ci95": row["all_ci95"]}
            t = ev["tests"]["group_sets"][f"{lab} vs full"][name]["all"]
            c[name]["diff_vs_full"], c[name]["diff_vs_full_ci95"], c[name]["p_vs_full"] = t["diff"], t["ci95"], t["p_value"]
            t = ev["tests"]["group_sets"][f"{lab} vs global"][name]["all"]
            c[name]["diff_vs_global"], c[name]["p_vs_global"] = t["diff"], t["p_value"]
        c["per_group_all"] = {g: ev["metrics"][g][lab]["all"]["mean"] for g in exp.groups}
    reference_rows = {m: {name: {s: summ[name][m][s] for s in ev["subsets"]} | {"all_ci95": summ[name][m]["all_ci95"]}
                          for name in summ} for m in ("global", "full")}
    return {
        "taus": taus, "betas": [b if math.isfinite(b) else "inf" for b in betas], "seeds": seeds,
        "split_seed": exp.cfg.data.split_seed, "group_sets": list(summ), "cells": cells, "reference": reference_rows,
        "note": "test accuracy per cell is a sensitivity analysis; choose tau and beta by val_accuracy "
                "(k-fold validation on training split units), never by test accuracy",
        "ci": ev["ci"],
    }
