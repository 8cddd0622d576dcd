"""Benchmark 1: scpo's scoring against the reference approach, same model, same texts, one run.

    .venv/bin/python bench/bench_scoring.py            # 1,200 PRISM-like texts (about 5 min here)
    .venv/bin/python bench/bench_scoring.py --texts 3000 --repeats 2   # the issue's 'few thousand' (~12 min)

Reference (a faithful re-implementation of the reference code's ``preferences.py``): batches never
cross a user's interaction (4 responses to one prompt), at most 8 texts, ``padding=True``, dataset
order, no ``torch.inference_mode`` (granted ``torch.no_grad``; ``--reference-grad`` takes that
away too). scpo: :func:`scpo.score.encode_features` (length-sorted batches (16 texts on a CPU), dynamic padding,
inference mode), no cache. Same model: the packaged all-MiniLM-L6-v2 with a seeded random score
layer. Prints texts per second of both, their ratio and the largest reward difference.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import (
    footer,
    header,
    packaged_model_with_head,
    prism_like,
    reference_scores,
    scpo_padded_tokens,
    scpo_scores,
    timed,
    token_lengths,
    write_json,
)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=1200, help="texts to score (default 1200)")
    ap.add_argument("--batch-size", type=int, default=0, help="scpo's texts per forward pass (default 0: scpo's "
                    "auto, 16 on a CPU)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two this many times (default 1)")
    ap.add_argument("--reference-grad", action="store_true", help="reference without torch.no_grad either")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    header("benchmark 1: scoring (scpo vs the reference approach)")
    rm = packaged_model_with_head(args.seed)
    from scpo.forward import resolve_batch_size

    args.batch_size = resolve_batch_size(args.batch_size, next(rm.model.parameters()).device)
    texts = prism_like(args.texts, seed=args.seed)
    lengths = token_lengths(rm, texts)
    n_inter = int(texts.interaction.max()) + 1
    print(f"   texts: {len(lengths)} in {n_inter} interactions; tokens per text mean {lengths.mean():.0f}, "
          f"median {np.median(lengths):.0f}, p90 {np.percentile(lengths, 90):.0f}, max {lengths.max()}")
    # warm-up (first-call allocations, kernel selection) on a few texts, both paths
    warm = prism_like(32, seed=args.seed + 1)
    scpo_scores(rm, warm, args.batch_size)
    reference_scores(rm, warm)

    t_ref, t_scpo = [], []
    for _ in range(args.repeats):
        (r_scpo), dt = timed(scpo_scores, rm, texts, args.batch_size)
        t_scpo.append(dt)
        (r_ref, ref_padded), dt = timed(reference_scores, rm, texts, no_grad=not args.reference_grad)
        t_ref.append(dt)
    n = len(lengths)
    real = int(lengths.sum())
    scpo_padded = scpo_padded_tokens(lengths, args.batch_size)
    res = {
        "texts": n,
        "real_tokens": real,
        "reference_s": min(t_ref),
        "scpo_s": min(t_scpo),
        "reference_texts_per_s": n / min(t_ref),
        "scpo_texts_per_s": n / min(t_scpo),
        "ratio": min(t_ref) / min(t_scpo),
        "max_abs_reward_diff": float(np.max(np.abs(r_ref - r_scpo))),
        "reference_padded_tokens": ref_padded,
        "scpo_padded_tokens": scpo_padded,
    }
    print(f"   {'':<10} {'seconds':>9} {'texts/s':>9} {'tokens processed':>17} {'padding':>8}")
    print(f"   {'reference':<10} {res['reference_s']:9.1f} {res['reference_texts_per_s']:9.1f} {ref_padded:17,d} "
          f"{1 - real / ref_padded:8.1%}")
    print(f"   {'scpo':<10} {res['scpo_s']:9.1f} {res['scpo_texts_per_s']:9.1f} {scpo_padded:17,d} "
          f"{1 - real / scpo_padded:8.1%}")
    print(f"   ratio scpo/reference: {res['ratio']:.2f}x   largest reward difference: {res['max_abs_reward_diff']:.2e}"
          f" ({'< 1e-4: same rewards' if res['max_abs_reward_diff'] < 1e-4 else 'DIFFERENT rewards'})")
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
