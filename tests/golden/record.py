"""Golden outputs of scpo for the reshape guard (issue 12): record them, rerun them, compare them.

Recorded on the commit before the reshape (branch ``baseline``). After the reshape the same
commands must give the same files, except where issue 12 item 2 changes the grid-search rule
(case ``d``, see below).

Cases (each one ``scpo`` command line, run as a subprocess with ``OMP_NUM_THREADS=1``, exactly
as a user would run it; the output is ``results.json`` normalised by :func:`normalise`):

====  ======================  ==========================================================  ======
case  file                    what                                                        where
====  ======================  ==========================================================  ======
a     tiny_head.json          ``tiny`` synthetic preset, head mode, its default grid,     suite
                              plus the sha256 of every tensor of ``models/heads.safetensors``
b     tiny_full.json          ``--mode full``, tiny, one group, one grid cell             suite
c     tiny_lora.json          ``--mode lora``, tiny, one group, one grid cell             suite
d     tiny_full_grid.json     ``--mode full`` with a grid search: ``--val-folds 2``,      suite
                              learning rates 1e-4 and 1e-3. CHANGED with issue 12 item 2 and
                              re-recorded: full/LoRA scored the first fold only
                              (``grid.search_folds_used`` = 1); now every fold is averaged,
                              as in head mode. Same choices, same test results here; the
                              validation accuracies are two-fold means.
e     default.json            the embedded default (``scpo run`` with no option)          bench
f     goqa7.json              GlobalOpinionQA, the paper's seven countries, defaults      bench
g     export_rewards.json     ``scpo export RUN --group G --out DIR`` of case a (head,    suite
                              group-b, method scpo) and of case b (full, group-c), then the
                              rewards of a fixed list of (prompt, response) scored with plain
                              transformers (``AutoModelForSequenceClassification``), one pair
                              per forward pass (no padding), plus the sha256 of every tensor of
                              the exported ``model.safetensors``
====  ======================  ==========================================================  ======

"suite": rerun and compared by ``tests/test_golden.py``; "bench": by ``bench/check_golden.py``
(by hand; it also reruns the suite cases with ``--all``).

What :func:`normalise` removes from ``results.json``, and why (everything else is kept and compared
exactly, floats included, as JSON text):

* ``timing_s``, ``wall_time_s``: wall-clock timings.
* ``versions``: package versions.
* ``training``: the summary of the training curves (``training_log.json``, issue 14), added after
  these files were recorded; the fits it summarises are the ones whose margins and accuracies
  are compared.
* ``work``: the work log (process ids, attempt ids, counts of steps/forward passes actually done).
* ``scoring.cached``, ``scoring.computed``, ``scoring.forward_passes``, ``scoring.processes``,
  ``scoring.corrupt_cache_shards``: feature-cache counters, which depend on what is in the cache
  (``processes`` is absent when everything came from the cache); ``scoring.texts``, ``distinct``,
  ``truncated`` stay.
* every key named ``fingerprint`` or ending in ``_fingerprint``: cache/job identity hashes (issue 12
  item 2 unifies the fingerprint helper, so their text may change with no change of behaviour; the
  trained weights are covered by the tensor hashes and the exported rewards instead).
* any string that contains the run's output directory, the cache directory or the temporary
  folder (absolute paths) is replaced by a placeholder; none occurs in today's results.json.

Tolerance: on one machine every value is the same bit for bit (measured); another CPU changes the
last bits. The suite compares with ``diff(..., portable=True)``, whose rules and measured reason
are in :func:`diff`'s docstring; ``bench/check_golden.py`` compares exactly (``--portable`` for the
suite's rule, ``--rel-tol`` to see how far a difference goes).

Re-record (on the commit whose behaviour is the reference; about 1 min for the suite cases,
``e`` about 1 min, ``f`` about 2 min on 2 cores)::

    cd <repo> && export PYTHONPATH=$PWD/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python tests/golden/record.py                    # every case
    python tests/golden/record.py a b c d g          # only these
    python tests/golden/record.py --goqa-path PATH   # GOQA csv (default: ../shared/data/goqa/... or
                                                     # /work/shared/data/goqa/global_opinions_partial.csv)

Compare::

    pytest tests/test_golden.py                      # a, b, c, d, g
    python bench/check_golden.py                     # e, f (prints a diff; exit 1 if different)
    python bench/check_golden.py --all               # every case
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent
REPO = GOLDEN.parent.parent

TINY = ["--quiet", "--synthetic-preset", "tiny", "--plots", "false"]
"""The tiny preset; head mode with the package's default grid (3 folds, 3 step counts)."""

