"""The input-format effect of TRL's trainers on an exported checkpoint (issue 13 item 1).

Exports one group of a finished run (``--run``, default ``runs/default``: ``scpo run`` with defaults) with that
group's held-out test pairs as ``eval_pairs``, so the export's card carries the table, and prints it: pairwise
accuracy and Pearson r with scpo's rewards, as scpo feeds the model (``scpo score``/``serve``), as
``trl.RewardTrainer`` builds string data and as ``trl.GRPOTrainer`` feeds a reward model
(``scpo.export.trl_inputs``; TRL itself is not imported).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/interop_formats.py --run runs/default --group group-c --out /tmp/export-c
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _common  # noqa: F401  (offline Hub, src on the path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/default")
    ap.add_argument("--group", default="group-c")
    ap.add_argument("--out", required=True)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from scpo.config import RunConfig
    from scpo.experiment import prepare
    from scpo.export import export_checkpoint

    cfg = RunConfig.from_yaml(Path(a.run) / "config.yaml")
    exp = prepare(cfg, progress=False)
    rows = np.flatnonzero((exp.group == a.group) & (exp.split == "test"))
    prompts, chosen = exp.texts(exp.chosen_row[rows])
    _, rejected = exp.texts(exp.rejected_row[rows])
    out = export_checkpoint(a.run, a.out, group=a.group, eval_pairs=(prompts, chosen, rejected))
    effect = json.loads((out / "scpo_export.json").read_text())["input_format_effect"]
    print(f"{a.group}: {len(rows)} test pairs, export {out}")
    for k, e in effect.items():
        print(f"  {k:20s} accuracy {100 * e['accuracy']:5.1f}%  pearson r {e['pearson_r']:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"group": a.group, "effect": effect}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
