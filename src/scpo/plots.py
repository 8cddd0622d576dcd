"""The run's figures (``plots/*.png``): accuracy per group and method with CI bars, the selection
(histograms of p and w per group), the cross-group heatmap, learning curves, the τ x β heatmap and
the training curves.

Drawn from ``results.json`` alone (the training curves from its ``training.shown``; every fit's
curve is in ``training_log.json``), so ``scpo report RUN_DIR`` redraws them without training.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from .report_downstream import plot_downstream
from .report_md import as_float
from .rundir import atomic_write_bytes

__all__ = ["PLOT_FILES", "make_plots"]


PLOT_FILES = ("accuracy.png", "selection.png", "cross_group.png", "curves.png", "sweep.png", "training.png", "downstream.png")


def make_plots(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """PNG plots; returns their paths relative to the run directory."""
    import matplotlib  # start-up time: matplotlib loads only when plots are drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pdir = Path(run_dir) / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    out = []
    for fn in (_plot_accuracy, _plot_selection, _plot_cross, _plot_curves, _plot_sweep, _plot_training, plot_downstream):
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
    """Per group (rows): p = σ(Δ) of all training pairs with τ and the count kept, and w of the kept
    pairs on a log count axis (the last bin holds every kept pair with Δ >= 0, whose w is 1)."""
    groups, sel = results["data"]["groups"], results["selection"]
    n = len(groups)
    fig, axes = plt.subplots(n, 2, figsize=(9, 1.7 * n + 1.2), squeeze=False)
    tau = as_float(results.get("select", {}).get("tau", float("nan")))
    beta = results.get("select", {}).get("beta")
    for i, g in enumerate(groups):
        s = sel[g]
        for j, key in enumerate(("p_hist", "w_hist_kept")):
            h = s[key]
            bins = np.asarray(h["bins"], dtype=float)
            counts = np.asarray(h["counts"], dtype=float)
            ax = axes[i, j]
            ax.bar(bins[:-1], counts, width=np.diff(bins), align="edge", color="C0" if j == 0 else "C1", edgecolor="white")
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
            if j == 0:
                if not math.isnan(tau):
                    ax.axvline(tau, color="red", lw=1, ls="--")
                ax.set_ylabel("training pairs", fontsize=8)
                ax.set_title(f"{g}: {s['train_pairs']} training pairs, kept (p < τ) {s['kept']} "
                             f"({100 * as_float(s['kept_share']):.0f}%)", fontsize=8, loc="left")
            else:
                ax.set_yscale("symlog", linthresh=1)
                ax.set_ylim(0, max(2.0, counts.max() * 3))
                ax.set_ylabel("kept pairs (log)", fontsize=8)
                for x0, wd, c in zip(bins[:-1], np.diff(bins), counts):
                    if c:
                        ax.text(x0 + wd / 2, c, f"{c:.0f}", ha="center", va="bottom", fontsize=6)
                mw = as_float(s.get("mean_weight_kept"))
                ax.set_title(f"{g}: {s['kept']} kept pairs" + (f", mean w {mw:.2f}" if not math.isnan(mw) else ""),
                             fontsize=8, loc="left")
            if i == n - 1:
                ax.set_xlabel("p = σ(Δ)  (Δ: the global model's margin)" if j == 0 else "w = min(exp(Δ/β), 1)", fontsize=8)
    fig.suptitle("Selection. Left: p of every training pair (red: τ" + (f" = {tau:g}" if not math.isnan(tau) else "")
                 + ").\nRight: weights of the kept pairs" + (f" (β = {beta})" if beta is not None else "")
                 + ", log count axis; the last bin holds w = 1 (Δ ≥ 0)", fontsize=9)
    fig.tight_layout()
    return fig, "selection.png"


def _plot_cross(results: dict[str, Any], plt: Any):
    """Per trained method, the model of each group (rows) on each group's test pairs (columns); the
    global model is one model, so it is one row (``global``) on top of every panel, not a panel of
    identical rows."""
    cross = results.get("cross_group")
    if not cross:
        return None, ""
    groups = results["data"]["groups"]
    cols = groups + ["pooled"]
    ms = [m for m in ("full", "scpo") if m in cross] or [m for m in cross if m != "global"][:2]
    has_global = "global" in cross
    g_row = [100 * as_float(cross["global"][groups[0]][h]) for h in cols] if has_global else None
    if not ms:  # only the global model: its one row
        ms, mats, labels = ["global"], [np.array([g_row])], [["global"]]
    else:
        mats = [np.array(([g_row] if has_global else []) + [[100 * as_float(cross[m][g][h]) for h in cols] for g in groups])
                for m in ms]
        labels = [(["global (one model)"] if has_global else []) + groups for _ in ms]
    fig, axes = plt.subplots(1, len(ms), figsize=(0.5 * (len(groups) + 1) * len(ms) + 3.5, 0.45 * len(labels[0]) + 2.4),
                             squeeze=False, layout="constrained")
    vmin = np.nanmin([np.nanmin(x) for x in mats])
    vmax = np.nanmax([np.nanmax(x) for x in mats])
    im = None
    for ax, m, mat, rows in zip(axes[0], ms, mats, labels):
        im = ax.imshow(mat, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("test pairs of", fontsize=8)
        ax.set_ylabel("model of", fontsize=8)
        if has_global and m != "global":
            ax.axhline(0.5, color="white", lw=2)
        ax.set_title(f"{m} models: accuracy (%)" if m != "global" else "the global model: accuracy (%)", fontsize=8)
        for i in range(len(rows)):
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


def _plot_training(results: dict[str, Any], plt: Any):
    """Loss against step (Adam, Trainer) or Newton iteration, one panel per trained method (at most 4),
    one line per group (``results["training"]["shown"]``: the first split and training seed, at most 8
    groups a method), log y when a panel's loss spans more than a factor of 10."""
    tr = results.get("training") or {}
    shown = tr.get("shown") or []
    if not shown:
        return None, ""
    methods = list(dict.fromkeys(c["method"] for c in shown))[:4]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(methods), figsize=(max(6.0, 4.2 * len(methods) + 0.6), 3.7), squeeze=False)
    for ax, m in zip(axes[0], methods):
        mine = [c for c in shown if c["method"] == m]
        ys: list[float] = []
        for i, c in enumerate(mine):
            y = [as_float(v) for v in c["loss"]]
            ys += [v for v in y if v > 0 and math.isfinite(v)]
            ax.plot(c["steps"], y, marker="." if len(y) <= 30 else None, ms=3, lw=1, color=f"C{i % 10}", label=c["group"])
        if ys and max(ys) / min(ys) > 10:
            ax.set_yscale("log")
        n_all = (tr.get("methods") or {}).get(m, {}).get("fits", len(mine))
        ax.set_title(f"{m}: {len(mine)} of {n_all} fits (seed {mine[0]['seed']})", fontsize=9)
        ax.set_xlabel("Newton iteration" if mine[0]["x"] == "iteration" else "training step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2 if len(mine) > 4 else 1)
    kind = {"adam": "Adam (mean mini-batch objective between points)", "newton": "Newton solver",
            "pooler": "pooler + score layer, full-batch Adam from the Newton score layer",
            "trainer": "transformers Trainer (its logged loss)"}.get(str(tr.get("solver")), str(tr.get("solver")))
    fig.suptitle(f"Training curves, {tr.get('mode')} mode, {kind}\nevery fit: {tr.get('log', 'training_log.json')}",
                 fontsize=9)
    fig.tight_layout()
    return fig, "training.png"


def _save(fig: Any, path: Path, run_dir: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return str(path.relative_to(run_dir))
