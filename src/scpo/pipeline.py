"""The main job, ``scpo run``: setup -> prepare -> fit -> evaluate -> studies -> report.

Read :func:`run` top to bottom: each step is one call into the module named after it --
:func:`scpo.experiment.prepare` (load, split, global model, scoring, margins),
:func:`scpo.fitting.fit` (every group, method and seed), :func:`scpo.evaluate.evaluate_splits`
(accuracies, CIs, paired tests), :mod:`scpo.studies` (learning curves, the τ x β sweep) and
:func:`scpo.report.write_run` (the run directory).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .config import RunConfig
from .evaluate import Evaluator, SplitMargins, evaluate_splits
from .experiment import Experiment, FitResult, group_sets, prepare, selection_summary, split_margins
from .fitting import fit
from .load.candidates import load_candidate_choices
from .parallel import is_main_process
from .provenance import code_revision, command_line
from .report import training_log, training_summary, write_run
from .rundir import RunLock, check_directory, check_reuse, invalidate_other_run, run_fingerprint, work_summary
from .studies.curves import curve_tables, fit_curves
from .studies.downstream import DownstreamStudy
from .studies.sweep import run_sweep
from .tracking import check_report_to, log_head_curves

__all__ = ["evaluate_margins", "pooled_scope", "run", "summarize"]

logger = logging.getLogger(__name__)


def evaluate_margins(exp: Experiment, splits: list[SplitMargins], seeds: list[int]) -> tuple[dict[str, Any], Evaluator]:
    """Accuracy tables, CIs and paired tests from test margins of every (group, method, seed).

    ``splits``: a :class:`scpo.evaluate.SplitMargins` per split seed, ``exp``'s first. Full/LoRA runs
    come here the same way as head runs: only margins matter.
    """
    present = list(dict.fromkeys(k[1] for k in splits[0].margins))
    methods = [m for m in exp.cfg.train.methods if m in present] + [m for m in present if m not in exp.cfg.train.methods]
    ev, evaluator = evaluate_splits(splits, exp.groups, methods, seeds, group_sets=group_sets(exp), n_boot=exp.cfg.output.n_boot)
    covers = ", ".join(ev["ci"]["resamples"])
    missing = "; ".join(ev["ci"]["does_not_cover"])
    ev["split_unit_ci"] = (f"95% percentile bootstrap over test {exp.data.split_unit}s; covers {covers}"
                           + (f"; does not cover {missing}" if missing else ""))
    return ev, evaluator


def pooled_scope(exp: Experiment) -> dict[str, Any]:
    """What the pooled test set holds: its groups (targets, other groups, the population) and pairs."""
    test = exp.split == "test"
    names, counts = np.unique(exp.group[test], return_counts=True)
    return {"groups": [str(n) for n in names], "test_pairs": int(test.sum()),
            "pairs_per_group": {str(n): int(c) for n, c in zip(names, counts)},
            "non_target_groups": [str(n) for n in names if n not in exp.groups]}


def summarize(exp: Experiment, ev: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Averages over groups (and over minority/majority groups when the data names them), with CIs;
    on synthetic data also the share of the global->oracle gap each method closes."""
    out = ev["summary"]
    for rows in out.values():
        if "oracle" in rows and "global" in rows:
            og, gg = rows["oracle"]["all"], rows["global"]["all"]
            for m in methods:
                rows[m]["gap_closed"] = float((rows[m]["all"] - gg) / (og - gg)) if og != gg else float("nan")
    return out


@dataclass
class _Split:
    """What one split seed contributes: its experiment, its fit, its test view and its curves."""

    exp: Experiment
    fit: FitResult
    margins: SplitMargins
    curves: tuple[dict, dict] | None
    info: dict[str, Any]


