"""``report.md``: the tables a person reads, built from ``results.json`` alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .report_downstream import downstream_section

__all__ = ["ORACLE_POOLED_NA", "as_float", "build_report", "p_text", "ratio_text"]


def as_float(x: Any) -> float:
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
    v = as_float(x)
    if math.isnan(v):
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.0f}"


def _ci(ci: Any) -> str:
    if not ci or len(ci) != 2 or math.isnan(as_float(ci[0])):
        return ""
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _pct_diff(x: Any) -> str:
    v = as_float(x)
    return "–" if math.isnan(v) else f"{100 * v:+.1f}"


def _p(x: Any) -> str:
    """A p-value for a table cell: ``0.012``, ``< 0.001``, ``–``."""
    v = as_float(x)
    if math.isnan(v):
        return "–"
    return f"{v:.3f}" if v >= 0.001 else "< 0.001"


def p_text(x: Any) -> str:
    """A p-value in a sentence: ``p = 0.012``, ``p < 0.001`` (never ``p = <0.001``), ``p = –``."""
    v = _p(x)
    return f"p {v}" if v.startswith("<") else f"p = {v}"


ORACLE_POOLED_NA = ("a group's true utility is known on the group's own pairs only, not on the other groups' pairs "
                    "that `pooled` adds")
"""Why the oracle's ``pooled`` cell is empty (results.json holds ``null`` there)."""


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
                + p_text(t["p_value"]))

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
        cells = [ratio_text(e) for e in pts]
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
                for subset in (("pooled", "agreeing") if _pooled_is_a_finding(results) else ("agreeing",)):
                    d = diff_line(m, "full", focus, subset)
                    if d:
                        bias.append(f"{m} − full on {subset}: {d}")
        lines.append(f"- **Excessive bias** (paper: the weighting keeps the group model from drifting away from what "
                     f"everyone agrees on). Accuracy on the pairs the global model ranks right (`agreeing`) and on every "
                     f"group's test pairs (`pooled`), {focus}: " + "; ".join(bias) + ". A drop there is the bias the "
                     "paper means; compare filter-only (no weighting) with scpo.")
        if not _pooled_is_a_finding(results):
            lines.append("- `pooled` is here the one target group's own test set (no other group and no population "
                         "in the data): it says nothing about bias towards everyone else, and is not read as such.")
    return out + lines + [""]


def _pooled_is_a_finding(results: dict[str, Any]) -> bool:
    """Whether ``pooled`` holds pairs of more than the one target group (else it is that group's own test set)."""
    pooled = (results.get("data") or {}).get("pooled") or {}
    return len(pooled.get("groups") or [None, None]) > 1