TRAINER = [*TINY, "--methods", "global,full,scpo", "--val-folds", "1", "--global-steps", "200", "--steps", "2",
           "--batch-size", "4", "--max-length", "48", "--learning-rates", "1e-4", "--pulls", "0",
           "--groups", "group-c"]
"""The Trainer path at its smallest (as tests/test_interrupt.py's FULL): one group, one cell, 2 steps."""

GOQA_COUNTRIES = "Chile,Mexico,South Africa,Australia,Canada,New Zealand,Israel"

CASES: dict[str, dict] = {
    "a": {"file": "tiny_head.json", "args": TINY, "heads": True, "suite": True},
    "b": {"file": "tiny_full.json", "args": [*TRAINER, "--mode", "full"], "suite": True},
    "c": {"file": "tiny_lora.json", "args": [*TRAINER, "--mode", "lora"], "suite": True},
    "d": {"file": "tiny_full_grid.json",
          "args": [*TRAINER, "--mode", "full", "--val-folds", "2", "--learning-rates", "1e-4,1e-3"], "suite": True},
    "e": {"file": "default.json", "args": ["--quiet"], "heads": True, "suite": False},
    "f": {"file": "goqa7.json", "args": ["--quiet", "--dataset", "goqa", "--data-path", "{goqa}",
                                          "--groups", GOQA_COUNTRIES, "--plots", "false"], "suite": False},
    "g": {"file": "export_rewards.json", "suite": True},
}

EXPORTS = [("a", "group-b"), ("b", "group-c")]
"""(case whose run is exported, group): case a is head mode (method scpo), case b full mode."""

SCORED = [
    ("How do I apologise to a colleague?", "Say sorry plainly and offer to fix it."),
    ("How do I apologise to a colleague?", "Write a long formal letter to their manager."),
    ("Should elders be consulted before a family decision?", "Yes, their experience and standing matter."),
    ("Should elders be consulted before a family decision?", "No, each person should decide alone."),
    ("What is a good way to spend a weekend?", "Time with family and neighbours."),
    ("What is a good way to spend a weekend?", "Working on a personal project by yourself."),
    ("Is it acceptable to haggle at a market?", "Of course, it is expected and part of the fun."),
    ("Is it acceptable to haggle at a market?", "No, it is rude to question the price."),
    ("", "An empty prompt."),
    ("A very long prompt " * 40, "and a short response."),
]
"""Fixed (prompt, response) pairs scored by the exported checkpoints (the last one is truncated)."""

DROP_TOP = ("timing_s", "wall_time_s", "versions", "work", "training", "code")
DROP_SCORING = ("cached", "computed", "forward_passes", "processes", "corrupt_cache_shards")


def default_goqa_path() -> str:
    for p in (REPO.parent / "shared/data/goqa/global_opinions_partial.csv",
              REPO.parent.parent / "shared/data/goqa/global_opinions_partial.csv",
              Path("/work/shared/data/goqa/global_opinions_partial.csv")):
        if p.exists():
            return str(p)
    return "/work/shared/data/goqa/global_opinions_partial.csv"


