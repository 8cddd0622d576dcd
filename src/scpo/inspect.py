"""``scpo data inspect``: look at a data set before training.

Per group: split keys (users / questions / annotators) and pairs in train and test, ties and other
unusable rows the loader dropped and, with ``--score``, the share of training pairs the SCPO
filter keeps under the global model and a histogram of their weights. The same numbers are in
every run's ``results.json`` (``data.stats`` and ``selection``).
"""

from __future__ import annotations

import argparse
from typing import Any

from .config import RunConfig, add_config_arguments, config_from_args

__all__ = ["inspect_data", "register"]


def inspect_data(cfg: RunConfig, score: bool = False, progress: bool = True) -> dict[str, Any]:
    """Per-group counts of the data ``cfg`` names (and, with ``score``, the selection)."""
    from .load import column_strings, load_data, pair_table
    from .pipeline import _resolve_groups, split_data

    data = load_data(cfg.data)
    groups = _resolve_groups(data)
    pairs, _, _ = split_data(cfg, data)
    table = pair_table(pairs)
    g_arr, s_arr, k_arr = (column_strings(table.column(c)) for c in ("group", "split", "split_key"))
    per_group_stats = data.stats.get("per_group", {})
    out: dict[str, Any] = {"dataset": data.name, "synthetic": data.synthetic, "split_unit": data.split_unit,
                           "groups": {}, "stats": {k: v for k, v in data.stats.items() if k != "per_group"}}
    for g in groups:
        m = g_arr == g
        out["groups"][g] = {
            "raw_names": data.group_matches.get(g, [g]),
            f"{data.split_unit}s": int(len(set(k_arr[m]))),
            "pairs_train": int((m & (s_arr == "train")).sum()),
            "pairs_test": int((m & (s_arr == "test")).sum()),
            **{k: v for k, v in per_group_stats.get(g, {}).items() if k != "pairs"},
        }
    if score:
        from .pipeline import prepare, selection_summary

        sel = selection_summary(prepare(cfg, progress=progress))
        for g, s in sel.items():
            out["groups"].setdefault(g, {}).update(
                kept_by_filter=s["kept"], kept_share=s["kept_share"], w_hist_kept=s["w_hist_kept"]["counts"],
                global_accuracy_train=s["global_train_accuracy"],
            )
    return out


def _print(report: dict[str, Any]) -> None:
    print(f"{report['dataset']} ({'synthetic' if report['synthetic'] else 'real'} data), split by {report['split_unit']}")
    for k, v in report["stats"].items():
        if isinstance(v, (int, float, str)):
            print(f"  {k}: {v}")
    for g, row in report["groups"].items():
        print(f"  {g}:")
        for k, v in row.items():
            print(f"    {k}: {v}")


def _add(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = sub.add_parser("inspect", help="per-group counts (and, with --score, the SCPO selection)")
    q.add_argument("--config", metavar="YAML", help="config file; flags override it")
    q.add_argument("--score", action="store_true", help="score with the global model and show the selection")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(q)


def _handle(args: argparse.Namespace) -> int:
    import json

    report = inspect_data(config_from_args(args), score=args.score, progress=not args.quiet)
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        _print(report)
    return 0


def register(commands: dict) -> None:
    commands["data"] = ("inspect a data set before training (scpo data inspect ...)", _add, _handle)