def ratio_text(e: dict[str, Any]) -> str:
    """An efficiency ratio with its 95% CI: ``1.84 [1.20, 2.95]``, ``≤ 0.50 [...]``, ``not reached (> 3.10)``."""
    if e.get("ratio") is None:
        if e.get("status") == "not_reached":
            return f"not reached (> {as_float(e['ratio_bound_value']):.2f})"
        return "–"
    pre = "≤ " if e.get("status") == "at_first_point" else ""
    ci = e.get("ci95")
    cis = ""
    if ci:
        lo = "–" if ci[0] is None else f"{as_float(ci[0]):.2f}"
        hi = "not reached" if ci[1] is None else f"{as_float(ci[1]):.2f}"
        cis = f" [{lo}, {hi}]"
    return f"{pre}{as_float(e['ratio']):.2f}{cis}"


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
            cells.append(f"{_pct_diff(t['diff'])} [{_pct_diff(t['ci95'][0])}, {_pct_diff(t['ci95'][1])}] {p_text(t['p_value'])}")
        lines.append(f"| {a} − {b} | {what} | " + " | ".join(cells) + " |")
    # a plain statement of what the single components do, which way it falls
    name = "minority_groups" if "minority_groups" in sets else sets[0]
    if "filter-only vs full" in tests and "weight-only vs full" in tests:
        f = tests["filter-only vs full"][name]["all"]
        w = tests["weight-only vs full"][name]["all"]
        df, dw = as_float(f["diff"]), as_float(w["diff"])
        sig = [n for n, t in (("the filter", f), ("the weighting", w)) if as_float(t["p_value"]) < 0.05]
        if abs(dw - df) < 0.005:
            lead = "the filter alone and the weighting alone change accuracy by about the same amount"
        else:
            lead = (f"the {'weighting' if dw > df else 'filter'} alone does better than the "
                    f"{'filter' if dw > df else 'weighting'} alone")
        lines += ["", f"On {name}, against full fine-tuning, {lead} (filter alone {_pct_diff(f['diff'])} points, "
                  f"{p_text(f['p_value'])}; weighting alone {_pct_diff(w['diff'])}, {p_text(w['p_value'])}); "
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
    n_runs = _n_runs(results)
    if ci:
        runs = (f"Every number is a mean over {n_runs} runs (split seed × training seed); ± is the standard "
                "deviation over runs; " if n_runs > 1 else
                "Every number comes from one run (1 split seed × 1 training seed), so there is no ± (a standard "
                "deviation needs 2 runs or more: `--seeds 0 1 2`); ")
        lines += [runs + "[a, b] is a 95% "
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
            cells = [_cell(r, s, m) for s in subsets]
            lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {_fmt(r.get('pairs_used'), False)} | "
                         f"{_fmt(r.get('gap_closed'))} |")
    lines += ["", "`all` = the group's test pairs. `distinctive` = test pairs the global model ranks wrongly (the "
              "global model scores 0 there *by construction*, and a model that merely disagrees more with it scores "
              "high there while losing elsewhere: read it only beside `agreeing` and `pooled`). `agreeing` = test "
              "pairs the global model ranks rightly. `contested` = pairs whose order in the group contradicts the "
              "population's (defined by the data, not by the global model). `pooled` = every group's test pairs "
              "(excessive bias towards the group shows as a drop). `gap closed` = share of the global→oracle gap on "
              "`all` (synthetic data only)"
              + (f"; the oracle's `pooled` is n/a: {ORACLE_POOLED_NA}" if any("oracle" in rows for rows in summ.values())
                 else "") + ".", ""]
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
    lines += ["## Per group: accuracy (%) on the group's test pairs, "
              + ("mean ± std over runs [95% CI]" if n_runs > 1 else "1 run (1 seed, no std) [95% CI]"), "",
              f"| group | test pairs (units){first} | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for g in d["groups"]:
        cells = []
        for m in methods:
            e = metrics[g][m]["all"]
            spread = f" ± {_fmt(e['std'])}" if n_runs > 1 else ""
            cells.append(f"{_fmt(e['mean'])}{spread} {_ci(e.get('ci95'))}".strip())
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
                             f"{_pct_diff(t['ci95'][1])}], {p_text(t['p_value'])}")
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
                     f"{as_float(s['mean_weight_kept']):.3f} | {_fmt(s['global_train_accuracy'])} |")
    lines.append("")
    lines += _sweep_section(results)
    lines += _training_section(results)
    lines += downstream_section(results)
    for extra in results.get("report_sections", []):
        lines += [extra, ""]
    plots = results.get("plots", [])
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    timing = results.get("timing_s")
    if timing:
        lines.append("Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
                     + f", total {as_float(results.get('wall_time_s')):.0f}")
    lines += [f"Versions: {json.dumps(results.get('versions', {}))}", ""]
    return "\n".join(lines)


def _cell(row: dict[str, Any], subset: str, method: str) -> str:
    """One accuracy cell with its CI; the oracle's ``pooled`` is ``n/a`` (:data:`ORACLE_POOLED_NA`)."""
    if method == "oracle" and subset == "pooled" and math.isnan(as_float(row.get(subset))):
        return "n/a"
    return f"{_fmt(row.get(subset))} {_ci(row.get(f'{subset}_ci95'))}".strip()