def _env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    env.pop("SCPO_KILL_AT", None)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def scpo(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``python -m scpo ARGS`` in a subprocess; raises with its stderr if it fails."""
    cmd = [sys.executable, "-m", "scpo", *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _scrub(obj, roots: Iterable[str]):
    if isinstance(obj, dict):
        return {k: _scrub(v, roots) for k, v in obj.items()
                if not (k == "fingerprint" or k.endswith("_fingerprint"))}
    if isinstance(obj, list):
        return [_scrub(v, roots) for v in obj]
    if isinstance(obj, str):
        for r in roots:
            if r and r in obj:
                obj = obj.replace(r, "<path>")
        return obj
    return obj


def normalise(results: dict, roots: Iterable[str] = ()) -> dict:
    """results.json without what legitimately varies between two identical runs (module docstring)."""
    out = {k: v for k, v in results.items() if k not in DROP_TOP}
    if isinstance(out.get("scoring"), dict):
        out["scoring"] = {k: v for k, v in out["scoring"].items() if k not in DROP_SCORING}
    roots = sorted({str(r) for r in roots if r} | {tempfile.gettempdir()}, key=len, reverse=True)
    return _scrub(out, roots)


def tensor_hashes(path: Path) -> dict[str, str]:
    """sha256 of every tensor (name, dtype, shape, bytes) in a safetensors file; the header's metadata is ignored."""
    from safetensors.torch import load_file

    out = {}
    for name, t in sorted(load_file(str(path)).items()):
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
        out[name] = h.hexdigest()
    return out


def run_case(case: str, work: Path, cache: Path, goqa: str | None = None) -> tuple[dict, Path]:
    """Run one results.json case; returns (normalised golden dict, run directory)."""
    spec = CASES[case]
    out = work / f"run-{case}"
    args = [a.replace("{goqa}", goqa or default_goqa_path()) for a in spec["args"]]
    scpo("run", *args, "--output-dir", str(out), "--cache-dir", str(cache))
    res = json.loads((out / "results.json").read_text())
    golden = {"case": case, "command": ["scpo", "run", *spec["args"]],
              "results": normalise(res, roots=[str(out), str(cache), str(work)])}
    if spec.get("heads"):
        golden["heads_safetensors"] = tensor_hashes(out / "models" / "heads.safetensors")
    return golden, out


def score_plain(checkpoint: Path, pairs=SCORED) -> list[float]:
    """Rewards of a plain transformers checkpoint, one (prompt, response) per forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    out = []
    with torch.inference_mode():
        for p, r in pairs:
            enc = tok(p, r, truncation=True, max_length=256, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def export_case(runs: dict[str, Path], work: Path) -> dict:
    """Case g: export one group's checkpoint from the runs of cases a and b, score SCORED with transformers."""
    golden = {"case": "g", "pairs": [list(p) for p in SCORED], "exports": {}}
    for case, group in EXPORTS:
        dest = work / f"export-{case}-{group}"
        scpo("export", str(runs[case]), "--group", group, "--out", str(dest))
        golden["exports"][f"{case}:{group}"] = {
            "command": ["scpo", "export", f"<run {case}>", "--group", group, "--out", "DIR"],
            "rewards": score_plain(dest),
            "model_safetensors": tensor_hashes(dest / "model.safetensors"),
        }
    return golden


def produce(cases: Iterable[str], work: Path, goqa: str | None = None, cache: Path | None = None) -> dict[str, dict]:
    """Fresh outputs of the given cases (g needs a and b and runs them if they are not asked for).

    ``cache``: the feature cache (default: a new one under ``work``); a warm one gives the same results.
    """
    cases = list(cases)
    cache = Path(cache) if cache else work / "cache"
    runs: dict[str, Path] = {}
    got: dict[str, dict] = {}
    need = [c for c in CASES if c in cases or (c in ("a", "b") and "g" in cases)]
    for c in need:
        if c == "g":
            continue
        golden, runs[c] = run_case(c, work, cache, goqa)
        if c in cases:
            got[c] = golden
    if "g" in cases:
        got["g"] = export_case(runs, work)
    return got


def load(case: str) -> dict:
    return json.loads((GOLDEN / CASES[case]["file"]).read_text())


def dump(obj: dict) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"


PORTABLE_REL_TOL = 1e-4
"""Tolerance of :func:`diff` with ``portable=True`` (relative, and the same absolute below 1)."""
GRAD_NORM_CONVERGED = 1e-6
"""``portable``: two gradient norms both below this are the same (both solves converged)."""


def no_pull_cell(expected: dict) -> int | None:
    """Index of the grid cell without a pull (pull 0) in ``expected``'s results, if it has one."""
    res = expected.get("results") or {}
    pulls = (res.get("grid") or {}).get("pulls") or (res.get("global_model") or {}).get("pulls") or []
    return next((i for i, p in enumerate(pulls) if p == 0), None)


def diff(expected, actual, path: str = "", rel_tol: float = 0.0, limit: int = 200, portable: bool = False) -> list[str]:
    """Every difference between two JSON values, as 'path: expected -> actual' lines (exact unless rel_tol).

    ``portable``: what another CPU may change with the same code, measured (2026-12-02: the files of
    one machine rerun on a fresh AMD EPYC machine of the same kind): floats within
    :data:`PORTABLE_REL_TOL` (solver losses differed by at most 1e-7 relative, exported rewards by
    5e-7 absolute); converged gradient norms (1e-14 ... 1e-7, which differed by up to 10%) both
    below :data:`GRAD_NORM_CONVERGED`; the validation grid's no-pull cell skipped (on a nearly
    separable fold it has no finite optimum: its log-loss differed by up to 2.6% and its accuracy by
    one pair); tensor sha256 hashes skipped (the last bits of trained weights differ; the weights
    are compared through the results they give: every choice, accuracy and exported reward). Every
    choice and every test accuracy was identical.
    """
    out: list[str] = []
    tol = max(rel_tol, PORTABLE_REL_TOL if portable else 0.0)
    skip_cell = no_pull_cell(expected) if portable and isinstance(expected, dict) else None

    def walk(e, a, p):
        if len(out) >= limit:
            return
        if portable:
            if skip_cell is not None and p.endswith(f"_grid[{skip_cell}]"):
                return
            if "safetensors." in p and isinstance(e, str) and isinstance(a, str) and len(e) == len(a) == 64:
                return
            if (p.endswith("grad_norm") and isinstance(e, (int, float)) and isinstance(a, (int, float))
                    and abs(e) < GRAD_NORM_CONVERGED and abs(a) < GRAD_NORM_CONVERGED):
                return
        if isinstance(e, dict) and isinstance(a, dict):
            for k in sorted(set(e) | set(a)):
                if k not in a:
                    out.append(f"{p}.{k}: missing now (was {json.dumps(e[k])[:120]})")
                elif k not in e:
                    out.append(f"{p}.{k}: new (= {json.dumps(a[k])[:120]})")
                else:
                    walk(e[k], a[k], f"{p}.{k}")
        elif isinstance(e, list) and isinstance(a, list):
            if len(e) != len(a):
                out.append(f"{p}: length {len(e)} -> {len(a)}")
            for i, (x, y) in enumerate(zip(e, a)):
                walk(x, y, f"{p}[{i}]")
        elif (isinstance(e, float) and isinstance(a, (int, float)) and not isinstance(a, bool)
              and not isinstance(e, bool)):
            same = (e == a) or (math.isnan(e) and isinstance(a, float) and math.isnan(a))
            if not same and tol > 0 and math.isclose(e, a, rel_tol=tol, abs_tol=tol):
                same = True
            if not same:
                out.append(f"{p}: {e!r} -> {a!r}")
        elif type(e) is not type(a) or e != a:
            out.append(f"{p}: {json.dumps(e)[:120]} -> {json.dumps(a)[:120]}")

    walk(expected, actual, path)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="record the golden outputs (tests/golden/*.json)")
    ap.add_argument("cases", nargs="*", default=list(CASES), help=f"cases to record (default: all of {','.join(CASES)})")
    ap.add_argument("--goqa-path", default=None, help="GlobalOpinionQA csv for case f")
    ap.add_argument("--work-dir", default=None, help="where runs go (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scpo-golden-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        got = produce(args.cases, work, args.goqa_path)
        for c, g in got.items():
            (GOLDEN / CASES[c]["file"]).write_text(dump(g))
            print(f"recorded {c}: {CASES[c]['file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
