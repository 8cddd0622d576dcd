"""The run's figures (``plots/*.png``): accuracy per group and method with CI bars, the selection
(histograms of p and w per group), the cross-group heatmap, learning curves, the τ x β heatmap.

Drawn from ``results.json`` alone, so ``scpo report RUN_DIR`` redraws them without training.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .report_md import as_float
from .rundir import atomic_write_bytes

__all__ = ["PLOT_FILES", "make_plots"]


PLOT_FILES = ("accuracy.png", "selection.png", "cross_group.png", "curves.png", "sweep.png")


def make_plots(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """PNG plots; returns their paths relative to the run directory."""
    import matplotlib  # start-up time: matplotlib loads only when plots are drawn

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
                mu, ci = as_float(e["mean"]), e.get("ci95") or [None, None]
            else:
                mu, ci = as_float(summ[c][m]["all"]), summ[c][m].get("all_ci95") or [None, None]
            means.append(100 * mu)
            los.append(100 * (mu - as_float(ci[0])))
            his.append(100 * (as_float(ci[1]) - mu))
        err = np.nan_to_num(np.array([los, his]), nan=0.0).clip(min=0)
        ax.bar(np.arange(len(cols)) + i * width, np.nan_to_num(means), width, yerr=err, label=m, capsize=2)
    ax.axvline(len(groups) - 0.5 + width * (len(methods) - 1) / 2 + 0.05, color="grey", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(cols)) + width * (len(methods) - 1) / 2, cols, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    lo = min([100 * as_float(metrics[g][m]["all"]["mean"]) for g in groups for m in methods
              if not math.isnan(as_float(metrics[g][m]["all"]["mean"]))] or [0])
    ax.set_ylim(max(0, lo - 20), 100)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    ax.set_title("Accuracy on each group's test pairs (95% CI); right of the line: means over groups")
    fig.tight_layout()
    return fig, "accuracy.png"


def _plot_selection(results: dict[str, Any], plt: Any):
    groups, sel = results["data"]["groups"], results["selection"]
    n = len(groups)
    fig, axes = plt.subplots(n, 2, figsize=(8, 1.5 * n + 0.8), squeeze=False)
    tau = as_float(results.get("select", {}).get("tau", float("nan")))
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
    mats = [np.array([[100 * as_float(cross[m][g][h]) for h in cols] for g in groups]) for m in ms]
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
            y = 100 * np.asarray([as_float(a) for a in r["accuracy"]])
            lo = 100 * np.asarray([as_float(c[0]) for c in r["ci95"]])
            hi = 100 * np.asarray([as_float(c[1]) for c in r["ci95"]])
            ax.plot(x, y, marker="o", color=f"C{i}", label=m)
            ax.fill_between(x, lo, hi, color=f"C{i}", alpha=0.15)
            if m == "scpo" and "pairs_trained" in r and xkey == "raw_pairs":
                for xx, yy, kk in zip(x, y, r["pairs_trained"]):
                    ax.annotate(f"{as_float(kk):.0f}", (xx, yy), fontsize=6, textcoords="offset points", xytext=(0, -10),
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
    test = np.array([[100 * as_float(cell[(t, b)][name]["all"]) for b in betas] for t in taus])
    val = np.array([[100 * as_float(cell[(t, b)]["val_accuracy"]) for b in betas] for t in taus])
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
    atomic_write_bytes(path, buf.getvalue())
    return str(path.relative_to(run_dir))
