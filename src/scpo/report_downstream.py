"""The downstream best-of-N study in ``report.md`` and ``plots/downstream.png``, from ``results.json`` alone.

See :mod:`scpo.studies.downstream` for what is measured. Kept apart from :mod:`scpo.report_md` and
:mod:`scpo.plots` (each calls one function here) so the study's presentation lives in one place.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["downstream_section", "plot_downstream"]


def _f(x: Any) -> float:
    try:
        return float("nan") if x is None else float(x)
    except (TypeError, ValueError):
        return float("nan")


def _v(x: Any, pct: bool, signed: bool = False) -> str:
    v = _f(x)
    if math.isnan(v):
        return "–"
    if pct:
        v *= 100
    return f"{v:+.{1 if pct else 3}f}" if signed else f"{v:.{1 if pct else 3}f}"


def _e(e: Any, pct: bool, signed: bool = False) -> str:
    """``mean [lo, hi]`` of a ``{"mean", "ci95"}`` entry."""
    if not isinstance(e, dict):
        return "–"
    ci = e.get("ci95") or [None, None]
    s = _v(e.get("mean"), pct, signed)
    if not math.isnan(_f(ci[0])):
        s += f" [{_v(ci[0], pct, signed)}, {_v(ci[1], pct, signed)}]"
    return s


def _p(x: Any) -> str:
    v = _f(x)
    return "–" if math.isnan(v) else (f"{v:.3f}" if v >= 0.001 else "<0.001")


def _accuracy_test(results: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
    t = results.get("tests", {}).get("group_sets", {}).get(key, {}).get(name, {}).get("all")
    return t if isinstance(t, dict) else None


def _verdict(diff: float, ci: Any) -> str:
    lo, hi = (_f(ci[0]), _f(ci[1])) if ci else (math.nan, math.nan)
    if math.isnan(lo):
        return "undetermined"
    if lo > 0:
        return "higher"
    if hi < 0:
        return "lower"
    return "no difference beyond noise"


def downstream_section(results: dict[str, Any]) -> list[str]:
    """The report's downstream section (empty without the study)."""
    ds = results.get("downstream")
    if not ds:
        return []
    lines = ["## Downstream: what a group gets from its model in use (best-of-N)", ""]
    if ds.get("skipped"):
        return lines + [f"Not measured: {ds['skipped']}.", ""]
    synthetic = ds["kind"] == "synthetic"
    pct = not synthetic
    unit = ("true utility" if synthetic else "share of the group's people matched (%)" if ds.get("source")
            else "share of the country's respondents matched (%)")
    if synthetic:
        lines += [f"{ds['design']}. Each group's model picks the candidate it ranks first; the pick is scored by "
                  f"{ds['truth']}. Population: {ds['population']}. {ds['prompts']} prompts × "
                  f"{ds['candidates_per_prompt']} candidates ({ds['candidates']} new texts scored by the encoder).", ""]
    else:
        first = next(iter(ds["settings"].values()))["per_group"]
        if ds.get("source"):
            lines += [f"Candidates and held-out choices: `{ds['source']}` (`--downstream-candidates`).", ""]
        lines += [f"{ds['design']}: the value of a pick is the {ds['truth']}. Population: {ds['population']}. "
                  f"{ds['candidates']} candidate options of the {ds['prompts']} questions the groups answered; test "
                  "questions per group (first split): " + ", ".join(f"{g} {r['items']}" for g, r in first.items())
                  + ".", ""]
    lines += [f"`utility` = mean {unit} of the pick; `gain` = minus the global model's pick's; `gap closed` = gain / "
              "(oracle − global); `win / loss` = share of choices where the pick is better / worse than the global "
              "model's for the group (the rest: the same value, mostly the same pick); `population loss` = the "
              "population's utility of the global pick minus that of the group's pick (the downstream *excessive "
              "bias*: > 0, the population pays). 95% CIs: " + "; ".join(ds["ci"]["resamples"]) + ".", ""]
    for setting, tab in ds["settings"].items():
        lines += [f"**{setting if synthetic else 'test questions'}**", "",
                  "| groups | method | utility | gain | gap closed | win / loss (%) | population loss |",
                  "|---|---|---|---|---|---|---|"]
        for name, rows in tab["group_sets"].items():
            for m in ds["methods"]:
                r = rows[m]
                lines.append(f"| {name} | {m} | {_e(r['utility'], pct)} | {_e(r['gain'], pct, True)} | "
                             f"{_e(r['gap_closed'], True)} | {_v(r['win_rate']['mean'], True)} / "
                             f"{_v(r['loss_rate']['mean'], True)} | {_e(r['population_loss'], pct, True)} |")
            lines.append(f"| {name} | *oracle* | {_e(rows['oracle'], pct)} | | | | |")
            lines.append(f"| {name} | *random pick* | {_e(rows['random'], pct)} | | | | |")
        lines.append("")
    # paired tests and agreement with accuracy
    last = list(ds["settings"])[-1]
    tests = ds["settings"][last]["tests"]
    keys = [k for k in ("scpo vs full", "scpo vs global", "full vs global") if k in tests]
    if keys:
        lines += [f"Paired tests ({last if synthetic else 'test questions'}; utility difference [95% CI], p) beside "
                  "the same comparison in pairwise test accuracy (`all`, points):", "",
                  "| comparison | groups | utility diff | p | population-loss diff | accuracy diff | p (accuracy) | "
                  "agree? |", "|---|---|---|---|---|---|---|---|"]
        for k in keys:
            for name in ds["group_sets"]:
                t = tests[k][name]["utility"]
                tp = tests[k][name]["population_loss"]
                acc = _accuracy_test(results, k, name)
                down_v, acc_v = _verdict(_f(t["diff"]), t["ci95"]), "–"
                agree = "–"
                if acc is not None:
                    acc_v = _verdict(_f(acc["diff"]), acc["ci95"])
                    agree = "yes" if acc_v == down_v else f"no (downstream: {down_v}; accuracy: {acc_v})"
                acc_s = (f"{_v(acc['diff'], True, True)} [{_v(acc['ci95'][0], True, True)}, "
                         f"{_v(acc['ci95'][1], True, True)}]") if acc else "–"
                lines.append(f"| {k} | {name} | {_v(t['diff'], pct, True)} [{_v(t['ci95'][0], pct, True)}, "
                             f"{_v(t['ci95'][1], pct, True)}] | {_p(t['p_value'])} | {_v(tp['diff'], pct, True)} | "
                             f"{acc_s} | {_p(acc['p_value']) if acc else '–'} | {agree} |")
        lines.append("")
    st = ds.get("steering")
    if st:
        al = st["alphas"]
        lines += [f"**Steering** ({st['setting']}): the pick of (1 − α) z_global + α z_group (calibrated rewards, as "
                  "served). `kept` = share of the α = 1 gain kept at α.", "",
                  "| method | groups | " + " | ".join(f"α={a:g}: gain / kept / population loss" for a in al) + " |",
                  "|---|---|" + "---|" * len(al)]
        for m, rows in st["alpha"].items():
            for name, r in rows.items():
                cells = [f"{_e(g, False, True)} / {_v(k['mean'], True)}% / {_v(pl['mean'], False, True)}"
                         for g, k, pl in zip(r["gain"], r["kept_share"], r["population_loss"])]
                lines.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
        if st.get("mixture"):
            lines += ["", "**Two-group mixtures**: the pick of λ z_group + (1 − λ) z_partner, partner = the group "
                      "with the most training pairs other than the group ("
                      + ", ".join(f"{g}→{h}" for g, h in st["partners"].items()) + "): gain for the group / for the "
                      "partner / population loss, against the global model's pick.", "",
                      "| method | groups | " + " | ".join(f"λ={a:g}" for a in al) + " |", "|---|---|" + "---|" * len(al)]
            for m, rows in st["mixture"].items():
                for name, r in rows.items():
                    cells = [f"{_v(g['mean'], False, True)} / {_v(pg['mean'], False, True)} / {_v(pl['mean'], False, True)}"
                             for g, pg, pl in zip(r["gain"], r["partner_gain"], r["population_loss"])]
                    lines.append(f"| {m} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    tm = ds.get("timing_s", {})
    if tm:
        lines += ["Time of the study (s): " + ", ".join(f"{k} {v:.1f}" for k, v in tm.items())
                  + f"; candidates scored: {ds.get('score', {}).get('computed', '–')} computed, "
                    f"{ds.get('score', {}).get('cached', '–')} from the cache.", ""]
    return lines


def plot_downstream(results: dict[str, Any], plt: Any) -> tuple[Any, str]:
    """Gain over the global model's pick against N, per method, one panel per group set (95% CI bars);
    answer-share data: the share matched per method and group set."""
    ds = results.get("downstream")
    if not ds or ds.get("skipped"):
        return None, ""
    names = ds["group_sets"]
    methods = [m for m in ds["methods"] if m != "global"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.2), squeeze=False)
    if ds["kind"] == "synthetic":
        ns = ds["n"]
        for k, name in enumerate(names):
            ax = axes[0, k]
            for i, m in enumerate(methods):
                e = [ds["settings"][f"N={n}"]["group_sets"][name][m]["gain"] for n in ns]
                y = [_f(x["mean"]) for x in e]
                lo = [y[j] - _f(x["ci95"][0]) for j, x in enumerate(e)]
                hi = [_f(x["ci95"][1]) - y[j] for j, x in enumerate(e)]
                off = (i - (len(methods) - 1) / 2) * 0.04
                ax.errorbar([n * 2 ** off for n in ns], y, yerr=[lo, hi], marker="o", ms=3, capsize=2, color=f"C{i}",
                            label=m, lw=1)
            orc = [_f(ds["settings"][f"N={n}"]["group_sets"][name]["oracle"]["mean"])
                   - _f(ds["settings"][f"N={n}"]["group_sets"][name]["global"]["utility"]["mean"]) for n in ns]
            ax.plot(ns, orc, ls="--", color="grey", lw=1, label="oracle")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlabel("N (candidates)", fontsize=8)
            ax.set_ylabel("gain in true utility over global's pick", fontsize=8)
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.legend(fontsize=6, loc="upper left")
        fig.suptitle("Best-of-N: the group's true utility gained over the global model's pick (95% CI)", fontsize=9)
    else:
        tab = ds["settings"]["questions"]["group_sets"]
        for k, name in enumerate(names):
            ax = axes[0, k]
            rows = ds["methods"] + ["oracle", "random"]
            vals = [tab[name][m]["utility"] if m in ds["methods"] else tab[name][m] for m in rows]
            y = [100 * _f(v["mean"]) for v in vals]
            err = [[y[j] - 100 * _f(v["ci95"][0]) for j, v in enumerate(vals)],
                   [100 * _f(v["ci95"][1]) - y[j] for j, v in enumerate(vals)]]
            ax.bar(range(len(rows)), y, yerr=err, capsize=2, color=[f"C{i}" for i in range(len(rows))])
            ax.set_xticks(range(len(rows)), rows, rotation=45, fontsize=7, ha="right")
            ax.set_ylabel("respondents matched (%)", fontsize=8)
            ax.set_title(name, fontsize=9)
        fig.suptitle("Top-ranked option: share of the country's respondents who chose it (95% CI)", fontsize=9)
    fig.tight_layout()
    return fig, "downstream.png"