def run(cfg: RunConfig | None = None, progress: bool = True, exp: Experiment | None = None, *,
        overwrite: bool = True, resume: bool = False, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the whole experiment ``cfg`` describes and write its run directory; return results.

    ``overwrite``: a finished run already in ``output_dir`` is replaced (this config's finished jobs
    reused, another config's outputs removed first); ``False``, as ``scpo run`` without
    ``--overwrite``, refuses it with :class:`~scpo.errors.RunExistsError`. An interrupted run there
    resumes either way; ``resume=True`` also refuses a directory with nothing to resume
    (:func:`scpo.rundir.check_reuse`). ``command``: the command line's arguments, recorded in
    ``results.json`` (``None`` from Python).

    Reads as the run does: for each split seed, set up and prepare the experiment, fit every
    (group, method, seed), measure it on the test pairs and run the studies on it (learning curves
    with ``studies.curve_fractions``, the τ x β sweep with ``studies.sweep_taus``/``sweep_betas`` on the
    primary split); then evaluate all splits together and write the report. The first split seed is
    the primary one (its models, grid and selection are saved); every statistic pools the splits.
    """
    cfg = cfg or RunConfig()
    out_dir = Path(cfg.output.output_dir)
    t0 = time.time()
    main_process = is_main_process()  # under accelerate launch, rank 0 writes
    tc, st = cfg.train, cfg.studies
    check_directory(cfg.model.cache_dir, "--cache-dir")
    trackers = check_report_to(cfg.trainer.report_to, tc.mode)  # an unknown or missing tracker stops the run here
    own_candidates = None  # read once; a bad candidates file stops the run here, before anything is written
    if st.downstream_candidates:
        own_candidates = (Path(st.downstream_candidates).name, load_candidate_choices(st.downstream_candidates))
    fingerprint = run_fingerprint(yaml.safe_load(cfg.to_yaml()))  # exactly what config.yaml will hold
    check_reuse(out_dir, fingerprint, overwrite=overwrite, resume=resume)  # every rank: all refuse together
    with RunLock(out_dir) if main_process else contextlib.nullcontext():
        # setup: the directory's one commit point is results.json; another config's results go first
        if main_process:
            check_reuse(out_dir, fingerprint, overwrite=overwrite, resume=False)  # a run that finished meanwhile
            gone = invalidate_other_run(out_dir, fingerprint)
            if gone:
                logger.warning("%s held the finished results of another config: removed %s", out_dir, ", ".join(gone))
        methods, seeds = list(dict.fromkeys(tc.methods)), list(dict.fromkeys(tc.seeds))
        split_seeds = list(dict.fromkeys(st.split_seeds)) or [cfg.data.split_seed]
        if exp is not None:
            split_seeds = [exp.cfg.data.split_seed] + [s for s in split_seeds if s != exp.cfg.data.split_seed]
        fractions = sorted(set(st.curve_fractions))
        curve_methods = list(dict.fromkeys(st.curve_methods)) if fractions else []
        sweep_on = bool(st.sweep_taus or st.sweep_betas)
        timing: dict[str, float] = {"prepare": 0.0, "train": 0.0, "curves": 0.0, "sweep": 0.0}
        rm = exp.rm if exp is not None else None
        head0 = None
        splits: list[_Split] = []
        sweep_res = None
        downstream: DownstreamStudy | None = None
        for i, ss in enumerate(split_seeds):
            # prepare
            t = time.time()
            exp_s = exp if (i == 0 and exp is not None) else prepare(
                cfg if ss == cfg.data.split_seed else cfg.replace(split_seed=ss), progress=progress, rm=rm)
            rm = exp_s.rm
            if i == 0:
                head0 = rm.head_params()
            timing["prepare"] += time.time() - t
            # fit: later splits keep their Trainer jobs apart and save no models
            t = time.time()
            work = out_dir if i == 0 else out_dir / "splits" / f"split-seed-{ss}"
            res = fit(exp_s, methods, seeds, work_dir=work, save_models=None if i == 0 else False, progress=progress)
            timing["train"] += time.time() - t
            if main_process and tc.mode == "head":  # the Trainer modes report while they train
                log_head_curves(work, res.curves, trackers)
            # studies
            curves = None
            if fractions:
                t = time.time()
                curves = fit_curves(exp_s, curve_methods, seeds, fractions, res, work_dir=work, progress=progress)
                timing["curves"] += time.time() - t
            if i == 0 and sweep_on:
                t = time.time()
                sweep_res = run_sweep(exp_s, st.sweep_taus or [cfg.select.tau], st.sweep_betas or [cfg.select.beta],
                                      seeds, reference=res, progress=progress)
                timing["sweep"] += time.time() - t
            if st.downstream_n or st.downstream_candidates:  # downstream best-of-N: measured now, while the shared model holds this split's head
                t = time.time()
                downstream = downstream or DownstreamStudy(exp_s, st.downstream_n, st.downstream_prompts, progress,
                                                            candidates=own_candidates)
                downstream.measure(exp_s, res, methods, seeds)
                timing["downstream"] = timing.get("downstream", 0.0) + time.time() - t
            info = {"split_seed": ss, "global_model_trained_on_pairs": exp_s.global_info.get("trained_on_pairs"),
                    "train_pairs": int((exp_s.split == "train").sum()), "test_pairs": int((exp_s.split == "test").sum()),
                    "test_units": int(len(set(exp_s.split_key[exp_s.split == "test"])))}
            splits.append(_Split(exp_s, res, split_margins(exp_s, res.margins, res.used), curves, info))
        primary = splits[0]
        exp = primary.exp
        if len(split_seeds) > 1 and head0 is not None:
            rm.set_head(head0[0], head0[1])  # later splits trained their own global head on the shared model
        # evaluate
        t = time.time()
        ev, evaluator = evaluate_margins(exp, [s.margins for s in splits], seeds)
        results = {
            "scpo_results_version": 2,
            "run_fingerprint": fingerprint,
            "command": None if command is None else command_line(command),
            "code": code_revision(),
            "synthetic_data": exp.data.synthetic,
            "data": {
                "name": exp.data.name, "split_unit": exp.data.split_unit, "groups": exp.groups,
                "group_matches": exp.data.group_matches, "stats": exp.data.stats, "provenance": exp.data.provenance,
                "split_seed": split_seeds[0], "split_seeds": split_seeds,
                "pooled": pooled_scope(exp),
            },
            "global_model": exp.global_info,
            "scoring": exp.score_stats,
            "selection": selection_summary(exp),
            "select": {"tau": cfg.select.tau, "beta": cfg.select.beta},
            "methods": methods,
            "seeds": seeds,
            "split_seeds": split_seeds,
            "splits": [s.info for s in splits],
            "mode": tc.mode,
            "grid": primary.fit.grid,
            **ev,
        }
        results["summary"] = summarize(exp, ev, methods)
        if fractions:
            results["curves"] = curve_tables(evaluator, [s.curves for s in splits], exp.groups, curve_methods, seeds,
                                             fractions, group_sets(exp))
        if sweep_res is not None:
            results["sweep"] = sweep_res
        timing["evaluate"] = time.time() - t
        if downstream is not None:
            t = time.time()
            results["downstream"] = downstream.results(exp, methods, seeds)
            timing["downstream"] += time.time() - t
        results["timing_s"] = timing
        results["wall_time_s"] = time.time() - t0
        training = training_log(cfg, [(s.info["split_seed"], s.fit.curves) for s in splits])
        results["training"] = training_summary(training, trackers)
        # report
        if main_process:
            results["work"] = work_summary(out_dir, finishing=True)
            write_run(out_dir, cfg, results, exp=exp, models=primary.fit.models, training=training)
    return results
