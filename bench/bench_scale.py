"""Benchmark 5: PRISM's size x 10 (about 700,000 responses, 40 groups) through load -> score -> select -> heads.

    .venv/bin/python bench/bench_scale.py                          # 700,000 responses, 40 groups
    .venv/bin/python bench/bench_scale.py --responses 100000       # a quicker look

Writes a synthetic PRISM-like pair table (users in 40 groups of skewed sizes, each interaction a
user prompt and 4 responses, all 6 pairs of them ordered by a rating) as an Arrow IPC file, a chunk
at a time, memory-maps it (:func:`scpo.load.arrow.open_pairs`) and runs the main pipeline on it:
:func:`scpo.experiment.prepare` (checks, split, distinct texts by dictionary encoding, features
scored into a memory-mapped ``.npy`` and the feature cache, global head, margins), then
:func:`scpo.fitting.fit` (selection and batched head training, grid search on 3 folds) for
every group. No stage holds the data as Python lists. ``--warm`` runs ``prepare`` a second time,
every feature then coming from the cache.

Scoring 700,000 texts with the real encoder takes hours on this CPU, so the run scores with a tiny
randomly initialised BERT (same architecture and tokenizer, hidden 32, 2 layers): the data and
memory path is what is measured. The real encoder's scoring time is extrapolated from its measured
tokens per second on a sample of the same texts (``--real-sample``; benchmark 1 measures it too).
Prints each stage's wall time and the peak resident memory (sampled RSS and ru_maxrss).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import PeakMemory, footer, header, vocabulary, write_json


def write_prism_like(path: Path, n_responses: int, n_groups: int, n_users: int, seed: int = 0,
                     chunk: int = 20000) -> dict:
    """The pair table as an Arrow IPC file, ``chunk`` interactions at a time (bounded memory)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    words = vocabulary()
    pool = []
    for _ in range(8192):
        k = int(rng.integers(5, 14))
        s = " ".join(words[i] for i in rng.integers(len(words), size=k))
        pool.append(s[0].upper() + s[1:] + ".")
    # groups of skewed sizes (a few large countries, many small), users assigned to groups
    size = 1.0 / np.arange(1, n_groups + 1) ** 0.9
    user_group = rng.choice(n_groups, size=n_users, p=size / size.sum())
    group_names = np.array([f"country-{g:02d}" for g in range(n_groups)])
    group_bias = rng.normal(size=(n_groups, 3))
    n_inter = n_responses // 4
    schema = pa.schema([(c, pa.string()) for c in ("pair_id", "group", "prompt", "chosen", "rejected", "split_key")])
    n_pairs = 0
    combos = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for c0 in range(0, n_inter, chunk):
            m = min(chunk, n_inter - c0)
            users = rng.integers(n_users, size=m)
            n_sent = np.clip(rng.lognormal(np.log(2.0), 0.6, size=(m, 4)).astype(int), 1, 10)
            prompt_sent = rng.integers(len(pool), size=(m, 2))
            style = rng.integers(3, size=(m, 4))
            rating = rng.normal(size=(m, 4)) + group_bias[user_group[users]][np.arange(m)[:, None], style]
            cols: dict[str, list[str]] = {k: [] for k in schema.names}
            for i in range(m):
                prompt = pool[prompt_sent[i, 0]][:-1] + "? " + pool[prompt_sent[i, 1]]
                resp = [" ".join(pool[j] for j in rng.integers(len(pool), size=n_sent[i, r])) for r in range(4)]
                u = int(users[i])
                for a, b in combos:
                    ch, rj = (a, b) if rating[i, a] > rating[i, b] else (b, a)
                    cols["pair_id"].append(f"p{n_pairs:08d}")
                    cols["group"].append(str(group_names[user_group[u]]))
                    cols["prompt"].append(prompt)
                    cols["chosen"].append(resp[ch])
                    cols["rejected"].append(resp[rj])
                    cols["split_key"].append(f"user-{u:06d}")
                    n_pairs += 1
            writer.write_batch(pa.record_batch([pa.array(cols[k], pa.string()) for k in schema.names], schema=schema))
    return {"pairs": n_pairs, "interactions": n_inter, "responses": 4 * n_inter, "bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--responses", type=int, default=700_000, help="responses (default 700000: PRISM x 10)")
    ap.add_argument("--groups", type=int, default=40, help="groups (default 40)")
    ap.add_argument("--users", type=int, default=15_000, help="users, the split keys (default 15000)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds (default 1)")
    ap.add_argument("--methods", default="global,full,scpo", help="methods (default global,full,scpo)")
    ap.add_argument("--batch-size", type=int, default=128, help="scoring batch (default 128)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the tiny encoder's ops are too small for a second thread)")
    ap.add_argument("--real-sample", type=int, default=256, help="texts scored by the real encoder to extrapolate "
                    "its time (default 256; 0 = skip)")
    ap.add_argument("--warm", action="store_true", help="then prepare again from the feature cache")
    ap.add_argument("--workdir", help="keep the Arrow file and features here (default: a temporary folder)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from scpo.config import RunConfig
    from scpo.experiment import prepare
    from scpo.fitting import fit
    from scpo.load import PreferenceData
    from scpo.load.arrow import open_pairs
    from scpo.testing import tiny_encoder

    torch.set_num_threads(args.threads)
    header(f"benchmark 5: scale ({args.responses:,} responses, {args.groups} groups), Arrow + memory-mapped path")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="scpo-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    rss: dict[str, tuple[float, float]] = {}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        with PeakMemory() as pm:
            def stage(name: str, t0: float) -> None:
                times[name] = time.perf_counter() - t0
                rss[name] = (PeakMemory.rss() / 2**30, pm.peak / 2**30)

            t = time.perf_counter()
            info = write_prism_like(work / "pairs.arrow", args.responses, args.groups, args.users)
            stage("generate (write Arrow file)", t)
            mem_gen = pm.peak_gib

            t = time.perf_counter()
            data = PreferenceData(name="prism-like-x10", pairs=open_pairs(work / "pairs.arrow"), split_unit="user",
                                  default_groups=[f"country-{g:02d}" for g in range(args.groups)], synthetic=True)
            stage("open (memory-map)", t)

            rm = tiny_encoder()
            cfg = RunConfig().replace(methods=methods, seeds=list(range(args.seeds)), cache_dir=str(work / "cache"),
                                      output_dir=str(work / "run"), score_batch_size=args.batch_size)
            t = time.perf_counter()
            exp = prepare(cfg, progress=False, rm=rm, data=data, features_file=work / "features.npy")
            stage("prepare", t)
            prepare_parts = dict(exp.timing_s)
            st = exp.score_stats

            t = time.perf_counter()
            thetas = fit(exp, methods, list(range(args.seeds)), progress=False).models
            stage("select + head training (grid + refit)", t)
            if args.warm:
                del exp
                t = time.perf_counter()
                warm = prepare(cfg, progress=False, rm=rm, data=data, features_file=work / "features-warm.npy")
                stage("prepare again (warm feature cache)", t)
                prepare_warm = dict(warm.timing_s)
                exp = warm
        total = sum(v for k, v in times.items() if not k.startswith("prepare again"))
        n_texts = len(exp.text_index)
        print(f"   data: {info['pairs']:,} pairs, {info['interactions']:,} interactions, {n_texts:,} distinct texts, "
              f"{len(exp.groups)} groups, {args.users:,} users; Arrow file {info['bytes'] / 2**20:,.0f} MiB")
        print(f"   scored {st['computed']:,} texts in {st['forward_passes']:,} forward passes "
              f"({st['cached']:,} from the cache)")
        print(f"     {'stage':<42} {'wall':>9} {'RSS after':>10} {'peak so far':>12}")
        for k, v in times.items():
            print(f"     {k:<42} {v:7.1f} s {rss[k][0]:6.2f} GiB {rss[k][1]:8.2f} GiB")
            parts = prepare_parts if k == "prepare" else prepare_warm if k.startswith("prepare again") else {}
            for name, sec in parts.items():
                print(f"       {name:<40} {sec:7.1f} s")
        print(f"   total {total:.1f} s ({total / 60:.1f} min); {len(thetas):,} head models")
        print(f"   peak memory: {pm.peak_gib:.2f} GiB sampled RSS (generation alone {mem_gen:.2f}), "
              f"ru_maxrss {pm.maxrss_gib:.2f} GiB; limit of this machine 24 GiB")
        res = {"info": info, "texts": n_texts, "score_stats": dict(st), "times_s": times, "prepare_s": prepare_parts,
               "rss_gib": rss, "total_s": total, "peak_rss_gib": pm.peak_gib, "maxrss_gib": pm.maxrss_gib,
               "threads": args.threads}
        if args.warm:
            res["prepare_warm_s"] = prepare_warm
        if args.real_sample > 0:
            from _common import packaged_model_with_head
            from scpo.score import encode_features

            torch.set_num_threads(torch.get_num_threads() if args.threads > 1 else 2)
            real = packaged_model_with_head()
            rows = np.linspace(0, n_texts - 1, args.real_sample).astype(np.int64)
            p, r = exp.texts(rows)
            encode_features(real, p[:16], r[:16], cache=None, progress=False, kill_point=None)  # warm-up
            t = time.perf_counter()
            encode_features(real, p, r, cache=None, progress=False, kill_point=None)
            dt = time.perf_counter() - t
            ids, _, _ = real.formatter.encode(real.tokenizer, p, r)
            sample_tokens = sum(map(len, ids))
            tokens = sample_tokens / len(rows) * n_texts  # the sample's tokens per text, for every text
            tok_s = sample_tokens / dt
            est = tokens / tok_s
            print(f"   real encoder (all-MiniLM-L6-v2, {torch.get_num_threads()} threads) on {args.real_sample} of these "
                  f"texts ({sample_tokens / len(rows):.0f} tokens each): {tok_s:,.0f} tokens/s -> scoring all "
                  f"{n_texts:,} (about {tokens / 1e6:.1f} M tokens) would take {est / 3600:.1f} h here; "
                  f"features {n_texts * real.feature_dim * 4 / 2**30:.2f} GiB memmap, "
                  f"pair differences {len(exp.group) * real.feature_dim * 4 / 2**30:.2f} GiB in memory")
            res.update(real_tokens_per_s=tok_s, real_tokens_estimate=tokens, real_scoring_estimate_h=est / 3600)
        footer()
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
