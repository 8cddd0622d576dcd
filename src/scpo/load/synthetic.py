"""The embedded default: a SYNTHETIC multicultural preference benchmark with known ground truth.

Nothing here describes real people. Groups have neutral names (``group-a`` ...) and invented
traits; the data exists so that scpo runs offline and so that its results can be checked against
a known truth (the *oracle*).

Design (fixed before any SCPO result was looked at):

* Prompts are everyday requests (topics x phrasings). Each prompt has a pool of candidate
  responses assembled from phrases that realise eight latent binary attributes a text encoder can
  see: ``helpful`` and ``correct`` (valued by everyone) and ``formal``, ``direct``,
  ``community`` (vs individual framing), ``humour``, ``religious`` and ``long`` (valued
  differently by groups).
* Each group's true utility is ``u_g(y) = (w_shared + d_g) . a(y)``: a shared utility plus a sparse
  group deviation ``d_g`` (two cultural attributes per group, magnitude 1-2 for minority groups,
  smaller for majority groups).
* Annotators (the split keys) each judge a few interactions: one prompt, three of its responses,
  every two of them compared by Bradley-Terry sampling from their group's utility. A share of
  annotators are outliers: *noisy* ones choose at random, *extreme* ones invert and amplify the
  shared utility (they prefer unhelpful, wrong answers), the kind of pair SCPO's weight discounts.
* Two majority groups supply most annotators, so a model trained on pooled data leans to them.
* Controls: ``no-outliers`` (no outlier annotators) and ``no-deviation`` (every group has the
  shared utility): SCPO has nothing to find there and must not beat full fine-tuning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import datasets
import numpy as np

from .base import PreferenceData

ATTRIBUTES = ("helpful", "correct", "formal", "direct", "community", "humour", "religious", "long")
SHARED_UTILITY = np.array([1.6, 1.2, 0.2, 0.3, 0.0, 0.1, -0.2, 0.2])
CULTURAL = tuple(range(2, len(ATTRIBUTES)))  # indices of the attributes groups may disagree on

TASKS = (
    "ask my manager for a raise", "tell a friend I cannot come to their wedding",
    "prepare for a job interview", "handle a disagreement with my neighbour",
    "save money for a holiday", "help my child with homework", "start exercising regularly",
    "deal with stress at work", "plan a family dinner", "write a thank-you note to a teacher",
    "learn a new language", "choose a gift for a colleague", "apologise to my sister",
    "organise a small community event", "decide whether to move to another city",
    "talk to my parents about my career", "welcome a new neighbour", "give feedback to a coworker",
    "get better sleep", "prepare a speech for a friend's birthday", "handle a rude customer",
    "split the bill fairly with flatmates", "start a vegetable garden", "care for an elderly relative",
    "ask for help when I feel overwhelmed", "make new friends after moving",
    "negotiate the price of a used car", "cope with the loss of a pet",
    "balance work and family time", "teach my teenager to drive",
)
PROMPT_TEMPLATES = (
    "How should I {task}?",
    "Can you give me advice on how to {task}?",
    "What is the best way to {task}?",
)

PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # attribute: (phrases when 0, phrases when 1)
    "helpful": (
        ("It really depends on many things, so it is hard to say.",
         "There is no single answer, and everyone has to find their own way.",
         "That is a difficult question and I am not sure what to suggest.",
         "Many people wonder about this, and opinions differ a lot."),
        ("Start by writing down two or three concrete steps and a date for each one.",
         "First, decide exactly what outcome you want, then plan the first small step for tomorrow.",
         "Make a short list of what you need, prepare it in advance, and check it the day before.",
         "Break it into small tasks, do the first one today, and review your progress after a week."),
    ),
    "correct": (
        ("Studies clearly show that doing everything at the last minute always works best.",
         "It is a well-known fact that sleeping less makes people more productive.",
         "Experts agree that ignoring a problem is the fastest way to solve it."),
        ("Studies suggest that steady small steps work better than rare big efforts.",
         "Getting enough rest is known to improve focus and decisions.",
         "Addressing a problem early usually makes it easier to solve."),
    ),
    "formal": (
        ("Hey, good one!", "Okay, so here's the thing.", "Alright, let's sort this out."),
        ("Thank you for your question; I would be glad to assist.",
         "Dear friend, I appreciate you raising this matter.",
         "I would respectfully offer the following considerations."),
    ),
    "direct": (
        ("Perhaps, if the moment feels right, you might gently consider it, though of course it is up to you.",
         "It may be worth thinking about, maybe, when you feel ready, without any pressure.",
         "One could possibly try, in a soft and indirect way, to hint at it."),
        ("Do it this week and say clearly what you want.",
         "Be clear and straightforward: state your point in the first sentence.",
         "Do not wait. Say it plainly and directly."),
    ),
    "community": (
        ("Focus on what you personally want and what is best for you.",
         "This is your own life, so put your individual goals first.",
         "Trust yourself and rely on your own independence."),
        ("Think about how this affects your family and community, and ask them for support.",
         "Talk it over with the people close to you; decisions are better made together.",
         "Consider the needs of your relatives and neighbours as well as your own."),
    ),
    "humour": (
        ("", "", ""),
        ("And remember, even superheroes need a coffee break!",
         "Worst case, you will have a funny story to tell at parties.",
         "If all else fails, blame the cat. It works every time."),
    ),
    "religious": (
        ("", "", ""),
        ("A short prayer can give you strength and peace before you begin.",
         "Faith in God can guide you through moments like this.",
         "Many find comfort in scripture and in their place of worship."),
    ),
    "long": (
        ("", "", ""),
        ("To explain a little further, it helps to keep notes on what worked and what did not, "
         "so that next time you can adjust your approach with more confidence.",
         "In more detail: consider the timing, the setting and the words you will use, and "
         "rehearse them once or twice so that they feel natural when the moment comes.",
         "Additionally, give yourself some time to reflect afterwards, because looking back "
         "calmly often shows what to keep and what to change."),
    ),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and truth of the synthetic benchmark."""

    n_minority: int = 7
    n_majority: int = 2
    annotators_minority: int = 40
    annotators_majority: int = 150
    interactions_per_annotator: int = 5
    responses_per_interaction: int = 3
    responses_per_prompt: int = 20
    n_prompts: int = 90
    outlier_rate: float = 0.15
    """Share of annotators who are outliers (half noisy, half extreme)."""
    deviation_scale: float = 1.0
    """Multiplies every group deviation (0 = no group differs from the shared utility)."""
    majority_deviation: float = 0.5
    """Size of the majority groups' deviations relative to the minority groups'."""
    extreme_strength: float = 3.0


