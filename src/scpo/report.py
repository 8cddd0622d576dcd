"""Step 7 of the pipeline: write the run directory.

* ``config.yaml`` — the resolved config;
* ``results.json`` — every number (schema: ``docs/results-schema.md``); strict JSON: NaN is
  written ``null``, infinity the string ``"inf"``;
* ``full_report.json``, ``partial_report.json``, ``edited_ratios.json`` — the reference
  implementation's files: per group and ``avg``, accuracy of the global model (``before``) and of
  SCPO (``after``) on all test pairs (full) and on the distinctive ones (partial), and the share
  of training pairs the filter keeps (edited ratios);
* ``report.md`` — the tables a person reads; ``plots/*.png``: accuracy per group and method with
  CI bars, learning curves, histograms of p and w per group, the cross-group heatmap, the
  tau x beta heatmap (when the run has those);
* ``models/`` — the global model and the group models (head mode: the score layers).

Every file is written atomically (temporary name, then rename). ``scpo report RUN_DIR`` rebuilds
report, plots and reference files from ``results.json`` alone (:func:`rebuild`).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import ScpoError
from .names import is_inside, path_component, rmtree_inside
from .reliability import atomic_write_json, atomic_write_text, maybe_kill

__all__ = ["build_report", "make_plots", "rebuild", "reference_files", "strict_json", "versions", "write_run"]

PLOT_FILES = ("accuracy.png", "selection.png", "cross_group.png", "curves.png", "sweep.png")


def versions() -> dict[str, str]:
    import platform

    import datasets
    import torch
    import transformers

    from . import __version__

    return {"scpo": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "python": platform.python_version()}


def strict_json(obj: Any) -> Any:
    """A copy of ``obj`` that is strict JSON: NaN -> ``None``, +-inf -> ``"inf"``/``"-inf"``, numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [strict_json(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def _f(x: Any) -> float:
    """A number from results (``None`` -> NaN, ``"inf"`` -> inf)."""
    if x is None:
        return float("nan")
    if isinstance(x, str):
        try:
            return float(x)
        except ValueError:
            return float("nan")
    return float(x)


def _fmt(x: Any, pct: bool = True) -> str:
    v = _f(x)
    if math.isnan(v):
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.0f}"


def _ci(ci: Any) -> str:
    if not ci or len(ci) != 2 or math.isnan(_f(ci[0])):
        return ""
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _pct_diff(x: Any) -> str:
    v = _f(x)
    return "–" if math.isnan(v) else f"{100 * v:+.1f}"


def _p(x: Any) -> str:
    v = _f(x)
    if math.isnan(v):
        return "–"
    return f"{v:.3f}" if v >= 0.001 else "<0.001"


def reference_files(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The reference implementation's three report files, from results."""
    metrics, sel = results["metrics"], results["selection"]
    groups = results["data"]["groups"]
    after = "scpo" if "scpo" in results["methods"] else results["methods"][-1]
    full, partial, ratios = {}, {}, {}
    for g in groups:
        full[g] = {"before": _f(metrics[g]["global"]["all"]["mean"]) if "global" in metrics[g] else None,
                   "after": _f(metrics[g][after]["all"]["mean"])}
        partial[g] = {"before": _f(metrics[g]["global"]["distinctive"]["mean"]) if "global" in metrics[g] else None,
                      "after": _f(metrics[g][after]["distinctive"]["mean"])}
        ratios[g] = _f(sel[g]["kept_share"])

    def avg(d: dict) -> Any:
        vals = list(d.values())
        if isinstance(vals[0], dict):
            out = {}
            for k in vals[0]:
                xs = [v[k] for v in vals if v[k] is not None and not math.isnan(v[k])]
                out[k] = float(np.mean(xs)) if xs else None
            return out
        return float(np.nanmean(vals))

    full["avg"], partial["avg"], ratios["avg"] = avg(full), avg(partial), avg(ratios)
    return {name: strict_json(obj) for name, obj in
            {"full_report.json": full, "partial_report.json": partial, "edited_ratios.json": ratios}.items()}


# ---------------------------------------------------------------------------------------------
# report.md


def _claims(results: dict[str, Any]) -> list[str]:
    """The paper's three claims, stated on this run's numbers (favourable or not)."""
    methods, summ = results["methods"], results["summary"]
    tests = results.get("tests", {}).get("group_sets", {})
    sets = list(summ)
    focus = "minority_groups" if "minority_groups" in summ else sets[0]
    out = ["## The paper's claims on this data", ""]
    if "scpo" not in methods:
        return out + ["SCPO was not among the methods of this run.", ""]

    def diff_line(a: str, b: str, name: str, subset: str = "all") -> str:
        t = tests.get(f"{a} vs {b}", {}).get(name, {}).get(subset)
        if not t:
            return ""
        return (f"{_pct_diff(t['diff'])} points [95% CI {_pct_diff(t['ci95'][0])}, {_pct_diff(t['ci95'][1])}], "
                f"p = {_p(t['p_value'])}")

    lines = []
    for b, what in (("global", "**Accuracy over the baseline** (paper: minority accuracy up to +7 points). SCPO "
                                "minus the global model"),
                    ("full", "**Accuracy over full-data fine-tuning**. SCPO minus full fine-tuning")):
        if b in methods:
            parts = [f"{name}: {diff_line('scpo', b, name)}" for name in sets if diff_line("scpo", b, name)]
            lines.append(f"- {what}, mean over groups of the group's test accuracy: " + "; ".join(parts) + ".")
    eff = results.get("curves", {}).get("efficiency")
    if eff:
        pts = eff["group_sets"].get(focus, [])
        cells = [_ratio_text(e) for e in pts]
        lines.append(f"- **Data efficiency** (paper: 1.7-2.8x, i.e. 170-280%). Pairs full fine-tuning needs to reach "
                     f"SCPO's accuracy ÷ pairs SCPO used, {focus}, at SCPO's fractions of the raw pairs: "
                     + ", ".join(f"{e['fraction']:g}: {c}" for e, c in zip(pts, cells)) + ". Per group: see "
                     "*Data efficiency*.")
    else:
        lines.append("- **Data efficiency**: not measured in this run (add `--curve-fractions 0.1,0.25,0.5,0.75,1`, "
                     "or use `scpo evaluate`).")
    if "full" in methods:
        bias = []
        for m in ("scpo", "filter-only", "weight-only"):
            if m in methods and m != "full":
                for subset in ("pooled", "agreeing"):
                    d = diff_line(m, "full", focus, subset)
                    if d:
                        bias.append(f"{m} − full on {subset}: {d}")
        lines.append(f"- **Excessive bias** (paper: the weighting keeps the group model from drifting away from what "
                     f"everyone agrees on). Accuracy on the pairs the global model ranks right (`agreeing`) and on every "
                     f"group's test pairs (`pooled`), {focus}: " + "; ".join(bias) + ". A drop there is the bias the "
                     "paper means; compare filter-only (no weighting) with scpo.")
    return out + lines + [""]


def _ratio_text(e: dict[str, Any]) -> str:
    if e.get("ratio") is None:
        if e.get("status") == "not_reached":
            return f"not reached (> {_f(e['ratio_bound_value']):.2f})"
        return "–"
    pre = "≤ " if e.get("status") == "at_first_point" else ""
    ci = e.get("ci95")
    cis = ""
    if ci:
        lo = "–" if ci[0] is None else f"{_f(ci[0]):.2f}"
        hi = "not reached" if ci[1] is None else f"{_f(ci[1]):.2f}"
        cis = f" [{lo}, {hi}]"
    return f"{pre}{_f(e['ratio']):.2f}{cis}"


def _ablation(results: dict[str, Any]) -> list[str]:
    methods = results["methods"]
    tests = results.get("tests", {}).get("group_sets", {})
    pairs = [("scpo", "full", "filter + weight (SCPO)"), ("filter-only", "full", "the filter alone"),
             ("weight-only", "full", "the weighting alone"), ("random-subset", "full", "a random subset of SCPO's size"),
             ("inverse", "full", "filter + inverse weighting"), ("scpo", "filter-only", "adding the weighting to the filter"),
             ("scpo", "weight-only", "adding the filter to the weighting")]
    pairs = [p for p in pairs if p[0] in methods and p[1] in methods and f"{p[0]} vs {p[1]}" in tests]
    if len(pairs) < 2:
        return []
    sets = list(results["summary"])
    lines = ["## What carries SCPO's effect (ablations, paired against the same baseline)", "",
             "Difference in test accuracy (points), mean over groups, [95% CI], p (paired clustered bootstrap).", "",
             "| comparison | what it isolates | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    for a, b, what in pairs:
        cells = []
        for name in sets:
            t = tests[f"{a} vs {b}"][name]["all"]
            cells.append(f"{_pct_diff(t['diff'])} [{_pct_diff(t['ci95'][0])}, {_pct_diff(t['ci95'][1])}] p={_p(t['p_value'])}")
        lines.append(f"| {a} − {b} | {what} | " + " | ".join(cells) + " |")
    # a plain statement of what the single components do, which way it falls
    name = "minority_groups" if "minority_groups" in sets else sets[0]
    if "filter-only vs full" in tests and "weight-only vs full" in tests:
        f = tests["filter-only vs full"][name]["all"]
        w = tests["weight-only vs full"][name]["all"]
        df, dw = _f(f["diff"]), _f(w["diff"])
        sig = [n for n, t in (("the filter", f), ("the weighting", w)) if _f(t["p_value"]) < 0.05]
        if abs(dw - df) < 0.005:
            lead = "the filter alone and the weighting alone change accuracy by about the same amount"
        else:
            lead = (f"the {'weighting' if dw > df else 'filter'} alone does better than the "
                    f"{'filter' if dw > df else 'weighting'} alone")
        lines += ["", f"On {name}, against full fine-tuning, {lead} (filter alone {_pct_diff(f['diff'])} points, "
                  f"p={_p(f['p_value'])}; weighting alone {_pct_diff(w['diff'])}, p={_p(w['p_value'])}); "
                  + (f"significant at 5%: {', '.join(sig)}." if sig else
                     "neither differs from full fine-tuning at 5% on this test set.")]
    return lines + [""]


def build_report(results: dict[str, Any]) -> str:
    """``report.md`` from results (no training; ``scpo report RUN_DIR`` calls this)."""
    lines = ["# SCPO run report", ""]
    if results.get("synthetic_data"):
        lines += ["> **Synthetic data.** These numbers come from scpo's embedded synthetic benchmark "
                  "(invented groups `group-a`...; known ground truth), not from real people.", ""]
    d = results["data"]
    gm = results["global_model"]
    split_seeds = results.get("split_seeds", [d.get("split_seed")])
    sel_cfg = results.get("select", {})
    lines += [f"Data: `{d['name']}` · groups: {', '.join(d['groups'])} · split by {d['split_unit']} "
              f"(split seed{'s' if len(split_seeds) > 1 else ''} {', '.join(map(str, split_seeds))}) · mode: "
              f"`{results['mode']}` · training seeds: {results['seeds']}"
              + (f" · tau {sel_cfg.get('tau')}, beta {sel_cfg.get('beta')}" if sel_cfg else ""),
              f"Global model: `{gm['model']}` ({gm.get('trained_on', '')}"
              + (f", {gm['trained_on_pairs']} pairs" if "trained_on_pairs" in gm else "") + ")", ""]
    ci = results.get("ci")
    if ci:
        lines += [f"Every number is a mean over {len(results.get('runs', [])) or len(results['seeds'])} run(s) "
                  "(split seed × training seed); ± is the standard deviation over runs; [a, b] is a 95% "
                  f"{ci['method']} CI ({ci['n_boot']} replicates) that resamples "
                  + ", ".join(ci["resamples"])
                  + (f"; it does **not** cover {'; '.join(ci['does_not_cover'])}" if ci.get("does_not_cover") else "")
                  + ". p-values: " + ci["p_value"] + ".", ""]
    methods = results["methods"]
    summ = results["summary"]
    lines += _claims(results)
    # ---- comparison table
    subsets = [s for s in ("all", "distinctive", "agreeing", "contested", "pooled")]
    lines += ["## Comparison: mean accuracy (%) over groups [95% CI]", "",
              "| groups | method | all | distinctive | agreeing | contested | pooled | pairs used | gap closed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in summ.items():
        for m, r in rows.items():
            cells = [f"{_fmt(r.get(s))} {_ci(r.get(f'{s}_ci95'))}".strip() for s in subsets]
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {_fmt(r.get('pairs_used'), False)} | "
                         f"{_fmt(r.get('gap_closed'))} |")
    lines += ["", "`all` = the group's test pairs. `distinctive` = test pairs the global model ranks wrongly (the "
              "global model scores 0 there *by construction*, and a model that merely disagrees more with it scores "
              "high there while losing elsewhere: read it only beside `agreeing` and `pooled`). `agreeing` = test "
              "pairs the global model ranks rightly. `contested` = pairs whose order in the group contradicts the "
              "population's (defined by the data, not by the global model). `pooled` = every group's test pairs "
              "(excessive bias towards the group shows as a drop). `gap closed` = share of the global→oracle gap on "
              "`all` (synthetic data only).", ""]
    metrics = results["metrics"]
    g0 = d["groups"][0]
    tp = metrics[g0]["test_pairs"]
    if "contested" in tp:
        sizes = ", ".join(f"{g} {metrics[g]['test_pairs'].get('contested', 0)}/{metrics[g]['test_pairs']['all']}"
                          for g in d["groups"])
        lines += ["Contested test pairs per group (contested/all"
                  + (f", split seed {split_seeds[0]}" if len(split_seeds) > 1 else "") + f"): {sizes}.", ""]
    else:
        lines += ["This data set does not define contested pairs.", ""]
    # ---- per group
    first = f" of split seed {split_seeds[0]}" if len(split_seeds) > 1 else ""
    lines += ["## Per group: accuracy (%) on the group's test pairs, mean ± std over runs [95% CI]", "",
              f"| group | test pairs (units){first} | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for g in d["groups"]:
        cells = []
        for m in methods:
            e = metrics[g][m]["all"]
            cells.append(f"{_fmt(e['mean'])} ± {_fmt(e['std'])} {_ci(e.get('ci95'))}".strip())
        lines.append(f"| {g} | {metrics[g]['test_pairs']['all']} ({metrics[g].get('test_units', '–')}) | "
                     + " | ".join(cells) + " |")
    few = [g for g in d["groups"] if metrics[g].get("few_units")]
    lines += ["", f"CIs: {results.get('split_unit_ci', '')}."
              + (f" **Fewer than 10 test {d['split_unit']}s** in {', '.join(few)}: a percentile bootstrap over so few "
                 "units is unreliable (no CI at all below 2 units)." if few else ""), ""]
    # ---- paired tests per group
    ptests = results.get("tests", {}).get("per_group", {})
    keys = [k for k in ("scpo vs full", "scpo vs global") if k in ptests]
    if keys:
        lines += ["## Paired tests per group (test accuracy on `all`)", "",
                  "Difference in points [95% CI], p from the clustered paired bootstrap (the test to read). McNemar's "
                  "p beside it is for comparison only: it uses one run (first split, first seed) and treats every pair "
                  "as independent, which one user or question answering many pairs violates, so it overstates the "
                  "evidence whenever a few units carry a difference.", "",
                  "| group | " + " | ".join(f"{k}: diff [CI] | p (bootstrap) | p (McNemar)" for k in keys) + " |",
                  "|---|" + "---|---|---|" * len(keys)]
        for g in d["groups"]:
            cells = []
            for k in keys:
                t = ptests[k][g]["all"]
                mc = t.get("mcnemar", {})
                cells += [f"{_pct_diff(t['diff'])} [{_pct_diff(t['ci95'][0])}, {_pct_diff(t['ci95'][1])}]",
                          _p(t["p_value"]), _p(mc.get("p_value"))]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        gsets = results["tests"]["group_sets"]
        lines += ["", "Pooled over groups (mean over groups; every test unit resampled):", ""]
        for k in keys:
            for name in summ:
                t = gsets[k][name]["all"]
                lines.append(f"- {k}, {name}: {_pct_diff(t['diff'])} [{_pct_diff(t['ci95'][0])}, "
                             f"{_pct_diff(t['ci95'][1])}], p = {_p(t['p_value'])}")
        lines.append("")
    lines += _ablation(results)
    lines += _bias(results)
    lines += _curves_section(results)
    lines += _cross_section(results)
    lines += ["## Selection (training pairs of the primary split)", "",
              "| group | train pairs | kept by filter | kept share | mean weight (kept) | global acc. on train |",
              "|---|---|---|---|---|---|"]
    for g in d["groups"]:
        s = results["selection"][g]
        lines.append(f"| {g} | {s['train_pairs']} | {s['kept']} | {_fmt(s['kept_share'])} | "
                     f"{_f(s['mean_weight_kept']):.3f} | {_fmt(s['global_train_accuracy'])} |")
    lines.append("")
    lines += _sweep_section(results)
    for extra in results.get("report_sections", []):
        lines += [extra, ""]
    plots = results.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    timing = results.get("timing_s")
    if timing:
        lines.append("Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
                     + f", total {_f(results.get('wall_time_s')):.0f}")
    lines += [f"Versions: {json.dumps(results.get('versions', {}))}", ""]
    return "\n".join(lines)


def _bias(results: dict[str, Any]) -> list[str]:
    summ = results["summary"]
    methods = results["methods"]
    lines = ["## Bias: before (global) and after, on the pairs the global model gets right and wrong", "",
             "Accuracy (%) [95% CI], mean over groups. `distinctive` is shown only beside `agreeing` and `pooled`: the "
             "global model scores 0 there by construction. `scratch` (a group model trained from zero on the group "
             "only) is the reference for how far a model free of the global one goes.", ""]
    for name, rows in summ.items():
        lines += [f"**{name}**", "", "| method | agreeing | distinctive | contested | pooled | all |", "|---|---|---|---|---|---|"]
        for m in methods + (["oracle"] if "oracle" in rows else []):
            r = rows[m]
            lines.append(f"| {m} | " + " | ".join(f"{_fmt(r.get(s))} {_ci(r.get(f'{s}_ci95'))}".strip()
                                                    for s in ("agreeing", "distinctive", "contested", "pooled", "all")) + " |")
        lines.append("")
    return lines


def _curves_section(results: dict[str, Any]) -> list[str]:
    cv = results.get("curves")
    if not cv:
        return []
    fr = cv["fractions"]
    lines = ["## Data efficiency: learning curves", "",
             f"Subsampling: {cv['subsample']}. Hyper-parameters: {cv['hyperparameters']}. "
             f"x-axis: {cv['x_axis']}.", "",
             "Mean accuracy (%) over groups [95% CI] at each fraction of the raw training pairs:", "",
             "| groups | method | " + " | ".join(f"{f:g}" for f in fr) + " |", "|---|---|" + "---|" * len(fr)]
    for name, rows in cv["group_sets"].items():
        for m, r in rows.items():
            lines.append(f"| {name} | {m} | " + " | ".join(
                f"{_fmt(a)} {_ci(c)} ({_fmt(k, False)} pairs)" for a, c, k in zip(r["accuracy"], r["ci95"], r["pairs_trained"])) + " |")
    eff = cv.get("efficiency")
    if eff:
        lines += ["", f"**Efficiency ratio** = {eff['definition']}. > 1: SCPO needs fewer pairs. [95% CI]; "
                  "'not reached' = full fine-tuning never reaches SCPO's accuracy within the data (the ratio is larger "
                  "than the bound given); '≤' = already reached at the smallest fraction. Where both curves are flat "
                  "and inside each other's CI the crossing point, and so the ratio, is mostly noise: read the CI.", "",
                  "| group | " + " | ".join(f"SCPO at {f:g}" for f in fr) + " |", "|---|" + "---|" * len(fr)]
        for g, pts in eff["per_group"].items():
            lines.append(f"| {g} | " + " | ".join(_ratio_text(e) for e in pts) + " |")
        for name, pts in eff["group_sets"].items():
            lines.append(f"| **{name}** (mean curve) | " + " | ".join(_ratio_text(e) for e in pts) + " |")
        lines += ["", "Per group, raw pairs at each fraction: " + "; ".join(
            f"{g} " + "/".join(_fmt(x, False) for x in cv["per_group"][g][cv["methods"][0]]["raw_pairs"])
            for g in cv["per_group"]) + "."]
    return lines + [""]


def _cross_section(results: dict[str, Any]) -> list[str]:
    cross = results.get("cross_group")
    if not cross:
        return []
    groups = results["data"]["groups"]
    lines = ["## Cross-group matrix", "",
             "Accuracy (%) of each group's model (rows) on every group's test pairs (columns) and on the pooled test "
             "pairs. A group model that gains on its own column and loses on the others has become group-specific; a "
             "large loss on `pooled` is excessive bias.", ""]
    for m in [m for m in ("scpo", "full", "global") if m in cross]:
        lines += [f"**{m}**", "", "| model of \\ test pairs of | " + " | ".join(groups) + " | pooled |",
                  "|---|" + "---|" * (len(groups) + 1)]
        for g in groups:
            row = cross[m][g]
            lines.append(f"| {g} | " + " | ".join(
                (f"**{_fmt(row[h])}**" if h == g else _fmt(row[h])) for h in groups) + f" | {_fmt(row['pooled'])} |")
        lines.append("")
    return lines


def _sweep_section(results: dict[str, Any]) -> list[str]:
    sw = results.get("sweep")
    if not sw:
        return []
    name = sw["group_sets"][0]
    taus, betas = sw["taus"], sw["betas"]
    cell = {(c["tau"], str(c["beta"])): c for c in sw["cells"]}
    lines = ["## tau × beta sweep", "", f"{sw['note']}.", "",
             f"Test accuracy (%), {name}, [95% CI], difference to full fine-tuning (points, p):", "",
             "| tau \\ beta | " + " | ".join(str(b) for b in betas) + " |", "|---|" + "---|" * len(betas)]
    for t in taus:
        cells = []
        for b in betas:
            c = cell.get((t, str(b)))
            r = c[name]
            cells.append(f"{_fmt(r['all'])} {_ci(r['all_ci95'])} {_pct_diff(r['diff_vs_full'])} (p={_p(r['p_vs_full'])})")
        lines.append(f"| {t:g} | " + " | ".join(cells) + " |")
    lines += ["", "Validation accuracy (%) (k-fold on training units; the one to choose by) and kept share:", "",
              "| tau \\ beta | " + " | ".join(str(b) for b in betas) + " |", "|---|" + "---|" * len(betas)]
    for t in taus:
        lines.append(f"| {t:g} | " + " | ".join(
            f"{_fmt(cell[(t, str(b))]['val_accuracy'])} (kept {_fmt(cell[(t, str(b))]['kept_share'])}%)" for b in betas) + " |")
    ref = sw.get("reference", {})
    if ref:
        lines += ["", "References: " + "; ".join(
            f"{m} {_fmt(ref[m][name]['all'])} {_ci(ref[m][name]['all_ci95'])}" for m in ref) + "."]
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# plots


def make_plots(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """PNG plots; returns their paths relative to the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = Path(run_dir) / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    out = []
    for fn in (_plot_accuracy, _plot_selection, _plot_cross, _plot_curves, _plot_sweep):
        fig, name = fn(results, plt)
        if fig is None:
            continue
        out.append(_save(fig, pdir / name, Path(run_dir)))
        plt.close(fig)
    return out


def _plot_accuracy(results: dict[str, Any], plt: Any):
    groups, methods, metrics = results["data"]["groups"], results["methods"], results["metrics"]
    summ = results["summary"]
    cols = groups + list(summ)
    fig, ax = plt.subplots(figsize=(min(18, max(7, 0.18 * len(cols) * len(methods) + 2)), 4.2))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        means, los, his = [], [], []
        for c in cols:
            if c in groups:
                e = metrics[c][m]["all"]
                mu, ci = _f(e["mean"]), e.get("ci95") or [None, None]
            else:
                mu, ci = _f(summ[c][m]["all"]), summ[c][m].get("all_ci95") or [None, None]
            means.append(100 * mu)
            los.append(100 * (mu - _f(ci[0])))
            his.append(100 * (_f(ci[1]) - mu))
        err = np.nan_to_num(np.array([los, his]), nan=0.0).clip(min=0)
        ax.bar(np.arange(len(cols)) + i * width, np.nan_to_num(means), width, yerr=err, label=m, capsize=2)
    ax.axvline(len(groups) - 0.5 + width * (len(methods) - 1) / 2 + 0.05, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(cols)) + width * (len(methods) - 1) / 2, cols, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    lo = min([100 * _f(metrics[g][m]["all"]["mean"]) for g in groups for m in methods
              if not math.isnan(_f(metrics[g][m]["all"]["mean"]))] or [0])
    ax.set_ylim(max(0, lo - 20), 100)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    ax.set_title("Accuracy on each group's test pairs (95% CI); right of the line: means over groups")
    fig.tight_layout()
    return fig, "accuracy.png"


def _plot_selection(results: dict[str, Any], plt: Any):
    groups, sel = results["data"]["groups"], results["selection"]
    n = len(groups)
    fig, axes = plt.subplots(n, 2, figsize=(8, 1.5 * n + 0.8), squeeze=False)
    tau = _f(results.get("select", {}).get("tau", float("nan")))
    for i, g in enumerate(groups):
        for j, (key, label) in enumerate((("p_hist", "p = sigmoid(Δ), all training pairs"),
                                          ("w_hist_kept", "w = min(exp(Δ/β), 1), kept pairs"))):
            h = sel[g][key]
            bins = np.asarray(h["bins"], dtype=float)
            ax = axes[i, j]
            ax.bar(bins[:-1], h["counts"], width=np.diff(bins), align="edge", color="C0" if j == 0 else "C1",
                   edgecolor="white")
            if j == 0 and not math.isnan(tau):
                ax.axvline(tau, color="red", lw=1, ls="--")
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(label + (" (red: τ)" if j == 0 else ""), fontsize=9)
            if j == 0:
                ax.set_ylabel(g, fontsize=8, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig, "selection.png"


def _plot_cross(results: dict[str, Any], plt: Any):
    cross = results.get("cross_group")
    if not cross:
        return None, ""
    groups = results["data"]["groups"]
    ms = [m for m in ("global", "full", "scpo") if m in cross] or list(cross)[:3]
    fig, axes = plt.subplots(1, len(ms), figsize=(0.5 * (len(groups) + 1) * len(ms) + 3, 0.45 * len(groups) + 2.2),
                             squeeze=False, layout="constrained")
    cols = groups + ["pooled"]
    mats = [np.array([[100 * _f(cross[m][g][h]) for h in cols] for g in groups]) for m in ms]
    vmin = np.nanmin([np.nanmin(x) for x in mats])
    vmax = np.nanmax([np.nanmax(x) for x in mats])
    im = None
    for ax, m, mat in zip(axes[0], ms, mats):
        im = ax.imshow(mat, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(groups)), groups, fontsize=7)
        ax.set_title(f"{m}: model of (rows) on test pairs of (cols)", fontsize=8)
        for i in range(len(groups)):
            for j in range(len(cols)):
                if not math.isnan(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if mat[i, j] < (vmin + vmax) / 2 else "black")
    if im is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy (%)")
    return fig, "cross_group.png"


def _plot_curves(results: dict[str, Any], plt: Any):
    cv = results.get("curves")
    if not cv:
        return None, ""
    panels = [(g, cv["per_group"][g], "raw_pairs") for g in cv["per_group"]]
    panels += [(f"{name} (mean)", rows, "fraction") for name, rows in cv["group_sets"].items()]
    ncol = min(4, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.8 * nrow), squeeze=False)
    for k, (title, rows, xkey) in enumerate(panels):
        ax = axes[k // ncol, k % ncol]
        for i, (m, r) in enumerate(rows.items()):
            x = np.asarray(r[xkey], dtype=float)
            y = 100 * np.asarray([_f(a) for a in r["accuracy"]])
            lo = 100 * np.asarray([_f(c[0]) for c in r["ci95"]])
            hi = 100 * np.asarray([_f(c[1]) for c in r["ci95"]])
            ax.plot(x, y, marker="o", color=f"C{i}", label=m)
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
            if m == "scpo" and "pairs_trained" in r and xkey == "raw_pairs":
                for xx, yy, kk in zip(x, y, r["pairs_trained"]):
                    ax.annotate(f"{_f(kk):.0f}", (xx, yy), fontsize=6, textcoords="offset points", xytext=(0, -10),
                                ha="center", color=f"C{i}")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("raw training pairs" if xkey == "raw_pairs" else "fraction of raw pairs", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=7)
    for k in range(len(panels), nrow * ncol):
        axes[k // ncol, k % ncol].axis("off")
    fig.suptitle("Learning curves (95% CI bands; numbers: pairs SCPO kept)", fontsize=10)
    fig.tight_layout()
    return fig, "curves.png"


def _plot_sweep(results: dict[str, Any], plt: Any):
    sw = results.get("sweep")
    if not sw:
        return None, ""
    name = sw["group_sets"][0]
    taus, betas = sw["taus"], [str(b) for b in sw["betas"]]
    cell = {(c["tau"], str(c["beta"])): c for c in sw["cells"]}
    test = np.array([[100 * _f(cell[(t, b)][name]["all"]) for b in betas] for t in taus])
    val = np.array([[100 * _f(cell[(t, b)]["val_accuracy"]) for b in betas] for t in taus])
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.5 * len(taus) + 2.5), squeeze=False)
    for ax, mat, title in ((axes[0, 0], test, f"test accuracy (%), {name}"),
                           (axes[0, 1], val, "validation accuracy (%) (choose by this)")):
        im = ax.imshow(mat, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(betas)), betas)
        ax.set_yticks(range(len(taus)), [f"{t:g}" for t in taus])
        ax.set_xlabel("β")
        ax.set_ylabel("τ")
        ax.set_title(title, fontsize=9)
        for i in range(len(taus)):
            for j in range(len(betas)):
                if not math.isnan(mat[i, j]):
                    mid = (np.nanmin(mat) + np.nanmax(mat)) / 2
                    ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] < mid else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig, "sweep.png"


def _save(fig: Any, path: Path, run_dir: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    return str(path.relative_to(run_dir))


def save_models(run_dir: Path, exp: Any, models: dict, results: dict[str, Any]) -> None:
    """Head mode: the global model (a plain transformers checkpoint) and every group's score layer."""
    import shutil

    import torch
    from safetensors.torch import save_file

    mdir = run_dir / "models"
    tmp = run_dir / ".models.tmp"
    rmtree_inside(tmp, run_dir)
    (tmp / "global").mkdir(parents=True)
    exp.rm.model.save_pretrained(tmp / "global")
    exp.rm.tokenizer.save_pretrained(tmp / "global")
    if results["mode"] == "head":
        seed = results["seeds"][0]
        heads = {}
        for (g, m, s), w in models.items():
            if s == seed and m != "global":
                heads[f"{g}/{m}"] = torch.as_tensor(np.asarray(w, dtype=np.float32)).contiguous()
        save_file(heads, str(tmp / "heads.safetensors"), metadata={"seed": str(seed), "bias": str(float(exp.rm.head_params()[1]))})
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
        from .steer import calibration_entry

        feats = exp.features[pick].astype(np.float64)
        bias = float(exp.rm.head_params()[1])
        raw = {"global": feats @ exp.rm.head_params()[0].numpy().astype(np.float64) + bias}
        for key, w in heads.items():
            raw[key] = feats @ w.numpy().astype(np.float64) + bias
        calibration = raw
    manifest = {
        "mode": results["mode"], "groups": results["data"]["groups"], "methods": results["methods"],
        "score_layer": exp.rm.score_layer_name, "formatter": exp.rm.formatter.to_dict(),
        "global_model": results["global_model"],
    }
    if results["mode"] != "head":  # each group's folder, named by its safe encoding, never by the raw name
        sub = "adapters" if results["mode"] == "lora" else "groups"
        manifest["paths"] = {g: f"{sub}/{path_component(g)}" for g in results["data"]["groups"]
                             if f"{sub}/{path_component(g)}" in models}
    if calibration is not None:
        manifest["calibration"] = calibration_entry(calibration, tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rmtree_inside(mdir, run_dir)
    tmp.rename(mdir)


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def write_run(run_dir: str | Path, cfg: RunConfig, results: dict[str, Any], exp: Any = None, models: dict | None = None) -> None:
    """Write config, results, reference files, report, plots and models into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("versions", versions())
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if models is not None and exp is not None and cfg.output.save_models:
        save_models(run_dir, exp, models, results)
    saved = strict_json(results)  # the report is built from exactly what results.json holds
    if cfg.output.plots:
        results["plots"] = saved["plots"] = make_plots(run_dir, saved)
    maybe_kill("report")
    for name, obj in reference_files(saved).items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", build_report(saved))
    atomic_write_json(run_dir / "results.json", saved)  # last: its presence marks a finished run


def rebuild(run_dir: str | Path) -> Path:
    """``scpo report RUN_DIR``: rebuild report and plots from results.json, training nothing."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    results["plots"] = make_plots(run_dir, results)
    for name, obj in reference_files(results).items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", build_report(results))
    return run_dir / "report.md"
