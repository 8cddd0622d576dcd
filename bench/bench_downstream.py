"""Benchmark: the downstream best-of-N study (issue 16), every figure of docs/results.md in one command.

    .venv/bin/python bench/bench_downstream.py                      # all: 3 presets + GOQA + timing
    .venv/bin/python bench/bench_downstream.py --only default       # one part (default, no-outliers,
                                                                    #   no-deviation, goqa, baseline)
    .venv/bin/python bench/bench_downstream.py --summarize OUT      # print the figures of finished runs

Runs, each into ``OUT/<part>`` (default ``runs/bench-downstream``), with one shared feature cache:

* ``default``, ``no-outliers``, ``no-deviation``: ``scpo evaluate [--synthetic-preset P]`` (every
  method, 5 seeds, learning curves, the study at N = 4, 16, 64);
* ``baseline``: ``scpo evaluate --downstream-n ''`` on the default preset (the same run without the
  study; run after ``default`` so both find the training texts' features cached): the time added;
* ``goqa``: ``scpo run --dataset goqa --data-path GOQA --methods global,full,scpo,filter-only,weight-only
  --seeds 0 --split-seeds 0,1,2,3,4 --downstream-n 1`` (the 7 paper countries; a question's options
  are the candidates, so N does not apply).

Then prints, per run, the tables the study writes (gain over the global model's pick, gap closed,
win/loss, population loss, with 95% CIs; SCPO against full fine-tuning; GOQA's share of respondents
matched) and the study's time against the run's. Extra flags after ``--`` go to every scpo call
(e.g. ``-- --head-solver newton``). Nothing here asserts a figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOQA = ROOT.parent / "shared" / "data" / "goqa" / "global_opinions_partial.csv"
PARTS = ("default", "no-outliers", "no-deviation", "baseline", "goqa")


def _command(part: str, out: Path, cache: Path, goqa: Path, extra: list[str]) -> list[str]:
    base = [sys.executable, "-m", "scpo"]
    common = ["--quiet", "--output-dir", str(out / part), "--cache-dir", str(cache)]
    if part == "goqa":
        return base + ["run", *common, "--dataset", "goqa", "--data-path", str(goqa), "--methods",
                       "global,full,scpo,filter-only,weight-only", "--seeds", "0", "--split-seeds", "0,1,2,3,4",
                       "--downstream-n", "1", *extra]
    if part == "baseline":
        return base + ["evaluate", *common, "--downstream-n", "", *extra]
    preset = [] if part == "default" else ["--synthetic-preset", part]
    return base + ["evaluate", *common, *preset, *extra]


def _e(e: dict, pct: bool = False, signed: bool = True) -> str:
    k = 100.0 if pct else 1.0
    f = (lambda v: f"{k * v:+.3f}") if signed else (lambda v: f"{k * v:.3f}")
    if pct:
        f = (lambda v: f"{k * v:+.1f}") if signed else (lambda v: f"{k * v:.1f}")
    lo, hi = e["ci95"]
    return f"{f(e['mean'])} [{f(lo) if lo is not None else '-'}, {f(hi) if hi is not None else '-'}]"


def summarize(run: Path) -> dict:
    """The figures of one finished run (printed; returned for the JSON file)."""
    r = json.loads((run / "results.json").read_text())
    t = r["timing_s"]
    out = {"run": str(run), "wall_time_s": r["wall_time_s"], "timing_s": t}
    ds = r.get("downstream")
    print(f"\n== {run.name}: {r['data']['name']} ({r['data'].get('provenance', {}).get('preset') or ''}), "
          f"wall {r['wall_time_s']:.0f} s, of which downstream {t.get('downstream', 0.0):.0f} s")
    if not ds:
        return out
    if ds.get("skipped"):
        print("  skipped:", ds["skipped"])
        return out
    print(f"  study: {ds['candidates']} candidates, {ds['prompts']} prompts, timing {ds['timing_s']}")
    pct = ds["kind"] != "synthetic"
    for setting, tab in ds["settings"].items():
        for name, rows in tab["group_sets"].items():
            print(f"  {setting} {name}: oracle {_e(rows['oracle'], pct, False)}  random {_e(rows['random'], pct, False)}")
            for m in ds["methods"]:
                x = rows[m]
                print(f"    {m:<12} utility {_e(x['utility'], pct, False)}  gain {_e(x['gain'], pct)}  gap closed "
                      f"{_e(x['gap_closed'], True)}%  win/loss {100 * x['win_rate']['mean']:.1f}/"
                      f"{100 * x['loss_rate']['mean']:.1f}%  population loss {_e(x['population_loss'], pct)}")
            for key in ("scpo vs full", "scpo vs global", "full vs global"):
                tt = tab["tests"].get(key, {}).get(name)
                if tt:
                    u = tt["utility"]
                    print(f"    {key}: utility diff {u['diff']:+.4f} [{u['ci95'][0]:+.4f}, {u['ci95'][1]:+.4f}] "
                          f"p={u['p_value']:.3f}; population-loss diff {tt['population_loss']['diff']:+.4f} "
                          f"p={tt['population_loss']['p_value']:.3f}")
            acc = r["tests"]["group_sets"].get("scpo vs full", {}).get(name, {}).get("all")
            if acc:
                print(f"    accuracy scpo vs full: {100 * acc['diff']:+.2f} pts [{100 * acc['ci95'][0]:+.2f}, "
                      f"{100 * acc['ci95'][1]:+.2f}] p={acc['p_value']:.3f}")
    st = ds.get("steering")
    if st:
        for m, rows in st["alpha"].items():
            for name, x in rows.items():
                print(f"  steering {m} {name}: " + "; ".join(
                    f"a={a:g} gain {g['mean']:+.3f} kept {100 * (k['mean'] if k['mean'] is not None else float('nan')):.0f}% "
                    f"pop loss {p['mean']:+.3f}" for a, g, k, p in zip(st["alphas"], x["gain"], x["kept_share"],
                                                                       x["population_loss"])))
    out["downstream"] = ds
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-downstream"))
    ap.add_argument("--cache-dir", default=None, help="feature cache (default OUT/cache)")
    ap.add_argument("--goqa", default=str(DEFAULT_GOQA), help="GlobalOpinionQA csv (the Hub schema)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma separated parts: " + ", ".join(PARTS))
    ap.add_argument("--summarize", action="store_true", help="print the figures of finished runs, run nothing")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    parts = [p for p in args.only.split(",") if p]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    wall = {}
    if not args.summarize:
        for part in parts:
            if part == "goqa" and not Path(args.goqa).is_file():
                print(f"goqa: skipped, no file at {args.goqa}")
                continue
            cmd = _command(part, out, cache, Path(args.goqa), extra)
            print("$", " ".join(cmd), flush=True)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            wall[part] = time.perf_counter() - t
    figures = {p: summarize(out / p) for p in parts if (out / p / "results.json").is_file()}
    if "default" in figures and "baseline" in figures:
        a, b = figures["default"]["wall_time_s"], figures["baseline"]["wall_time_s"]
        print(f"\ntime added to scpo evaluate (default preset): {a - b:+.0f} s ({a:.0f} s with the study, "
              f"{b:.0f} s without); the study's own timer: {figures['default']['timing_s'].get('downstream', 0):.0f} s")
    (out / "figures.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps({"wall_s": wall, "runs": figures}, indent=1, default=str))
    print(f"\nfigures: {out / 'figures.json'}")


if __name__ == "__main__":
    main()