PRESETS: dict[str, SyntheticSpec] = {
    "default": SyntheticSpec(),
    "no-outliers": SyntheticSpec(outlier_rate=0.0),
    "no-deviation": SyntheticSpec(deviation_scale=0.0),
    "tiny": SyntheticSpec(
        n_minority=2, n_majority=1, annotators_minority=10, annotators_majority=20,
        interactions_per_annotator=3, responses_per_prompt=6, n_prompts=12,
    ),
}


def group_names(spec: SyntheticSpec) -> tuple[list[str], list[str]]:
    """(majority, minority) group names: group-a, group-b, ... majority first."""
    n = spec.n_majority + spec.n_minority
    names = [f"group-{chr(ord('a') + i)}" for i in range(n)]
    return names[: spec.n_majority], names[spec.n_majority :]


def group_deviations(spec: SyntheticSpec, seed: int) -> dict[str, np.ndarray]:
    """Sparse deviation vectors: two cultural attributes per group, signs and sizes random."""
    rng = np.random.default_rng([seed, 1])
    majority, minority = group_names(spec)
    out = {}
    for name in majority + minority:
        d = np.zeros(len(ATTRIBUTES))
        idx = rng.choice(CULTURAL, size=2, replace=False)
        size = rng.uniform(1.0, 2.0, size=2) * rng.choice([-1.0, 1.0], size=2)
        if name in majority:
            size = size * spec.majority_deviation
        d[idx] = size * spec.deviation_scale
        out[name] = d
    return out


