"""Downstream best-of-N: what a group gets when its reward model chooses between a policy's outputs.

Pairwise accuracy says how often a model orders two held-out responses as the group does; a reward
model in use *chooses*: of N candidate responses to a prompt, the one it ranks first is served.
This study measures that choice against a known truth.

**Embedded benchmark** (synthetic data: every group's true utility is known). For each benchmark
prompt the generator draws ``M = max(N)`` new candidate responses
(:func:`scpo.load.synthetic.draw_candidates`: a seed stream of their own, every benchmark text
excluded, so no candidate was seen in training or testing). Best-of-N for ``N < M`` is measured on
the ``M / N`` disjoint blocks of N candidates of each prompt (block means: the same expectation as one
draw of N, with less variance). In each block a model picks the candidate of highest reward (ties:
a fixed random order shared by every model, so two equal models pick the same candidate and a
constant reward picks a uniformly random one). Per group ``g`` and method, over prompts:

* ``utility`` — mean true utility ``u_g`` of the pick; ``oracle`` (the best candidate's) and
  ``random`` (a random pick's expectation) beside it;
* ``gain`` — ``utility`` minus the global model's (its own pick, same candidates);
* ``gap_closed`` — ``gain`` / (oracle − global): the share of the way to the oracle's pick;
* ``win_rate`` / ``loss_rate`` — share of blocks where the pick's ``u_g`` is above / below the
  global model's pick's (the rest are ties, mostly the same pick);
* ``population_loss`` — population utility of the global model's pick minus that of the group's
  pick (the downstream *excessive bias*; the population utility is the annotator-weighted mean of
  the groups' utilities, the mix the pooled data has). Positive: the population pays.

**GlobalOpinionQA** (and any data with answer shares): a test question's options are the
candidates, a country's answer shares the truth: ``utility`` is the *share of the country's
respondents who chose the option the model ranks first*; ``oracle`` is the largest share; the
population is the mean distribution over every country that answered (the global model's data).

**The user's own candidates** (``--downstream-candidates FILE``, any data set): a prompt's candidates
and each group's held-out choices between them (:mod:`scpo.load.candidates`), scored as answer
shares are: ``utility`` is the share of the group's people who chose the candidate the model ranks
first. Every prompt of the file is an item of each group with choices for it, except a prompt of
the group's own training pairs; a candidate that is a text of the run is an error.

**Steering** (synthetic, largest N): the pick of ``(1 − α) z_global + α z_g`` for α in
:data:`ALPHAS` (``z``: rewards centred and scaled on the run's reference texts, as ``scpo serve``
calibrates them), and of the two-group mixture ``λ z_g + (1 − λ) z_h`` with ``h`` the largest other
group: how much of the gain is kept as α falls, and what the population (and ``h``) pays.

Uncertainty: percentile bootstrap over prompts (questions) — whole prompts resampled, every group
and method on the same draws — and training seeds, and split seeds hierarchically
(:class:`scpo.evaluate.ClusterBootstrap`, :class:`scpo.evaluate.SplitDraws`); paired tests between
methods on the same draws (:func:`scpo.evaluate.bootstrap_p_value`), as for accuracy.

Head mode only: a model's reward of a candidate is ``features . w``; candidates are scored once with
the encoder (the feature cache) and every model is a matrix product. Full and LoRA models are not
re-scored here (results say so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact import compute_calibration
from ..errors import InputError
from ..evaluate import ClusterBootstrap, SplitDraws, bootstrap_p_value, default_comparisons, percentile_ci
from ..experiment import Experiment, FitResult, group_sets
from ..hashing import stream_seed
from ..load.goqa import answer_distributions
from ..load.synthetic import draw_candidates, group_utility_weights, population_shares, resolve_spec
from ..score import FeatureCache, encode_features

__all__ = ["ALPHAS", "CandidateTable", "DownstreamStudy", "Items", "best_of_n", "block_items", "downstream_tables",
           "goqa_candidates",
           "pick", "question_items", "synthetic_candidates", "DownstreamSplit", "score_split"]

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Steering strengths (and mixture weights) of the steering curves."""
TOL = 1e-9
"""Utilities closer than this count as a tie (win/loss rates)."""
METRICS = ("utility", "gain", "gap_closed", "win_rate", "loss_rate", "population_loss")


