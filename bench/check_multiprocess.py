"""Multi-process check: ``scpo run`` under ``accelerate launch`` (2 CPU processes) against one process.

    .venv/bin/python bench/check_multiprocess.py                 # full and lora, synthetic 'tiny'
    .venv/bin/python bench/check_multiprocess.py --modes head,full,lora

For each mode, runs the same small experiment (synthetic preset ``tiny``, packaged encoder, a few
training steps) once as one process and once under ``accelerate launch --config_file
configs/accelerate/cpu_2proc.yaml`` (2 processes, gloo), each with its own empty feature cache so
that scoring runs in both, and compares their ``results.json``: the scoring counts, the global
model's margins (``global`` accuracy), and every (group, method) test accuracy. Prints the largest
differences against the stated tolerances: scoring identical texts; accuracies within one test
pair of the group (``1 / test pairs``), since 2 processes see the same global batches but pad and
reduce in another order.
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

from _common import ROOT, footer, header

RUN_ARGS = ["--synthetic-preset", "tiny", "--methods", "global,full,scpo", "--seeds", "0", "--learning-rates", "1e-4",
            "--pulls", "0", "--steps", "6", "--val-folds", "1", "--batch-size", "8", "--global-steps", "300",
            "--plots", "false", "--save-models", "false", "--quiet"]


def run(mode: str, procs: int, work: Path) -> tuple[dict, float]:
    out, cache = work / f"{mode}-{procs}" / "run", work / f"{mode}-{procs}" / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src")}
    args = ["-m", "scpo", "run", *RUN_ARGS, "--mode", mode, "--output-dir", str(out), "--cache-dir", str(cache)]
    if procs == 1:
        cmd = [sys.executable, *args]
    else:
        env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{mode} with {procs} process(es) failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text()), dt


def compare(a: dict, b: dict) -> dict:
    diffs, worst = {}, 0.0
    for g, per in a["metrics"].items():
        n_test = per.get("test_pairs", {}).get("all", 0) or 1
        for m, entry in per.items():
            if not isinstance(entry, dict) or "all" not in entry or not isinstance(entry["all"], dict):
                continue
            d = abs(entry["all"]["mean"] - b["metrics"][g][m]["all"]["mean"])
            diffs[f"{g}/{m}"] = (d, 1.0 / n_test)
            worst = max(worst, d * n_test)
    return {"accuracy": diffs, "worst_in_test_pairs": worst,
            "scored": (a["scoring"]["computed"], b["scoring"]["computed"])}


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
            one, t1 = run(mode, 1, work)
            two, t2 = run(mode, 2, work)
            c = compare(one, two)
            ok = c["worst_in_test_pairs"] <= 1.0 + 1e-9 and c["scored"][0] == c["scored"][1]
            big = max(c["accuracy"].items(), key=lambda kv: kv[1][0])
            print(f"   {mode:<5} 1 process {t1:6.1f} s, 2 processes {t2:6.1f} s; texts scored {c['scored'][0]} vs "
                  f"{c['scored'][1]}; largest accuracy difference {big[1][0]:.4f} ({big[0]}; one test pair = "
                  f"{big[1][1]:.4f}) -> {'within' if ok else 'OUTSIDE'} tolerance")
            res[mode] = {"one_s": t1, "two_s": t2, **c, "ok": ok}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    footer()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    return res


if __name__ == "__main__":
    main()