def _response(rng: np.random.Generator, attrs: np.ndarray) -> str:
    parts = {a: PHRASES[a][int(v)][rng.integers(len(PHRASES[a][int(v)]))] for a, v in zip(ATTRIBUTES, attrs)}
    body = [parts["helpful"], parts["correct"], parts["direct"], parts["community"]]
    rng.shuffle(body)
    seq = [parts["formal"], *body, parts["long"], parts["religious"], parts["humour"]]
    return " ".join(s for s in seq if s)


def _prompts_and_pools(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[list[str], list[list[tuple[str, np.ndarray]]]]:
    """The benchmark's prompts and, per prompt, its pool of (response, attribute vector), distinct texts.

    Draws from ``rng`` exactly what :func:`generate` draws first (its annotators come after).
    """
    prompts = [t.format(task=task) for task in TASKS for t in PROMPT_TEMPLATES]
    prompts = [prompts[i] for i in rng.permutation(len(prompts))[: spec.n_prompts]]
    pools: list[list[tuple[str, np.ndarray]]] = []
    for _ in prompts:
        pool, seen = [], set()
        while len(pool) < spec.responses_per_prompt:
            attrs = rng.integers(0, 2, size=len(ATTRIBUTES))
            text = _response(rng, attrs)
            if text not in seen:
                seen.add(text)
                pool.append((text, attrs))
        pools.append(pool)
    return prompts, pools


def resolve_spec(spec: SyntheticSpec | str | dict) -> SyntheticSpec:
    """A :class:`SyntheticSpec` from itself, a preset name or its ``asdict`` (a run's provenance)."""
    if isinstance(spec, SyntheticSpec):
        return spec
    if isinstance(spec, dict):
        return SyntheticSpec(**spec)
    if spec not in PRESETS:
        raise ValueError(f"unknown synthetic preset {spec!r}; known: {', '.join(PRESETS)}")
    return PRESETS[spec]


def group_utility_weights(spec: SyntheticSpec, seed: int) -> dict[str, np.ndarray]:
    """Every group's true utility weights ``w_shared + d_g`` over :data:`ATTRIBUTES`."""
    return {g: SHARED_UTILITY + d for g, d in group_deviations(spec, seed).items()}


def population_shares(spec: SyntheticSpec) -> dict[str, float]:
    """Each group's share of the annotators: the weights of the population utility (the pooled data's mix)."""
    majority, minority = group_names(spec)
    n = {g: spec.annotators_majority for g in majority} | {g: spec.annotators_minority for g in minority}
    total = sum(n.values())
    return {g: k / total for g, k in n.items()}


@dataclass(frozen=True)
class CandidateDraw:
    """New candidate responses for best-of-N (:func:`draw_candidates`): ``n`` per prompt, never training texts."""

    prompts: list[str]
    """The prompts (benchmark prompts), ``[P]``."""
    responses: list[list[str]]
    """``responses[p]``: the ``n`` candidates of prompt ``p`` (distinct)."""
    attributes: np.ndarray
    """``[P, n, len(ATTRIBUTES)]`` 0/1 attribute vector of every candidate."""

    def utility(self, weights: np.ndarray) -> np.ndarray:
        """``[P, n]`` utility ``weights . a(y)`` of every candidate."""
        return self.attributes.astype(float) @ np.asarray(weights, dtype=float)


def draw_candidates(spec: SyntheticSpec | str | dict, seed: int, n: int, n_prompts: int | None = None,
                    stream: int = 0) -> CandidateDraw:
    """``n`` new candidate responses for each of the first ``n_prompts`` benchmark prompts (default all).

    Drawn like the benchmark's own responses (uniform attribute vectors, the same phrases) but
    from a seed stream of their own (``[seed, 2, stream]``), so they are new draws; every
    response text of the benchmark's pools (a superset of every training and test text) is
    excluded, and candidates of a prompt are distinct.
    """
    spec = resolve_spec(spec)
    prompts, pools = _prompts_and_pools(spec, np.random.default_rng([seed, 0]))
    seen_texts = {text for pool in pools for text, _ in pool}
    k = len(prompts) if n_prompts is None else min(int(n_prompts), len(prompts))
    rng = np.random.default_rng([seed, 2, stream])
    responses, attributes = [], np.zeros((k, n, len(ATTRIBUTES)), dtype=np.int8)
    for p in range(k):
        drawn: list[str] = []
        taken: set[str] = set()
        while len(drawn) < n:
            attrs = rng.integers(0, 2, size=len(ATTRIBUTES))
            text = _response(rng, attrs)
            if text in seen_texts or text in taken:
                continue
            taken.add(text)
            attributes[p, len(drawn)] = attrs
            drawn.append(text)
        responses.append(drawn)
    return CandidateDraw(prompts=prompts[:k], responses=responses, attributes=attributes)


def generate(spec: SyntheticSpec | str = "default", seed: int = 0) -> PreferenceData:
    """Generate the benchmark deterministically from ``seed``."""
    preset = spec if isinstance(spec, str) else None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown synthetic preset {spec!r}; known: {', '.join(PRESETS)}")
        spec = PRESETS[spec]
    rng = np.random.default_rng([seed, 0])
    prompts, pools = _prompts_and_pools(spec, rng)

    majority, minority = group_names(spec)
    dev = group_deviations(spec, seed)
    rows: dict[str, list] = {k: [] for k in (
        "pair_id", "group", "prompt", "chosen", "rejected", "split_key", "contested",
        "oracle_margin", "annotator_kind",
    )}
    k = 0
    for gname in majority + minority:
        n_ann = spec.annotators_majority if gname in majority else spec.annotators_minority
        w_group = SHARED_UTILITY + dev[gname]
        for a in range(n_ann):
            u = rng.random()
            kind = "normal"
            if u < spec.outlier_rate / 2:
                kind = "noisy"
            elif u < spec.outlier_rate:
                kind = "extreme"
            annotator = f"{gname}/annotator-{a:03d}"
            for _ in range(spec.interactions_per_annotator):
                p = int(rng.integers(len(prompts)))
                idx = rng.choice(len(pools[p]), size=spec.responses_per_interaction, replace=False)
                for i in range(len(idx)):
                    for j in range(i + 1, len(idx)):
                        (t1, a1), (t2, a2) = pools[p][idx[i]], pools[p][idx[j]]
                        diff = (a1 - a2).astype(float)
                        true_margin = float(w_group @ diff)
                        if kind == "normal":
                            logit = true_margin
                        elif kind == "noisy":
                            logit = 0.0
                        else:
                            logit = -spec.extreme_strength * float(SHARED_UTILITY @ diff)
                        first = rng.random() < 1.0 / (1.0 + np.exp(-logit))
                        chosen, rejected = (t1, t2) if first else (t2, t1)
                        sign = 1.0 if first else -1.0
                        m_group, m_shared = sign * true_margin, sign * float(SHARED_UTILITY @ diff)
                        rows["pair_id"].append(f"syn-{k:06d}")
                        rows["group"].append(gname)
                        rows["prompt"].append(prompts[p])
                        rows["chosen"].append(chosen)
                        rows["rejected"].append(rejected)
                        rows["split_key"].append(annotator)
                        rows["contested"].append(bool(m_group * m_shared < 0))
                        rows["oracle_margin"].append(m_group)
                        rows["annotator_kind"].append(kind)
                        k += 1
    pairs = datasets.Dataset.from_dict(rows)
    return PreferenceData(
        name="synthetic",
        pairs=pairs,
        default_groups=majority + minority,
        default_test_fraction=0.2,
        split_unit="annotator",
        group_matches={g: [g] for g in majority + minority},
        stats={"majority_groups": majority, "minority_groups": minority, "n_texts": sum(len(p) for p in pools)},
        provenance={
            "synthetic": True,
            "generator": "scpo.load.synthetic",
            "preset": preset,
            "seed": seed,
            "spec": asdict(spec),
            "deviations": {g: dict(zip(ATTRIBUTES, map(float, d))) for g, d in dev.items()},
        },
        synthetic=True,
    )

