"""Step 7 of the pipeline: write the run directory.

* ``config.yaml`` — the resolved config;
* ``results.json`` — every number (schema: ``docs/results-schema.md``);
* ``full_report.json``, ``partial_report.json``, ``edited_ratios.json`` — the reference
  implementation's files: per group and ``avg``, accuracy of the global model (``before``) and of
  SCPO (``after``) on all test pairs (full) and on the distinctive ones (partial), and the share
  of training pairs the filter keeps (edited ratios);
* ``report.md`` — the tables a person reads; ``plots/*.png``;
* ``models/`` — the global model and the group models (head mode: the score layers).

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .reliability import atomic_write_json, atomic_write_text, maybe_kill

__all__ = ["build_report", "write_run", "versions"]


def versions() -> dict[str, str]:
    import platform

    import datasets
    import torch
    import transformers

    from . import __version__

    return {"scpo": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "python": platform.python_version()}


def _fmt(x: Any, pct: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.0f}"


def reference_files(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The reference implementation's three report files, from results."""
    metrics, sel = results["metrics"], results["selection"]
    groups = results["data"]["groups"]
    after = "scpo" if "scpo" in results["methods"] else results["methods"][-1]
    full, partial, ratios = {}, {}, {}
    for g in groups:
        full[g] = {"before": metrics[g]["global"]["all"]["mean"] if "global" in metrics[g] else None,
                   "after": metrics[g][after]["all"]["mean"]}
        partial[g] = {"before": metrics[g]["global"]["distinctive"]["mean"] if "global" in metrics[g] else None,
                      "after": metrics[g][after]["distinctive"]["mean"]}
        ratios[g] = sel[g]["kept_share"]

    def avg(d: dict) -> Any:
        vals = list(d.values())
        if isinstance(vals[0], dict):
            return {k: float(np.nanmean([v[k] for v in vals if v[k] is not None])) for k in vals[0]}
        return float(np.mean(vals))

    full["avg"], partial["avg"], ratios["avg"] = avg(full), avg(partial), avg(ratios)
    return {"full_report.json": full, "partial_report.json": partial, "edited_ratios.json": ratios}


