"""``scpo run``, ``scpo evaluate``, ``scpo sweep``, ``scpo report`` and ``scpo data inspect``.

``scpo evaluate`` is ``scpo run`` with the defaults of a full evaluation (every method, five
training seeds, learning curves: :data:`EVALUATE_DEFAULTS`), ``scpo sweep`` with those of a τ x β
sweep (:data:`SWEEP_DEFAULTS`); any YAML key or flag overrides them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ScpoError
from ..experiment import inspect_data
from ..parallel import is_main_process
from ..pipeline import run
from ..report import rebuild
from ..report_md import ORACLE_POOLED_NA, as_float, p_text, ratio_text
from .common import Command, add_config_arguments, config_from_args, quiet_everything

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
    "downstream_n": [4, 16, 64],
    "output_dir": "runs/evaluate",
}
"""What ``scpo evaluate`` runs when no flag says otherwise."""


def _parse_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what}: expected comma separated numbers, got {text!r}") from None


def _pct(x: Any) -> str:
    v = as_float(x)
    return "  –  " if math.isnan(v) else f"{100 * v:5.1f}"


def _ci(ci: Any) -> str:
    """`` [a, b]`` in percent, as report.md gives it (empty when there is no CI)."""
    if not ci or len(ci) != 2 or math.isnan(as_float(ci[0])) or math.isnan(as_float(ci[1])):
        return ""
    return f" [{100 * as_float(ci[0]):.1f}, {100 * as_float(ci[1]):.1f}]"


def print_sweep(sw: dict[str, Any]) -> None:
    if not sw:
        return
    name = sw["group_sets"][0]
    print(f"  sweep ({name}): mean test accuracy (%) [95% CI], difference to full fine-tuning, val accuracy")
    for c in sw["cells"]:
        r = c[name]
        print(f"    tau {c['tau']:<4g} beta {str(c['beta']):<4}  {_pct(r['all'])}{_ci(r['all_ci95'])}  "
              f"{100 * as_float(r['diff_vs_full']):+5.1f} ({p_text(r['p_vs_full'])})  val {_pct(c['val_accuracy'])}")


def print_efficiency(results: dict[str, Any]) -> None:
    """The efficiency ratios per group set, each with its 95% CI, as report.md gives them."""
    eff = results.get("curves", {}).get("efficiency")
    if not eff:
        return
    for name, pts in eff["group_sets"].items():
        cells = [f"{e['fraction']:g}: {ratio_text(e)}" for e in pts]
        print(f"  efficiency ratio ({name}, SCPO at fraction: full fine-tuning's pairs / SCPO's [95% CI]): "
              + ", ".join(cells))


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true",
                   help="print the summary alone: no progress bars, no library logging (warnings and errors stay)")
    reuse = p.add_mutually_exclusive_group()
    reuse.add_argument("--overwrite", action="store_true",
                       help="replace a finished run in --output-dir (without it a finished run there is refused; "
                            "this config's finished jobs are reused, another config's outputs removed)")
    reuse.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in --output-dir (an error if there is none to continue; "
                            "an interrupted run also resumes without it)")
    add_config_arguments(p)


def _run_and_print(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Run, and print the summary once: on the main process under a launcher (``None`` on the others)."""
    if args.quiet:
        quiet_everything()
    cfg = config_from_args(args, defaults)
    results = run(cfg, progress=not args.quiet, overwrite=args.overwrite, resume=args.resume,
                  command=getattr(args, "argv", None))
    if not is_main_process():
        return None
    print_summary(results, cfg.output.output_dir, quiet=args.quiet)
    return results


def _run(args: argparse.Namespace) -> int:
    _run_and_print(args)
    return 0