# ---------------------------------------------------------------------------------------------
# candidates and items
@dataclass
class CandidateTable:
    """Every candidate response, its prompt, and its true utility for every group (NaN: unknown)."""

    prompts: list[str]
    responses: list[str]
    cluster: np.ndarray
    """``[T]`` prompt (question) id of every candidate: the bootstrap's unit."""
    truth: dict[str, np.ndarray]
    """group -> ``[T]`` true utility (synthetic) or answer share (GlobalOpinionQA)."""
    population: np.ndarray
    """``[T]`` the population's utility (share)."""
    kind: str
    """``synthetic`` or ``answer_shares``."""
    candidates_per_prompt: int = 0
    """Synthetic: ``M`` candidates per prompt, candidate ``p * M + j`` is prompt ``p``'s ``j``-th."""
    questions: list[str] | None = None
    """Answer shares: candidate rows of each question (row of :func:`answer_distributions`)."""
    question_rows: list[np.ndarray] | None = None


@dataclass
class Items:
    """Best-of-N choices: item ``i`` is group ``group[i]`` choosing among candidates ``rows[i]`` (-1: none)."""

    group: np.ndarray
    cluster: np.ndarray
    rows: np.ndarray
    """``[n, K]`` candidate rows (into a :class:`CandidateTable`), padded with -1."""


def synthetic_candidates(spec: Any, seed: int, n: int, n_prompts: int | None, groups: Sequence[str]) -> CandidateTable:
    """``n`` new candidates per benchmark prompt with every group's and the population's true utility."""
    spec = resolve_spec(spec)
    draw = draw_candidates(spec, seed, n, n_prompts)
    weights = group_utility_weights(spec, seed)
    shares = population_shares(spec)
    truth = {g: draw.utility(w).reshape(-1) for g, w in weights.items()}
    pop = sum(shares[g] * truth[g] for g in weights)
    P = len(draw.prompts)
    return CandidateTable(
        prompts=[p for p in draw.prompts for _ in range(n)], responses=[r for rs in draw.responses for r in rs],
        cluster=np.repeat(np.arange(P), n), truth={g: truth[g] for g in groups if g in truth} | truth,
        population=np.asarray(pop, dtype=float), kind="synthetic", candidates_per_prompt=n)


def goqa_candidates(rows: Sequence[tuple[str, list[str], Mapping[str, list[float]]]], groups: Sequence[str]) -> CandidateTable:
    """Candidates of answer-share data: every option of every question some group of ``groups`` answered;
    truth = each group's share (the population: the mean over every country that answered)."""
    prompts, responses, cluster, qrows, questions = [], [], [], [], []
    truth: dict[str, list[float]] = {g: [] for g in groups}
    pop: list[float] = []
    qid: dict[str, int] = {}
    for question, options, dists in rows:
        if not any(g in dists for g in groups):
            continue
        start = len(responses)
        q = qid.setdefault(question, len(qid))
        mean = np.mean(np.asarray(list(dists.values()), dtype=float), axis=0)
        for k, opt in enumerate(options):
            prompts.append(question)
            responses.append(opt)
            cluster.append(q)
            pop.append(float(mean[k]))
            for g in groups:
                truth[g].append(float(dists[g][k]) if g in dists else math.nan)
        questions.append(question)
        qrows.append(np.arange(start, len(responses)))
    return CandidateTable(prompts=prompts, responses=responses, cluster=np.asarray(cluster, dtype=np.int64),
                          truth={g: np.asarray(v, dtype=float) for g, v in truth.items()},
                          population=np.asarray(pop, dtype=float), kind="answer_shares", questions=questions,
                          question_rows=qrows)


def block_items(table: CandidateTable, groups: Sequence[str], n: int) -> Items:
    """Synthetic items for best-of-``n``: every group, every prompt, each of the ``M // n`` disjoint blocks."""
    M = table.candidates_per_prompt
    if n > M or n < 1:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {M} candidates per prompt")
    P = len(table.prompts) // M
    blocks = M // n
    base = (np.arange(P)[:, None, None] * M + np.arange(blocks)[None, :, None] * n + np.arange(n)[None, None, :])
    rows = base.reshape(P * blocks, n)
    cl = np.repeat(np.arange(P), blocks)
    return Items(group=np.repeat(np.asarray(list(groups), dtype=object), len(rows)), cluster=np.tile(cl, len(groups)),
                 rows=np.tile(rows, (len(groups), 1)))


def question_items(table: CandidateTable, test_questions: Mapping[str, set[str]]) -> Items:
    """Answer-share items: each group's test questions it answered (at least two options)."""
    assert table.questions is not None and table.question_rows is not None
    group, cluster, rows = [], [], []
    width = max((len(r) for r in table.question_rows), default=1)
    for g, qs in test_questions.items():
        known = table.truth[g]
        for q, r in zip(table.questions, table.question_rows):
            if q in qs and not np.isnan(known[r]).any():
                group.append(g)
                cluster.append(int(table.cluster[r[0]]))
                rows.append(np.pad(r, (0, width - len(r)), constant_values=-1))
    return Items(group=np.asarray(group, dtype=object), cluster=np.asarray(cluster, dtype=np.int64),
                 rows=np.asarray(rows, dtype=np.int64).reshape(len(rows), width))