def build_report(results: dict[str, Any]) -> str:
    """``report.md`` from results (no training; ``scpo report RUN_DIR`` calls this)."""
    lines = ["# SCPO run report", ""]
    if results.get("synthetic_data"):
        lines += ["> **Synthetic data.** These numbers come from scpo's embedded synthetic benchmark "
                  "(invented groups `group-a`...; known ground truth), not from real people.", ""]
    d = results["data"]
    gm = results["global_model"]
    lines += [f"Data: `{d['name']}` · groups: {', '.join(d['groups'])} · split by {d['split_unit']} "
              f"(split seed {d['split_seed']}) · mode: `{results['mode']}` · seeds: {results['seeds']}",
              f"Global model: `{gm['model']}` ({gm.get('trained_on', '')}"
              + (f", {gm['trained_on_pairs']} pairs" if "trained_on_pairs" in gm else "") + ")", ""]
    methods = results["methods"]
    summ = results["summary"]
    lines += ["## Summary: mean accuracy (%) over groups", "",
              "| groups | method | all | distinctive | agreeing | contested | pooled | pairs used | gap closed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in summ.items():
        for m, r in rows.items():
            lines.append(f"| {name} | {m} | {_fmt(r['all'])} | {_fmt(r['distinctive'])} | {_fmt(r['agreeing'])} | "
                         f"{_fmt(r['contested'])} | {_fmt(r['pooled'])} | {_fmt(r.get('pairs_used'), False)} | "
                         f"{_fmt(r.get('gap_closed'))} |")
    lines += ["", "`distinctive` = test pairs the global model ranks wrongly (it scores 0 there by construction); "
              "read it beside `agreeing` and `pooled`. `gap closed` = share of the global→oracle gap on `all` "
              "the method closes (synthetic data only).", ""]
    lines += ["## Per group: accuracy (%) on the group's test pairs, mean ± std over seeds [95% CI]", "",
              "| group | test pairs | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    metrics = results["metrics"]
    for g in d["groups"]:
        cells = []
        for m in methods:
            e = metrics[g][m]["all"]
            ci = e.get("ci95", [float("nan")] * 2)
            cells.append(f"{_fmt(e['mean'])} ± {_fmt(e['std'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]")
        lines.append(f"| {g} | {metrics[g]['test_pairs']['all']} | " + " | ".join(cells) + " |")
    lines += ["", f"CIs: {results.get('split_unit_ci', '')}.", ""]
    lines += ["## Selection (training pairs)", "", "| group | train pairs | kept by filter | kept share | mean weight (kept) | global acc. on train |",
              "|---|---|---|---|---|---|"]
    for g in d["groups"]:
        s = results["selection"][g]
        lines.append(f"| {g} | {s['train_pairs']} | {s['kept']} | {_fmt(s['kept_share'])} | "
                     f"{s['mean_weight_kept']:.3f} | {_fmt(s['global_train_accuracy'])} |")
    for extra in results.get("report_sections", []):
        lines += ["", extra]
    plots = results.get("plots", [])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", f"Versions: {json.dumps(results.get('versions', {}))}", ""]
    return "\n".join(lines)


def make_plots(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """PNG plots; returns their paths relative to the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = run_dir / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    out = []
    groups, methods, metrics = results["data"]["groups"], results["methods"], results["metrics"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(groups)), 4))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        means = [metrics[g][m]["all"]["mean"] * 100 for g in groups]
        cis = [metrics[g][m]["all"].get("ci95", [np.nan, np.nan]) for g in groups]
        err = np.array([[mu - 100 * c[0], 100 * c[1] - mu] for mu, c in zip(means, cis)]).T
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=np.nan_to_num(err), label=m, capsize=2)
    ax.set_xticks(np.arange(len(groups)) + width * (len(methods) - 1) / 2, groups, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy per group and method (95% CI)")
    fig.tight_layout()
    out.append(_save(fig, pdir / "accuracy.png", run_dir))
    plt.close(fig)
    sel = results["selection"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for g in groups:
        ph, wh = sel[g]["p_hist"], sel[g]["w_hist_kept"]
        axes[0].plot(np.array(ph["bins"][:-1]) + 0.05, ph["counts"], marker="o", label=g)
        axes[1].plot(np.array(wh["bins"][:-1]) + 0.05, wh["counts"], marker="o", label=g)
    axes[0].set_title("p = sigmoid(Δ), training pairs")
    axes[1].set_title("w of kept pairs")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    out.append(_save(fig, pdir / "selection.png", run_dir))
    plt.close(fig)
    return out


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
    shutil.rmtree(tmp, ignore_errors=True)
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
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(tmp / name))
    # a reference set of texts on which serving centres and scales every model's rewards
    rng = np.random.default_rng(0)
    n = len(exp.prompts)
    pick = np.sort(rng.choice(n, size=min(512, n), replace=False))
    with open(tmp / "reference.jsonl", "w", encoding="utf-8") as f:
        for i in pick:
            f.write(json.dumps({"prompt": exp.prompts[i], "response": exp.responses[i]}) + "\n")
    manifest = {
        "mode": results["mode"], "groups": results["data"]["groups"], "methods": results["methods"],
        "score_layer": exp.rm.score_layer_name, "formatter": exp.rm.formatter.to_dict(),
        "global_model": results["global_model"],
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(mdir, ignore_errors=True)
    tmp.rename(mdir)


def write_run(run_dir: str | Path, cfg: RunConfig, results: dict[str, Any], exp: Any = None, models: dict | None = None) -> None:
    """Write config, results, reference files, report, plots and models into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("versions", versions())
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    if models is not None and exp is not None and cfg.output.save_models:
        save_models(run_dir, exp, models, results)
    if cfg.output.plots:
        results["plots"] = make_plots(run_dir, results)
    maybe_kill("report")
    for name, obj in reference_files(results).items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", build_report(results))
    atomic_write_json(run_dir / "results.json", results)  # last: its presence marks a finished run


def rebuild(run_dir: str | Path) -> Path:
    """``scpo report RUN_DIR``: rebuild report and plots from results.json, training nothing."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    results["plots"] = make_plots(run_dir, results)
    for name, obj in reference_files(results).items():
        atomic_write_json(run_dir / name, obj)
    atomic_write_text(run_dir / "report.md", build_report(results))
    return run_dir / "report.md"
