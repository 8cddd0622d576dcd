"""The tau x beta sweep of SCPO, and the evaluation subcommands ``scpo sweep`` and ``scpo evaluate``.

``scpo sweep --tau 0.5,0.6,0.7,0.8,1.0 --beta 0.5,1.1,2,inf`` trains SCPO for every (tau, beta)
cell on the same split and seeds (the features and the global model's margins are computed once
and cached; only the score layers train), with its own grid search of learning rate, steps and
pull on the validation folds, like every method. Each cell reports the mean test accuracy over
groups with a 95% CI, the paired difference to full fine-tuning, the validation accuracy and the
share of pairs the filter keeps. ``tau = 1, beta = inf`` is full fine-tuning written as SCPO.

Test accuracy per cell is a sensitivity analysis: picking the best cell by it would tune on the
test set. Choose tau and beta by ``val_accuracy`` (the grid search's k-fold validation accuracy).

``scpo evaluate`` is ``scpo run`` with the defaults of a full evaluation: every method, five
training seeds and learning curves (see :data:`EVALUATE_DEFAULTS`); any flag overrides them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["EVALUATE_DEFAULTS", "SWEEP_DEFAULTS", "cell_label", "register", "run_sweep"]

SWEEP_DEFAULTS: dict[str, Any] = {
    "sweep_taus": [0.5, 0.6, 0.7, 0.8, 1.0],
    "sweep_betas": [0.5, 1.1, 2.0, math.inf],
    "methods": ["global", "full"],
    "output_dir": "runs/sweep",
}
"""What ``scpo sweep`` runs when no flag says otherwise."""

EVALUATE_DEFAULTS: dict[str, Any] = {
    "methods": ["global", "full", "scpo", "filter-only", "weight-only", "inverse", "random-subset", "scratch"],
    "seeds": [0, 1, 2, 3, 4],
    "curve_fractions": [0.1, 0.25, 0.5, 0.75, 1.0],
    "output_dir": "runs/evaluate",
}
"""What ``scpo evaluate`` runs when no flag says otherwise."""


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:g}"


def cell_label(tau: float, beta: float) -> str:
    """``scpo[tau=0.7,beta=1.1]``: the method name of one sweep cell."""
    return f"scpo[tau={_num(tau)},beta={_num(beta)}]"


def run_sweep(exp: Any, taus: Sequence[float], betas: Sequence[float], seeds: Sequence[int],
              reference: tuple[dict, dict] | None = None, progress: bool = False) -> dict[str, Any]:
    """Train SCPO for every (tau, beta) on ``exp``'s split (head mode) and evaluate every cell.

    ``reference = (margins, used)`` of the main comparison supplies the global model and full
    fine-tuning (trained here when absent).
    """
    from .evaluate import evaluate_splits
    from .pipeline import fit_heads, group_sets, split_margins

    seeds = list(seeds)
    taus = list(dict.fromkeys(float(t) for t in taus))
    betas = list(dict.fromkeys(float(b) for b in betas))
    test_rows = np.flatnonzero(exp.split == "test")
    dt = exp.diffs()[test_rows].double().numpy()
    margins: dict[tuple, np.ndarray] = {}
    used: dict[tuple, tuple[float, float]] = {}
    ref_m, ref_u = reference if reference is not None else ({}, {})
    need = [m for m in ("global", "full") if any((g, m, s) not in ref_m for g in exp.groups for s in seeds)]
    for m in ("global", "full"):
        if m not in need:
            for g in exp.groups:
                for s in seeds:
                    margins[(g, m, s)], used[(g, m, s)] = ref_m[(g, m, s)], ref_u[(g, m, s)]
    if need:
        thetas, _ = fit_heads(exp, need, seeds, progress=progress)
        for (g, m, s), (w, n, ws) in thetas.items():
            if m in need:
                margins[(g, m, s)] = dt @ np.asarray(w, dtype=np.float64)
                used[(g, m, s)] = (n, ws)
    cells: list[dict[str, Any]] = []
    labels = []
    for tau in taus:
        for beta in betas:
            label = cell_label(tau, beta)
            labels.append(label)
            cexp = dataclasses.replace(exp, cfg=exp.cfg.replace(tau=tau, beta=beta))
            thetas, grid = fit_heads(cexp, ["scpo"], seeds, progress=progress)
            vals = []
            for g in exp.groups:
                for s in seeds:
                    w, n, ws = thetas[(g, "scpo", s)]
                    margins[(g, label, s)] = dt @ np.asarray(w, dtype=np.float64)
                    used[(g, label, s)] = (n, ws)
                    ch = grid.get("choices", {}).get(g, {}).get("scpo", {}).get(str(s), {})
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
    ev = evaluate_splits([sp], exp.groups, methods, seeds, group_sets=sets, n_boot=exp.cfg.output.n_boot,
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


# ---------------------------------------------------------------------------------------------
# CLI


def _parse_list(text: str, what: str) -> list[float]:
    from .errors import ConfigError

    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what}: expected comma separated numbers, got {text!r}") from None


def config_with_defaults(args: argparse.Namespace, defaults: dict[str, Any]):
    """Built-in defaults, then ``defaults``, then the ``--config`` YAML, then explicit flags."""
    import yaml

    from .config import FIELD_SECTION, RunConfig
    from .errors import ConfigError

    d = RunConfig().to_dict()
    for k, v in defaults.items():
        d[FIELD_SECTION[k]][k] = v
    if getattr(args, "config", None):
        try:
            with open(args.config, encoding="utf-8") as f:
                y = yaml.safe_load(f) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {args.config}: {e}".splitlines()[0]) from None
        if not isinstance(y, dict):
            raise ConfigError(f"{args.config}: expected a mapping of sections")
        for sec, vals in y.items():
            if isinstance(vals, dict) and sec in d:
                d[sec].update(vals)
            else:
                d[sec] = vals  # let from_dict name the problem
    for k in FIELD_SECTION:
        v = getattr(args, k, None)
        if v is not None:
            d[FIELD_SECTION[k]][k] = v
    return RunConfig.from_dict(d, source="command line")


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    from .cli import _add_run_args

    _add_run_args(p)
    p.description = (p.description or "") + (
        ". --tau and --beta take comma separated lists here (default 0.5,0.6,0.7,0.8,1.0 and 0.5,1.1,2,inf); "
        "global and full fine-tuning are trained as references.")


def _sweep(args: argparse.Namespace) -> int:
    from .cli import _print_summary
    from .pipeline import run

    if args.tau is not None:
        args.sweep_taus, args.tau = _parse_list(args.tau, "tau"), None
    if args.beta is not None:
        args.sweep_betas, args.beta = _parse_list(args.beta, "beta"), None
    cfg = config_with_defaults(args, SWEEP_DEFAULTS)
    results = run(cfg, progress=not args.quiet)
    _print_summary(results, cfg.output.output_dir)
    print_sweep(results.get("sweep", {}))
    return 0


def print_sweep(sw: dict[str, Any]) -> None:
    if not sw:
        return
    name = sw["group_sets"][0]
    print(f"  sweep ({name}): mean test accuracy (%) [95% CI], difference to full fine-tuning, val accuracy")
    for c in sw["cells"]:
        r = c[name]
        print(f"    tau {c['tau']:<4g} beta {str(c['beta']):<4}  {100 * r['all']:5.1f} "
              f"[{100 * r['all_ci95'][0]:.1f}, {100 * r['all_ci95'][1]:.1f}]  "
              f"{100 * r['diff_vs_full']:+5.1f} (p={r['p_vs_full']:.3f})  val {100 * c['val_accuracy']:5.1f}")


def _evaluate(args: argparse.Namespace) -> int:
    from .cli import _print_summary
    from .pipeline import run

    cfg = config_with_defaults(args, EVALUATE_DEFAULTS)
    results = run(cfg, progress=not args.quiet)
    _print_summary(results, cfg.output.output_dir)
    print_efficiency(results)
    return 0


def print_efficiency(results: dict[str, Any]) -> None:
    eff = results.get("curves", {}).get("efficiency")
    if not eff:
        return
    for name, pts in eff["group_sets"].items():
        cells = []
        for e in pts:
            if e["ratio"] is None:
                cells.append(f"{e['fraction']:g}: not reached (> {e['ratio_bound_value']:.2f})")
            else:
                bound = "<= " if e["status"] == "at_first_point" else ""
                cells.append(f"{e['fraction']:g}: {bound}{e['ratio']:.2f}")
        print(f"  efficiency ratio ({name}, SCPO at fraction: full fine-tuning's pairs / SCPO's): " + ", ".join(cells))


def register(commands: dict) -> None:
    from .cli import _add_run_args

    commands["sweep"] = ("tau x beta sweep of SCPO (with global and full fine-tuning as references)",
                         _add_sweep_args, _sweep)
    commands["evaluate"] = ("full evaluation: every method, 5 seeds, CIs, paired tests, learning curves "
                            "(scpo run with evaluation defaults)", _add_run_args, _evaluate)