# ---------------------------------------------------------------------------------------------
# the choice
def tie_order(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A fixed random order of the candidates of every item (ties broken by it, the same for every model)."""
    return np.random.default_rng(stream_seed("downstream-ties", seed)).random(shape)


def pick(rewards: np.ndarray, order: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Column of the highest reward in every row of ``rewards [n, K]``; ties go to the highest ``order``.

    ``valid`` (``[n, K]`` bool): candidates that may be picked (padding may not).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if valid is not None:
        r = np.where(valid, r, -np.inf)
    return np.lexsort((order, r), axis=-1)[..., -1]


def best_of_n(rewards: np.ndarray, truth: np.ndarray, order: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``truth`` of the candidate the reward model picks in every row (``[n, K]`` arrays)."""
    j = pick(rewards, order, valid)
    return np.take_along_axis(np.asarray(truth, dtype=float), j[:, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------------------------
# scoring one split's models
@dataclass
class DownstreamSplit:
    """One split's picks: per (group, method, seed) the truth of the pick on each item of its group."""

    split_seed: int
    items: dict[str, Items]
    """Per setting (``"N=4"``, ... or ``"questions"``): its items."""
    own: dict[str, dict[tuple, np.ndarray]]
    """setting -> (group, method, seed) -> ``[n_g]`` the group's truth of the pick on its items."""
    pop: dict[str, dict[tuple, np.ndarray]]
    """Same, the population's truth of the pick."""
    oracle: dict[str, np.ndarray]
    """setting -> ``[n]`` best truth of every item; ``random``: mean truth."""
    random: dict[str, np.ndarray]
    extra: dict[str, dict[tuple, np.ndarray]]
    """Steering: ``"alpha"`` / ``"mixture"`` / ``"mixture_partner"`` -> (group, method, seed, α) -> ``[n_g]``
    (``alpha_pop`` / ``mixture_pop`` the population's); ``partner_global``: (group, seed) -> the partner's
    utility of the global model's pick."""


def _calibration_scales(exp: Experiment, weights: Mapping[tuple, np.ndarray]) -> dict[tuple, float]:
    """Scale of each model onto the global model's reward scale on the run's reference texts (as served)."""
    n = len(exp.text_index)
    ref = np.sort(np.random.default_rng(0).choice(n, size=min(512, n), replace=False))  # scpo.report's reference set
    feats = exp.features[ref].astype(np.float64)
    w_glob = exp.rm.head_params()[0].numpy().astype(np.float64)
    raw = {"global": feats @ w_glob} | {k: feats @ np.asarray(w, dtype=np.float64) for k, w in weights.items()}
    cal, _ = compute_calibration(raw)
    return {k: cal[k].scale for k in weights}


def score_split(exp: Experiment, res: FitResult, table: CandidateTable, features: np.ndarray,
                settings: Mapping[str, Items], methods: Sequence[str], seeds: Sequence[int],
                steer_setting: str | None, steer_methods: Sequence[str], partners: Mapping[str, str]) -> DownstreamSplit:
    """Every model's pick on every item of every setting (head-mode weights in ``res.models``)."""
    feats = np.asarray(features, dtype=np.float64)
    rewards: dict[tuple, np.ndarray] = {}

    def reward(key: tuple) -> np.ndarray:
        if key not in rewards:
            rewards[key] = feats @ np.asarray(res.models[key], dtype=np.float64)
        return rewards[key]

    own: dict[str, dict[tuple, np.ndarray]] = {}
    pop: dict[str, dict[tuple, np.ndarray]] = {}
    oracle, random = {}, {}
    orders = {}
    for name, it in settings.items():
        valid = it.rows >= 0
        rows = np.where(valid, it.rows, 0)
        truth = np.full(rows.shape, np.nan)
        for g in np.unique(it.group):
            m = it.group == g
            truth[m] = table.truth[g][rows[m]]
        truth = np.where(valid, truth, np.nan)
        oracle[name] = np.nanmax(truth, axis=1)
        random[name] = np.nanmean(truth, axis=1)
        orders[name] = order = tie_order(rows.shape, exp.cfg.data.split_seed)
        popt = table.population[rows]
        own[name], pop[name] = {}, {}
        for g in exp.groups:
            m = it.group == g
            if not m.any():
                continue
            for meth in methods:
                for s in seeds:
                    r = reward((g, meth, s))[rows[m]]
                    own[name][(g, meth, s)] = best_of_n(r, truth[m], order[m], valid[m])
                    pop[name][(g, meth, s)] = best_of_n(r, popt[m], order[m], valid[m])
    extra: dict[str, dict[tuple, np.ndarray]] = {k: {} for k in ("alpha", "alpha_pop", "mixture", "mixture_partner",
                                                                "mixture_pop", "partner_global")}
    if steer_setting is not None and steer_methods:
        it = settings[steer_setting]
        keys = [(g, m, s) for g in exp.groups for m in steer_methods for s in seeds] + \
               [(partners[g], m, s) for g in exp.groups if g in partners for m in steer_methods for s in seeds]
        scale = _calibration_scales(exp, {k: res.models[k] for k in set(keys)})
        r_glob = feats @ exp.rm.head_params()[0].numpy().astype(np.float64)
        for g in exp.groups:
            m = it.group == g
            rows, order = it.rows[m], orders[steer_setting][m]
            truth_g, popt = table.truth[g][rows], table.population[rows]
            h = partners.get(g)
            if h is not None:
                for s in seeds:  # the partner's utility of the global model's pick on g's items
                    extra["partner_global"][(g, s)] = best_of_n(r_glob[rows], table.truth[h][rows], order)
            for meth in steer_methods:
                for s in seeds:
                    z_g = scale[(g, meth, s)] * reward((g, meth, s))
                    z_h = scale[(h, meth, s)] * reward((h, meth, s)) if h is not None else None
                    for a in ALPHAS:
                        r = ((1 - a) * r_glob + a * z_g)[rows]
                        extra["alpha"][(g, meth, s, a)] = best_of_n(r, truth_g, order)
                        extra["alpha_pop"][(g, meth, s, a)] = best_of_n(r, popt, order)
                        if z_h is not None:
                            r = (a * z_g + (1 - a) * z_h)[rows]
                            extra["mixture"][(g, meth, s, a)] = best_of_n(r, truth_g, order)
                            extra["mixture_partner"][(g, meth, s, a)] = best_of_n(r, table.truth[h][rows], order)
                            extra["mixture_pop"][(g, meth, s, a)] = best_of_n(r, popt, order)
    return DownstreamSplit(exp.cfg.data.split_seed, dict(settings), own, pop, oracle, random, extra)


# ---------------------------------------------------------------------------------------------
# statistics
class _Stats:
    """Bootstrap of item means over prompts (clusters), seeds and splits; one draw for every statistic."""

    def __init__(self, splits: Sequence[DownstreamSplit], setting: str, groups: Sequence[str], n_runs: int,
                 n_boot: int, seed: int = 0):
        self.splits, self.setting, self.groups, self.R = list(splits), setting, list(groups), n_runs
        self.draws = SplitDraws(len(self.splits), n_boot, seed)
        self.boot = [ClusterBootstrap(sp.items[setting].cluster, n_runs, n_boot,
                                      seed=stream_seed("downstream", seed, sp.split_seed)) for sp in self.splits]
        self.masks = [{g: sp.items[setting].group == g for g in self.groups} for sp in self.splits]

    def _full(self, si: int, per_group: Mapping[str, np.ndarray]) -> np.ndarray:
        """``[runs, n]`` over the split's items from each group's ``[runs, n_g]`` values."""
        out = np.zeros((self.R, len(self.splits[si].items[self.setting].group)))
        for g, v in per_group.items():
            out[:, self.masks[si][g]] = v
        return out

    def group(self, values: Sequence[Mapping[str, np.ndarray]], g: str) -> tuple[float, np.ndarray]:
        """(point, replicates) of group ``g``'s mean; ``values[si][g]`` is ``[runs, n_g]``."""
        pts, reps = [], []
        for si, v in enumerate(values):
            full, mask = self._full(si, {g: v[g]}), self.masks[si][g]
            pts.append(float(np.mean(self.boot[si].point(full, mask))))
            reps.append(self.boot[si].replicates(full, mask))
        return float(np.mean(pts)), self.draws.combine(reps)

    def macro(self, values: Sequence[Mapping[str, np.ndarray]], gs: Sequence[str]) -> tuple[float, np.ndarray]:
        """(point, replicates) of the mean over groups ``gs`` (same prompt draws for every group)."""
        per = [self.group(values, g) for g in gs]
        return float(np.mean([p for p, _ in per])), np.mean(np.stack([r for _, r in per]), axis=0)


def _entry(point: float, reps: np.ndarray) -> dict[str, Any]:
    return {"mean": point, "ci95": list(percentile_ci(reps))}


def _ratio(num: tuple[float, np.ndarray], den: tuple[float, np.ndarray]) -> dict[str, Any]:
    with np.errstate(divide="ignore", invalid="ignore"):
        pt = num[0] / den[0] if den[0] > TOL else float("nan")
        reps = np.where(den[1] > TOL, num[1] / den[1], np.nan)
    return _entry(float(pt), reps)


def _values(splits: Sequence[DownstreamSplit], setting: str, groups: Sequence[str], seeds: Sequence[int],
            fn: Any) -> list[dict[str, np.ndarray]]:
    """``[split][group] -> [runs, n_g]`` of ``fn(split, group, seed)``."""
    return [{g: np.stack([fn(sp, g, s) for s in seeds]) for g in groups} for sp in splits]


def _metric_values(splits: Sequence[DownstreamSplit], setting: str, groups: Sequence[str], seeds: Sequence[int],
                   method: str) -> dict[str, list[dict[str, np.ndarray]]]:
    def own(sp: DownstreamSplit, g: str, s: int, m: str = method) -> np.ndarray:
        return sp.own[setting][(g, m, s)]

    def pop(sp: DownstreamSplit, g: str, s: int, m: str = method) -> np.ndarray:
        return sp.pop[setting][(g, m, s)]

    def gmask(sp: DownstreamSplit, g: str) -> np.ndarray:
        return sp.items[setting].group == g

    V = {
        "utility": _values(splits, setting, groups, seeds, own),
        "gain": _values(splits, setting, groups, seeds, lambda sp, g, s: own(sp, g, s) - own(sp, g, s, "global")),
        "win_rate": _values(splits, setting, groups, seeds,
                            lambda sp, g, s: (own(sp, g, s) > own(sp, g, s, "global") + TOL).astype(float)),
        "loss_rate": _values(splits, setting, groups, seeds,
                             lambda sp, g, s: (own(sp, g, s) < own(sp, g, s, "global") - TOL).astype(float)),
        "population_loss": _values(splits, setting, groups, seeds, lambda sp, g, s: pop(sp, g, s, "global") - pop(sp, g, s)),
        "headroom": _values(splits, setting, groups, seeds,
                            lambda sp, g, s: sp.oracle[setting][gmask(sp, g)] - own(sp, g, s, "global")),
    }
    return V


def _setting_tables(splits: Sequence[DownstreamSplit], setting: str, groups: Sequence[str], methods: Sequence[str],
                    seeds: Sequence[int], sets: Mapping[str, Sequence[str]], n_boot: int,
                    comparisons: Sequence[tuple[str, str]]) -> dict[str, Any]:
    st = _Stats(splits, setting, groups, len(seeds), n_boot)
    sets = {k: [g for g in v if g in groups] for k, v in sets.items()}
    sets = {k: v for k, v in sets.items() if v}
    per_group: dict[str, Any] = {g: {} for g in groups}
    group_rows: dict[str, Any] = {k: {} for k in sets}
    keep: dict[tuple, tuple[float, np.ndarray]] = {}
    ref = _values(splits, setting, groups, seeds, lambda sp, g, s: sp.oracle[setting][sp.items[setting].group == g])
    rnd = _values(splits, setting, groups, seeds, lambda sp, g, s: sp.random[setting][sp.items[setting].group == g])
    for g in groups:
        per_group[g]["oracle"] = _entry(*st.group(ref, g))
        per_group[g]["random"] = _entry(*st.group(rnd, g))
        per_group[g]["items"] = int(sum((sp.items[setting].group == g).sum() for sp in splits[:1]))
    for k, gs in sets.items():
        group_rows[k]["oracle"] = _entry(*st.macro(ref, gs))
        group_rows[k]["random"] = _entry(*st.macro(rnd, gs))
    def row(key: str, m: str, V: Mapping[str, Any], stat: Any) -> dict[str, Any]:
        """One method's entries for a group or a group set (``stat``: its point and replicates)."""
        out = {}
        for name in ("utility", "gain", "win_rate", "loss_rate", "population_loss"):
            keep[(key, m, name)] = stat(V[name])
            out[name] = _entry(*keep[(key, m, name)])
        out["gap_closed"] = _ratio(keep[(key, m, "gain")], stat(V["headroom"]))
        return out

    for m in methods:
        V = _metric_values(splits, setting, groups, seeds, m)
        for g in groups:
            per_group[g][m] = row(g, m, V, lambda v, g=g: st.group(v, g))
        for k, gs in sets.items():
            group_rows[k][m] = row(k, m, V, lambda v, gs=gs: st.macro(v, gs))
    tests: dict[str, Any] = {}
    for a, b in comparisons:
        key = f"{a} vs {b}"
        tests[key] = {}
        for unit in list(sets) + list(groups):
            res = {}
            for name in ("utility", "population_loss"):
                (pa, ra), (pb, rb) = keep[(unit, a, name)], keep[(unit, b, name)]
                d, reps = pa - pb, ra - rb
                res[name] = {"diff": float(d), "ci95": list(percentile_ci(reps)), "p_value": bootstrap_p_value(d, reps)}
            tests[key][unit] = res
    return {"per_group": per_group, "group_sets": group_rows, "tests": tests}


def _curve_tables(splits: Sequence[DownstreamSplit], setting: str, groups: Sequence[str], methods: Sequence[str],
                  seeds: Sequence[int], sets: Mapping[str, Sequence[str]], n_boot: int,
                  partners: Mapping[str, str]) -> dict[str, Any]:
    """Steering curves (α) and two-group mixtures (λ) on the same draws as the main tables."""
    st = _Stats(splits, setting, groups, len(seeds), n_boot)
    sets = {k: [g for g in v if g in groups] for k, v in sets.items() if any(g in groups for g in v)}

    def glob_own(sp: DownstreamSplit, g: str, s: int) -> np.ndarray:
        return sp.own[setting][(g, "global", s)]

    def glob_pop(sp: DownstreamSplit, g: str, s: int) -> np.ndarray:
        return sp.pop[setting][(g, "global", s)]

    def glob_partner(sp: DownstreamSplit, g: str, s: int) -> np.ndarray:
        return sp.extra["partner_global"][(g, s)]

    out: dict[str, Any] = {"alphas": list(ALPHAS), "setting": setting, "partners": dict(partners), "alpha": {},
                           "mixture": {}}
    for m in methods:
        if not any((g, m, seeds[0], 1.0) in splits[0].extra["alpha"] for g in groups):
            continue
        a_rows: dict[str, Any] = {k: {"gain": [], "kept_share": [], "population_loss": []} for k in sets}
        full_gain = {k: st.macro(_values(splits, setting, groups, seeds,
                                         lambda sp, g, s, m=m: sp.extra["alpha"][(g, m, s, 1.0)] - glob_own(sp, g, s)), gs)
                     for k, gs in sets.items()}
        for a in ALPHAS:
            gain = _values(splits, setting, groups, seeds,
                           lambda sp, g, s, a=a, m=m: sp.extra["alpha"][(g, m, s, a)] - glob_own(sp, g, s))
            loss = _values(splits, setting, groups, seeds,
                           lambda sp, g, s, a=a, m=m: glob_pop(sp, g, s) - sp.extra["alpha_pop"][(g, m, s, a)])
            for k, gs in sets.items():
                ga = st.macro(gain, gs)
                a_rows[k]["gain"].append(_entry(*ga))
                a_rows[k]["kept_share"].append(_ratio(ga, full_gain[k]))
                a_rows[k]["population_loss"].append(_entry(*st.macro(loss, gs)))
        out["alpha"][m] = a_rows
        mg = [g for g in groups if g in partners]
        if not mg or (mg[0], m, seeds[0], 1.0) not in splits[0].extra["mixture"]:
            continue
        x_rows: dict[str, Any] = {k: {"gain": [], "partner_gain": [], "population_loss": []} for k in sets}
        for a in ALPHAS:
            gain = _values(splits, setting, mg, seeds,
                           lambda sp, g, s, a=a, m=m: sp.extra["mixture"][(g, m, s, a)] - glob_own(sp, g, s))
            pgain = _values(splits, setting, mg, seeds,
                            lambda sp, g, s, a=a, m=m: sp.extra["mixture_partner"][(g, m, s, a)] - glob_partner(sp, g, s))
            loss = _values(splits, setting, mg, seeds,
                           lambda sp, g, s, a=a, m=m: glob_pop(sp, g, s) - sp.extra["mixture_pop"][(g, m, s, a)])
            for k, gs in sets.items():
                gs2 = [g for g in gs if g in mg]
                x_rows[k]["gain"].append(_entry(*st.macro(gain, gs2)))
                x_rows[k]["partner_gain"].append(_entry(*st.macro(pgain, gs2)))
                x_rows[k]["population_loss"].append(_entry(*st.macro(loss, gs2)))
        out["mixture"][m] = x_rows
    return out


def downstream_tables(splits: Sequence[DownstreamSplit], groups: Sequence[str], methods: Sequence[str],
                      seeds: Sequence[int], sets: Mapping[str, Sequence[str]], n_boot: int,
                      steer_setting: str | None = None, partners: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every table of the study from the splits' picks (per setting: per group, group sets, paired tests)."""
    comparisons = default_comparisons(methods)
    comparisons += [(m, "global") for m in methods if m not in ("global", "scpo") and (m, "global") not in comparisons]
    out: dict[str, Any] = {"settings": {}}
    for name in splits[0].items:
        out["settings"][name] = _setting_tables(splits, name, groups, methods, seeds, sets, n_boot, comparisons)
    if steer_setting is not None and partners is not None and any(splits[0].extra["alpha"]):
        out["steering"] = _curve_tables(splits, steer_setting, groups, methods, seeds, sets, n_boot, partners)
    out["comparisons"] = [list(c) for c in comparisons]
    return out


# ---------------------------------------------------------------------------------------------
# the study in a run
def _largest_other(exp: Experiment) -> dict[str, str]:
    """Each group's mixture partner: the other group with the most training pairs (first on ties)."""
    n = {g: int(((exp.group == g) & (exp.split == "train")).sum()) for g in exp.groups}
    return {g: max((h for h in exp.groups if h != g), key=lambda h: (n[h], -exp.groups.index(h)))
            for g in exp.groups if len(exp.groups) > 1}


class DownstreamStudy:
    """The study of a run: candidates drawn and scored once, every split's models measured on them.

    ``ns``: the N of best-of-N (synthetic; answer-share data uses each question's options).
    ``n_prompts``: synthetic prompts (0: every benchmark prompt). ``candidates``: the user's candidates
    with held-out choices, ``(file name, rows of scpo.load.candidates.load_candidate_choices)``, used
    instead of the data set's own truth.
    """

    def __init__(self, exp: Experiment, ns: Sequence[int], n_prompts: int = 0, progress: bool = False,
                 candidates: tuple[str, Sequence[tuple[str, list[str], Mapping[str, list[float]]]]] | None = None):
        t = time.perf_counter()
        self.ns = sorted({int(n) for n in ns})
        self.skipped: str | None = None
        self.source = candidates[0] if candidates is not None else None
        self.table: CandidateTable | None = None
        self.timing: dict[str, float] = {}
        self.score_stats: dict[str, Any] = {}
        if exp.cfg.train.mode != "head":
            self.skipped = (f"mode {exp.cfg.train.mode}: the downstream study re-scores candidates with score layers "
                            "over cached features (head mode only); full/LoRA models are not re-scored")
            return
        if exp.cfg.train.head_layers == "pooler":
            self.skipped = ("--head-layers pooler: each model's reward of a candidate goes through its own pooler, "
                            "whose inputs (the encoder's first-token states) the study does not cache; run it with "
                            "the score layer (--head-layers score)")
            return
        data = exp.data
        if candidates is not None:  # the user's candidates and held-out choices, whatever the data set
            self.table = goqa_candidates(candidates[1], exp.groups)
            if not self.table.questions:
                raise InputError(f"no prompt of the file has choices of a target group ({', '.join(exp.groups)})",
                                 file=self.source, field="choices")
            self._check_new(exp, kind="candidates of --downstream-candidates")
        elif data.synthetic:
            prov = data.provenance
            self.table = synthetic_candidates(prov["spec"], int(prov["seed"]), max(self.ns), n_prompts or None,
                                              exp.groups)
            self._check_new(exp)
        elif data.name == "goqa":
            self.table = goqa_candidates(answer_distributions(exp.cfg.data), exp.groups)
        else:
            self.skipped = (f"data set {data.name!r} has no known truth for candidates (the embedded benchmark's "
                            "utilities or GlobalOpinionQA's answer shares)")
            return
        self.timing["candidates"] = time.perf_counter() - t
        t = time.perf_counter()
        cache = FeatureCache(exp.cfg.model.cache_dir, exp.rm.feature_key())
        self.features, stats = encode_features(exp.rm, self.table.prompts, self.table.responses,
                                               batch_size=exp.cfg.model.score_batch_size, cache=cache, progress=progress)
        self.score_stats = {k: v for k, v in dict(stats).items() if isinstance(v, (int, float))}
        self.timing["score candidates"] = time.perf_counter() - t
        self.timing["measure"] = 0.0
        self.partners = _largest_other(exp)
        self.splits: list[DownstreamSplit] = []

    def _check_new(self, exp: Experiment, kind: str | None = None) -> None:
        """Candidates are never texts of the run (training or test): fail loudly if one is (generated
        candidates: an AssertionError, a bug; the user's file, ``kind``: an InputError naming it)."""
        assert self.table is not None
        known = set(zip(*exp.texts(np.arange(len(exp.text_index)))))
        clash = [i for i, t in enumerate(zip(self.table.prompts, self.table.responses)) if t in known]
        if clash and kind is not None:
            raise InputError(f"{len(clash)} {kind} are (prompt, response) texts of the run's pairs, e.g. "
                             f"{self.table.responses[clash[0]]!r:.60}: held-out choices must be on new candidates",
                             file=self.source, field="candidates")
        if clash:
            raise AssertionError(f"{len(clash)} downstream candidates are texts of the run, e.g. "
                                 f"{self.table.responses[clash[0]]!r}")

    def settings(self, exp: Experiment) -> dict[str, Items]:
        assert self.table is not None
        if self.table.kind == "synthetic":
            return {f"N={n}": block_items(self.table, exp.groups, n) for n in self.ns}
        if self.source is not None:  # every prompt of the file, but never one the group trained on
            prompts = set(self.table.questions or [])
            train: dict[str, set[str]] = {}
            for g in exp.groups:
                rows = np.flatnonzero((exp.group == g) & (exp.split == "train"))
                train[g] = set(exp.texts(exp.chosen_row[rows])[0]) if len(rows) else set()
            return {"questions": question_items(self.table, {g: prompts - train[g] for g in exp.groups})}
        test = {g: set(exp.split_key[(exp.group == g) & (exp.split == "test")].tolist()) for g in exp.groups}
        return {"questions": question_items(self.table, test)}

    def measure(self, exp: Experiment, res: FitResult, methods: Sequence[str], seeds: Sequence[int]) -> None:
        """Every model of one split (``res``, head mode) picks on the candidates."""
        if self.table is None:
            return
        t = time.perf_counter()
        methods = ["global"] + [m for m in methods if m != "global"]
        settings = self.settings(exp)
        steer = f"N={self.ns[-1]}" if self.table.kind == "synthetic" else None
        steer_methods = [m for m in ("scpo", "full") if m in methods] if steer else []
        self.splits.append(score_split(exp, res, self.table, self.features, settings, methods, seeds, steer,
                                       steer_methods, self.partners))
        self.timing["measure"] += time.perf_counter() - t

    def results(self, exp: Experiment, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
        """The ``downstream`` block of results.json."""
        if self.table is None:
            return {"skipped": self.skipped}
        t = time.perf_counter()
        methods = ["global"] + [m for m in methods if m != "global"]
        sets = group_sets(exp)
        out = downstream_tables(self.splits, exp.groups, methods, list(seeds), sets, exp.cfg.output.n_boot,
                                steer_setting=f"N={self.ns[-1]}" if self.table.kind == "synthetic" else None,
                                partners=self.partners)
        self.timing["statistics"] = time.perf_counter() - t
        n_clusters = len(np.unique(self.table.cluster))
        out.update({
            "kind": self.table.kind, "methods": methods, "seeds": list(seeds),
            "split_seeds": [sp.split_seed for sp in self.splits], "group_sets": list(sets),
            "candidates": len(self.table.responses), "prompts": n_clusters, "score": self.score_stats,
            "timing_s": dict(self.timing),
        })
        if self.table.kind == "synthetic":
            out.update({
                "n": self.ns, "candidates_per_prompt": self.table.candidates_per_prompt,
                "truth": "the group's true utility u_g = (w_shared + d_g) . a(y) of the pick",
                "population": "annotator-weighted mean of the groups' true utilities",
                "design": f"{self.table.candidates_per_prompt} new candidates per benchmark prompt (never a text of "
                          "the benchmark); best-of-N on the M // N disjoint blocks of N of each prompt",
            })
        elif self.source is not None:
            out.update({
                "source": self.source,
                "truth": "share of the group's people who chose the candidate the model ranks first",
                "population": "mean choice distribution over every group with choices for the prompt",
                "design": "each prompt of the candidates file (never a prompt of the group's training pairs) is "
                          "one choice among its candidates",
            })
        else:
            out.update({
                "truth": "share of the country's respondents who chose the option the model ranks first",
                "population": "mean answer distribution over every country that answered the question",
                "design": "each test question (of the group's split) is one choice among its options",
            })
        out["ci"] = {"method": "percentile bootstrap", "n_boot": exp.cfg.output.n_boot, "level": 0.95,
                     "resamples": ["prompts (questions): whole prompts, the same draws for every group and method"]
                     + (["training seeds"] if len(seeds) > 1 else [])
                     + (["split seeds"] if len(self.splits) > 1 else [])}
        return out
