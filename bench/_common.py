"""Shared helpers of the benchmarks: PRISM-like texts, timing, peak memory, the reference scorer.

Not a benchmark itself. Every benchmark prints its figures side by side from one run; nothing here
asserts a timing.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

_WORDS: list[str] | None = None


def vocabulary() -> list[str]:
    """Plain English words taken from the synthetic benchmark's phrases and tasks."""
    global _WORDS
    if _WORDS is None:
        from scpo.load.synthetic import PHRASES, TASKS

        words: set[str] = set()
        for zero, one in PHRASES.values():
            for s in zero + one:
                words.update(w.strip(".,;:!?'\"").lower() for w in s.split())
        for t in TASKS:
            words.update(t.split())
        _WORDS = sorted(w for w in words if w.isalpha())
    return _WORDS


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    words = vocabulary()
    out, left = [], n_words
    while left > 0:
        k = int(min(left, rng.integers(6, 18)))
        s = " ".join(words[i] for i in rng.integers(len(words), size=k))
        out.append(s[0].upper() + s[1:] + ".")
        left -= k
    return " ".join(out)


@dataclass
class Interactions:
    """PRISM-like conversations' opening turns: one prompt, a few responses of varied lengths."""

    prompts: list[str]
    """One entry per text (the interaction's prompt repeated)."""
    responses: list[str]
    interaction: np.ndarray
    """Interaction number of every text."""


def prism_like(n_texts: int, seed: int = 0, responses_per_interaction: int = 4, max_words: int = 150) -> Interactions:
    """``n_texts`` (prompt, response) texts in interactions of ``responses_per_interaction``.

    Lengths follow PRISM's shape (short user prompts, long-tailed model responses): prompt words
    ~ lognormal(median 14), response words ~ lognormal(median 60, sigma 0.8), each response's
    length drawn independently (different models answer at different lengths), prompt + response
    capped at ``max_words`` words so that no text is truncated at 256 tokens.
    """
    rng = np.random.default_rng(seed)
    prompts, responses, inter = [], [], []
    i = 0
    while len(responses) < n_texts:
        pw = int(np.clip(rng.lognormal(np.log(14), 0.7), 3, 60))
        prompt = _sentence(rng, pw).rstrip(".") + "?"
        for _ in range(min(responses_per_interaction, n_texts - len(responses))):
            rw = int(np.clip(rng.lognormal(np.log(60), 0.8), 3, max_words - pw))
            prompts.append(prompt)
            responses.append(_sentence(rng, rw))
            inter.append(i)
        i += 1
    return Interactions(prompts, responses, np.asarray(inter))


class PeakMemory:
    """Peak resident memory of this process: a sampling thread (current RSS) and ru_maxrss.

    ``with PeakMemory() as pm: ...`` then ``pm.peak_gib`` (sampled peak during the block) and
    ``pm.maxrss_gib`` (the process's lifetime peak, from getrusage).
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:  # not Linux: fall back to the lifetime peak
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self.rss()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.rss())

    @property
    def peak_gib(self) -> float:
        return self.peak / 2**30

    @property
    def maxrss_gib(self) -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def children_maxrss_gib() -> float:
    """Largest peak RSS of any finished child process (getrusage RUSAGE_CHILDREN)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), python {platform.python_version()}")


def load_average() -> str:
    try:
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "load average unknown"


def header(title: str) -> None:
    print(f"== {title}")
    print(f"   machine: {machine()}; {load_average()} at start")


def footer() -> None:
    print(f"   ({load_average()} at the end: other processes on this machine share its cores)")


def packaged_model_with_head(seed: int = 0, max_length: int = 256):
    """The packaged encoder (all-MiniLM-L6-v2) with a random, seeded score layer (rewards vary)."""
    import torch

    from scpo.config import ModelConfig
    from scpo.model import load_reward_model

    rm = load_reward_model(ModelConfig(max_length=max_length))
    g = torch.Generator().manual_seed(seed)
    rm.set_head(torch.randn(rm.feature_dim, generator=g) / rm.feature_dim**0.5, 0.1)
    return rm


def reference_scores(rm, texts: Interactions, max_per_batch: int = 8, no_grad: bool = True) -> tuple[np.ndarray, int]:
    """The reference approach (its ``preferences.py``): batches never cross an interaction.

    Each interaction's texts go in chunks of at most ``max_per_batch``, tokenised with
    ``padding=True`` (to the chunk's longest), in the dataset's order, no length sorting, no
    ``torch.inference_mode``. ``no_grad`` (default) grants it ``torch.no_grad()``, the generous
    reading; without it autograd records every op and it is slower still. Returns rewards and
    the padded tokens it processed.
    """
    import contextlib

    import torch

    model, tok = rm.model, rm.tokenizer
    model.eval()
    out = np.zeros(len(texts.responses))
    padded = 0
    bounds = np.flatnonzero(np.diff(texts.interaction)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(texts.responses)]])
    ctx = torch.no_grad if no_grad else contextlib.nullcontext
    for s0, e0 in zip(starts, ends):
        for s in range(s0, e0, max_per_batch):
            e = min(s + max_per_batch, e0)
            enc = tok(texts.prompts[s:e], texts.responses[s:e], padding=True, truncation=True,
                      max_length=rm.formatter.max_length, return_tensors="pt")
            padded += int(enc["input_ids"].numel())
            with ctx():
                logits = model(**enc).logits[:, 0]
            out[s:e] = logits.detach().float().numpy()
    return out, padded


def scpo_scores(rm, texts: Interactions, batch_size: int = 64) -> np.ndarray:
    """scpo's scoring (length-sorted batches, dynamic padding, inference mode), no cache."""
    from scpo.score import encode_features, rewards_from_features

    feats, _ = encode_features(rm, texts.prompts, texts.responses, batch_size=batch_size, cache=None,
                               progress=False, kill_point=None)
    w, b = rm.head_params()
    return rewards_from_features(feats, w.numpy(), float(b))


def token_lengths(rm, texts: Interactions) -> np.ndarray:
    ids, _, n_trunc = rm.formatter.encode(rm.tokenizer, texts.prompts, texts.responses)
    if n_trunc:
        print(f"   note: {n_trunc} texts exceed max_length and are truncated")
    return np.array([len(x) for x in ids])


def scpo_padded_tokens(lengths: np.ndarray, batch_size: int) -> int:
    """Tokens (padding included) scpo's length-sorted batching processes."""
    s = np.sort(lengths)[::-1]
    return int(sum(s[i] * len(s[i : i + batch_size]) for i in range(0, len(s), batch_size)))


def non_embedding_params(model) -> int:
    """Parameters taking part in matrix multiplies: all but the embedding tables (lookups)."""
    import torch

    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return sum(p.numel() for p in model.parameters()) - emb


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """This machine's fp32 matmul throughput (GFLOP/s), best of ``repeats`` n x n products."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def write_json(path: str | None, res: dict) -> None:
    """``--json FILE``: the figures a benchmark printed, as JSON (nothing when ``path`` is None)."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(res, f, indent=2, default=str)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t