def print_summary(results: dict, out_dir: str, quiet: bool = False) -> None:
    """The console summary of a run: per group set, every method's mean test accuracies with the
    95% CIs report.md gives (the oracle's ``pooled`` is ``n/a``: :data:`~scpo.report_md.ORACLE_POOLED_NA`)."""
    summ = results["summary"]
    if not quiet:
        print()  # apart from the progress bars above
    print(f"scpo: {results['data']['name']} ({'synthetic' if results['synthetic_data'] else 'real'} data), "
          f"mode {results['mode']}, seeds {results['seeds']}, {results['wall_time_s']:.0f} s")
    gm = results.get("global_model") or {}
    if gm.get("trained_on_groups"):
        print(f"  global model: trained on {gm.get('trained_on_pairs')} pairs of {gm.get('trained_on_split_keys')} "
              f"{results['data'].get('split_unit', 'split key')}s ({gm.get('source')}: "
              + ", ".join(f"{g} {n}" for g, n in gm["trained_on_groups"].items()) + ")")
    pooled = (results["data"].get("pooled") or {})
    if pooled.get("non_target_groups"):
        print(f"  pooled test: {pooled.get('test_pairs')} pairs, also of " + ", ".join(pooled["non_target_groups"]))
    oracle = False
    for name, rows in summ.items():
        print(f"  {name}: mean test accuracy (%) [95% CI]")
        for m, r in rows.items():
            extra = f"  pairs used {r['pairs_used']:.0f}" if "pairs_used" in r else ""
            cells = []
            for s in ("all", "distinctive", "pooled"):
                if m == "oracle" and s == "pooled" and math.isnan(as_float(r.get(s))):
                    oracle = True
                    cells.append(f"{s}   n/a")
                else:
                    cells.append(f"{s} {_pct(r.get(s))}{_ci(r.get(f'{s}_ci95'))}")
            print(f"    {m:<14} " + "  ".join(cells) + extra)
    if oracle:
        print(f"  oracle pooled n/a: {ORACLE_POOLED_NA.replace('`', '')}")
    print(f"  report: {out_dir}/report.md")


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    _add_run_args(p)
    p.description = (p.description or "") + (
        ". --tau and --beta take comma separated lists here (default 0.5,0.6,0.7,0.8,1.0 and 0.5,1.1,2,inf); "
        "global and full fine-tuning are trained as references.")


def _sweep(args: argparse.Namespace) -> int:
    if args.tau is not None:
        args.sweep_taus, args.tau = _parse_list(args.tau, "tau"), None
    if args.beta is not None:
        args.sweep_betas, args.beta = _parse_list(args.beta, "beta"), None
    results = _run_and_print(args, SWEEP_DEFAULTS)
    if results is not None:
        print_sweep(results.get("sweep", {}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    results = _run_and_print(args, EVALUATE_DEFAULTS)
    if results is not None:
        print_efficiency(results)
    return 0


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (holding results.json)")


def _report(args: argparse.Namespace) -> int:
    if not (Path(args.run_dir) / "results.json").is_file():
        raise ScpoError(f"{args.run_dir}: no results.json (not a finished run directory)")
    print(rebuild(args.run_dir))
    return 0


def _add_data_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = sub.add_parser("inspect", help="per-group counts (and, with --score, the SCPO selection)", allow_abbrev=False)
    q.add_argument("--score", action="store_true", help="score with the global model and show the selection")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--quiet", action="store_true", help="no progress bars, no library logging")
    add_config_arguments(q)


def _print_inspection(report: dict[str, Any]) -> None:
    print(f"{report['dataset']} ({'synthetic' if report['synthetic'] else 'real'} data), split by {report['split_unit']}")
    for k, v in report["stats"].items():
        if isinstance(v, (int, float, str)):
            print(f"  {k}: {v}")
    for g, row in report["groups"].items():
        print(f"  {g}:")
        for k, v in row.items():
            print(f"    {k}: {v}")


def _data(args: argparse.Namespace) -> int:
    if args.quiet:
        quiet_everything()
    report = inspect_data(config_from_args(args), score=args.score, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        _print_inspection(report)
    return 0


COMMANDS: dict[str, Command] = {
    "run": ("run the SCPO experiment (default: the embedded synthetic benchmark)", _add_run_args, _run),
    "report": ("rebuild report.md and plots of a run from its results.json", _add_report_args, _report),
    "data": ("inspect a data set before training (scpo data inspect ...)", _add_data_args, _data),
    "sweep": ("tau x beta sweep of SCPO (with global and full fine-tuning as references)", _add_sweep_args, _sweep),
    "evaluate": ("full evaluation: every method, 5 seeds, CIs, paired tests, learning curves "
                 "(scpo run with evaluation defaults)", _add_run_args, _evaluate),
}