def _n_runs(results: dict[str, Any]) -> int:
    """Runs (split seed × training seed) behind every mean."""
    return len(results.get("runs", [])) or len(results.get("split_seeds") or [0]) * len(results["seeds"])


def _training_section(results: dict[str, Any]) -> list[str]:
    """How the fits trained: per method the fits and median loss at the first and last recorded point,
    where the curves are (``training_log.json``, the plot, TensorBoard)."""
    tr = results.get("training")
    if not tr:
        return []
    what = {"adam_steps": "the mini-batch objective of Adam's steps (mean over the steps since the last point) and "
                          "the gradient norm", "newton_iterations": "the Newton solver's objective and gradient norm "
                          "at each iteration", "pooler_adam_steps": "the full-batch Adam objective of pooler and score "
                          "layer at each step, from the Newton score layer (step 0)", "trainer_log_history": "the Trainer's log history (loss, grad_norm, "
                          "learning_rate every `logging_steps`)"}
    lines = ["## Training", "",
             f"Every final fit's curve ({tr['fits']} fits; " + "; ".join(what.get(k, k) for k in tr.get("kinds", []))
             + f") is in `{tr['log']}`" + (", drawn in `plots/training.png`" if "plots/training.png" in results.get("plots", [])
                                            else "") + ". Median over fits:", "",
             "| method | fits | loss at the first point | loss at the last point | points per fit |", "|---|---|---|---|---|"]
    for m, r in tr.get("methods", {}).items():
        first, last = as_float(r.get("median_first_loss")), as_float(r.get("median_last_loss"))
        lines.append(f"| {m} | {r.get('fits')} | {'–' if math.isnan(first) else f'{first:.4g}'} | "
                     f"{'–' if math.isnan(last) else f'{last:.4g}'} | {_fmt(r.get('median_points'), False)} |")
    lines.append("")
    if tr.get("report_to"):
        lines.append("Reported to: " + ", ".join(f"`{t}`" for t in tr["report_to"])
                     + (f" (`tensorboard --logdir {tr['tensorboard_dir']}` in the run directory)" if tr.get("tensorboard_dir") else "")
                     + ".")
        lines.append("")
    return lines


def _bias(results: dict[str, Any]) -> list[str]:
    summ = results["summary"]
    methods = results["methods"]
    scratch = (" `scratch` (a group model trained from zero on the group only) is the reference for how far a model "
               "free of the global one goes." if "scratch" in methods else "")
    has_oracle = any("oracle" in rows for rows in summ.values())
    lines = ["## Bias: before (global) and after, on the pairs the global model gets right and wrong", "",
             "Accuracy (%) [95% CI], mean over groups. `distinctive` is shown only beside `agreeing` and `pooled`: the "
             "global model scores 0 there by construction." + scratch
             + (f" The oracle's `pooled` is n/a: {ORACLE_POOLED_NA}." if has_oracle else ""), ""]
    for name, rows in summ.items():
        lines += [f"**{name}**", "", "| method | agreeing | distinctive | contested | pooled | all |", "|---|---|---|---|---|---|"]
        for m in methods + (["oracle"] if "oracle" in rows else []):
            r = rows[m]
            lines.append(f"| {m} | " + " | ".join(_cell(r, s, m) for s in ("agreeing", "distinctive", "contested", "pooled", "all"))
                         + " |")
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
            lines.append(f"| {g} | " + " | ".join(ratio_text(e) for e in pts) + " |")
        for name, pts in eff["group_sets"].items():
            lines.append(f"| **{name}** (mean curve) | " + " | ".join(ratio_text(e) for e in pts) + " |")
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
            cells.append(f"{_fmt(r['all'])} {_ci(r['all_ci95'])} {_pct_diff(r['diff_vs_full'])} ({p_text(r['p_vs_full'])})")
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
