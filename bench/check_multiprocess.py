"""Multi-process check: ``scpo run`` under ``accelerate launch`` (2 CPU processes) against one process.

    .venv/bin/python bench/check_multiprocess.py                 # full and lora, synthetic 'tiny'
    .venv/bin/python bench/check_multiprocess.py --modes head,full,lora

For each mode, runs the same small experiment (synthetic preset ``tiny``, packaged encoder, a few
training steps) once as one process and once under ``accelerate launch --config_file
configs/accelerate/cpu_2proc.yaml`` (2 processes, gloo), each with its own empty feature cache so
that scoring runs in both, and compares: every trained job's test margins (``RUN_DIR/jobs``), every
(group, method) test accuracy of ``results.json``, the texts scored, and rank 0's forward passes
(from the work log: with 2 processes rank 0 computes about half of the scoring and evaluation
batches, the other rank the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, footer, header, write_json

RUN_ARGS = ["--synthetic-preset", "tiny", "--methods", "global,full,scpo", "--seeds", "0", "--learning-rates", "1e-4",
            "--pulls", "0", "--steps", "6", "--val-folds", "1", "--batch-size", "8", "--global-steps", "300",
            "--plots", "false", "--save-models", "false", "--quiet"]
MARGIN_TOL = 1e-4
"""Largest allowed difference of a trained model's test margin between 1 and 2 processes: the same
global batches (``PairSampler``), dropout off (``disable_dropout``), only padding and the order of
float reductions differ. Accuracies must then be equal (a test pair flips only if its margin is
within the tolerance of 0)."""


def run(mode: str, procs: int, work: Path) -> tuple[dict, dict, float]:
    """(results.json, {job: test margins}, wall seconds) of one ``scpo run``."""
    out, cache = work / f"{mode}-{procs}" / "run", work / f"{mode}-{procs}" / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    env.pop("ACCELERATE_USE_CPU", None)  # scpo asks for the CPU (gloo) mode itself
    args = ["-m", "scpo", "run", *RUN_ARGS, "--mode", mode, "--output-dir", str(out), "--cache-dir", str(cache)]
    if procs == 1:
        cmd = [sys.executable, *args]
    else:
        env.update(OMP_NUM_THREADS="1")
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{mode} with {procs} process(es) failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    margins = {f.stem: json.loads(f.read_text())["margins"] for f in sorted((out / "jobs").glob("*.json"))}
    return json.loads((out / "results.json").read_text()), margins, dt


def compare(a: dict, b: dict, ma: dict, mb: dict) -> dict:
    """Accuracy differences per (group, method), in test pairs, and the largest test-margin difference."""
    diffs, worst = {}, 0.0
    for g, per in a["metrics"].items():
        n_test = per.get("test_pairs", {}).get("all", 0) or 1
        for m, entry in per.items():
            if not isinstance(entry, dict) or "all" not in entry or not isinstance(entry["all"], dict):
                continue
            d = abs(entry["all"]["mean"] - b["metrics"][g][m]["all"]["mean"])
            diffs[f"{g}/{m}"] = (d, 1.0 / n_test)
            worst = max(worst, d * n_test)
    margin = max((float(np.max(np.abs(np.subtract(ma[k], mb[k])))) for k in ma if len(ma[k])), default=0.0)
    work = [r["work"][-1]["counts"] if r.get("work") else {} for r in (a, b)]
    return {"accuracy": diffs, "worst_in_test_pairs": worst, "largest_margin_difference": margin,
            "jobs": (len(ma), len(mb)), "scored": (a["scoring"]["computed"], b["scoring"]["computed"]),
            "rank0_scoring_forward_passes": tuple(w.get("scoring_forward_passes", 0) for w in work),
            "rank0_eval_forward_passes": tuple(w.get("eval_forward_passes", 0) for w in work)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="full,lora", help="modes to check (default full,lora)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    header("multi-process check: scpo run, 2 CPU processes under accelerate launch vs 1 process")
    work = Path(tempfile.mkdtemp(prefix="scpo-mp-"))
    res = {}
    try:
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            one, m1, t1 = run(mode, 1, work)
            two, m2, t2 = run(mode, 2, work)
            c = compare(one, two, m1, m2)
            ok = (c["worst_in_test_pairs"] == 0 and c["largest_margin_difference"] <= MARGIN_TOL
                  and c["scored"][0] == c["scored"][1] and c["jobs"][0] == c["jobs"][1])
            big = max(c["accuracy"].items(), key=lambda kv: kv[1][0])
            print(f"   {mode:<5} 1 process {t1:6.1f} s, 2 processes {t2:6.1f} s ({t1 / t2:.2f}x); texts scored "
                  f"{c['scored'][0]} vs {c['scored'][1]}, rank 0's forward passes: scoring "
                  f"{c['rank0_scoring_forward_passes'][0]} vs {c['rank0_scoring_forward_passes'][1]}, evaluation "
                  f"{c['rank0_eval_forward_passes'][0]} vs {c['rank0_eval_forward_passes'][1]}")
            print(f"         largest test-margin difference {c['largest_margin_difference']:.2e} over {c['jobs'][0]} "
                  f"trained jobs (tolerance {MARGIN_TOL:g}); largest accuracy difference {big[1][0]:.4f} ({big[0]}; "
                  f"one test pair = {big[1][1]:.4f}) -> {'same metrics' if ok else 'DIFFERENT'}")
            res[mode] = {"one_s": t1, "two_s": t2, **c, "ok": ok}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
