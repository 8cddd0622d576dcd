"""Benchmark 3: how close scoring and training come to this machine's matrix-multiply limit.

    .venv/bin/python bench/bench_limit.py                  # 600 texts, 4 training steps (about 2 min here)
    .venv/bin/python bench/bench_limit.py --texts 1200 --train-steps 8

Measures the fp32 throughput of a large torch matmul (GFLOP/s), then scpo's scoring (length-sorted
batches, dynamic padding, inference mode) and a full-mode training step (SCPOTrainer, dynamic
padding, length-grouped batches) and reports their achieved FLOP/s as a fraction of it:

* forward FLOPs ~= 2 x parameters x tokens, training ~= 3 x that (forward + backward);
* "parameters" are those that multiply: the embedding tables are lookups, not matmuls, so they
  are left out (all parameters, the issue's literal formula, is printed too);
* "tokens" are real tokens (padding is overhead, not useful work).

Then it names what keeps the rest: a torch.profiler run of the same scoring splits forward time into
dense matmuls (``addmm``/``mm``), attention (``scaled_dot_product_attention``, ``bmm``, softmax),
layer norm / GELU / other elementwise ops and embedding lookups; tokenisation is timed on its own;
padding's share is the padded share of tokens; the remainder (collation, hooks, Python) is "Python
and other".
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import (
    footer,
    header,
    matmul_gflops,
    non_embedding_params,
    packaged_model_with_head,
    prism_like,
    scpo_padded_tokens,
    scpo_scores,
    token_lengths,
    write_json,
)

CATEGORIES = (
    ("dense matmul", ("aten::addmm", "aten::mm")),
    ("attention", ("scaled_dot_product", "flash_attention", "aten::bmm", "aten::baddbmm", "softmax")),
    ("embedding", ("aten::embedding", "aten::index_select")),
    ("norm, GELU, elementwise", ("layer_norm", "gelu", "aten::add", "aten::mul", "aten::div", "aten::tanh",
                                 "aten::copy_", "aten::clone", "aten::contiguous", "aten::to", "aten::_to_copy",
                                 "aten::masked_fill", "aten::sub", "aten::rsub", "aten::where", "aten::expand",
                                 "aten::view", "aten::permute", "aten::transpose", "aten::reshape", "aten::select",
                                 "aten::slice", "aten::unsqueeze", "aten::fill_", "aten::zero_", "aten::empty",
                                 "aten::t", "aten::linear", "aten::matmul", "aten::dropout", "aten::as_strided")),
)


def categorise(events) -> dict[str, float]:
    """Self CPU seconds of profiled ops, per category (ops not named above: 'other ops')."""
    out = {name: 0.0 for name, _ in CATEGORIES}
    out["other ops"] = 0.0
    for e in events:
        if not e.key.startswith("aten::") and "attention" not in e.key:
            continue
        secs = e.self_cpu_time_total / 1e6
        for name, keys in CATEGORIES:
            if any(k in e.key for k in keys):
                out[name] += secs
                break
        else:
            out["other ops"] += secs
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=600, help="texts to score (default 600)")
    ap.add_argument("--batch-size", type=int, default=0, help="scoring batch (default 0: scpo's auto, 16 on a CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="time scoring this many times, keep the fastest, as the "
                    "matmul reference keeps its fastest of 5 (default 3)")
    ap.add_argument("--matmul-n", type=int, default=4096, help="size of the reference matmul (default 4096)")
    ap.add_argument("--train-steps", type=int, default=4, help="timed training steps, 0 = skip (default 4)")
    ap.add_argument("--train-batch-size", type=int, default=8, help="pairs per training step (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    header("benchmark 3: achieved FLOP/s against this machine's matmul throughput")
    peak = matmul_gflops(args.matmul_n)
    print(f"   fp32 matmul {args.matmul_n}x{args.matmul_n}: {peak:.1f} GFLOP/s (best of 5)")
    rm = packaged_model_with_head(args.seed)
    p_all = sum(p.numel() for p in rm.model.parameters())
    p_mm = non_embedding_params(rm.model)
    cfg = rm.model.config
    from scpo.forward import resolve_batch_size

    args.batch_size = resolve_batch_size(args.batch_size, next(rm.model.parameters()).device)
    texts = prism_like(args.texts, seed=args.seed)
    lengths = token_lengths(rm, texts)
    real = int(lengths.sum())
    padded = scpo_padded_tokens(lengths, args.batch_size)
    scpo_scores(rm, prism_like(64, seed=args.seed + 1), args.batch_size)  # warm-up

    t = time.perf_counter()
    rm.formatter.encode(rm.tokenizer, texts.prompts, texts.responses)
    t_tok = time.perf_counter() - t
    t_score = float("inf")
    for _ in range(max(1, args.repeats)):
        t = time.perf_counter()
        scpo_scores(rm, texts, args.batch_size)
        t_score = min(t_score, time.perf_counter() - t)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        scpo_scores(rm, texts, args.batch_size)
        t_prof = time.perf_counter() - t
    cats = categorise(prof.key_averages())

    # attention FLOPs (QK^T and AV: 4 T^2 d per layer and sequence), on the padded batches actually run
    s = np.sort(lengths)[::-1]
    att_padded = sum(len(s[i:i + args.batch_size]) * int(s[i]) ** 2 for i in range(0, len(s), args.batch_size))
    att = 4 * cfg.num_hidden_layers * cfg.hidden_size
    fl_dense_useful = 2 * p_mm * real
    fl_dense_run = 2 * p_mm * padded
    fl_att_run = att * att_padded
    achieved = fl_dense_useful / t_score / 1e9
    achieved_all = 2 * p_all * real / t_score / 1e9
    print(f"   model: {p_all / 1e6:.1f} M parameters, {p_mm / 1e6:.1f} M outside the embedding tables")
    print(f"   scoring {len(lengths)} texts: {t_score:.1f} s, {real / t_score:,.0f} real tokens/s "
          f"({padded / t_score:,.0f} incl. padding {1 - real / padded:.1%})")
    print(f"   scoring achieved: {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of matmul "
          f"(2 x {p_mm / 1e6:.1f} M x real tokens/s; with all {p_all / 1e6:.1f} M parameters "
          f"{achieved_all:.1f} GFLOP/s = {achieved_all / peak:.0%})")
    # where the scoring time goes: profiler shares scaled to the unprofiled run
    op_total = sum(cats.values())
    fwd = max(t_score - t_tok, 1e-9)
    scale = fwd / t_prof if t_prof > 0 else 1.0
    rows = {"tokenisation": t_tok}
    for k, v in cats.items():
        rows[k] = v * scale
    rows["Python and other (collation, hooks, dispatch)"] = max(fwd - op_total * scale, 0.0)
    dense_s = rows["dense matmul"]
    print(f"   where scoring time goes ({t_score:.1f} s; op shares from a profiled run of {t_prof:.1f} s):")
    for k, v in rows.items():
        print(f"     {k:<46} {v:6.2f} s  {v / t_score:6.1%}")
    if dense_s > 0:
        print(f"   dense matmuls alone: {fl_dense_run / dense_s / 1e9:.1f} GFLOP/s = {fl_dense_run / dense_s / 1e9 / peak:.0%}"
              f" of matmul (on padded tokens); padding wastes {1 - real / padded:.1%} of them")
    att_s = rows["attention"]
    print(f"   attention: {fl_att_run / 1e9:.0f} GFLOP ({fl_att_run / (fl_att_run + fl_dense_run):.0%} of the forward's "
          f"FLOPs) in {att_s:.2f} s" + (f" = {fl_att_run / att_s / 1e9:.1f} GFLOP/s" if att_s > 0 else ""))
    res = {"matmul_gflops": peak, "params": p_all, "matmul_params": p_mm, "texts": len(lengths), "real_tokens": real,
           "padded_tokens": padded, "scoring_s": t_score, "scoring_gflops": achieved,
           "scoring_fraction": achieved / peak, "scoring_fraction_all_params": achieved_all / peak,
           "scoring_breakdown_s": rows, "attention_gflop": fl_att_run / 1e9}

    if args.train_steps > 0:
        from bench_training import make_pairs, run_arm

        pairs = make_pairs(max(4 * args.train_batch_size, args.train_batch_size * (args.train_steps + 2)), args.seed)
        run_arm(rm, make_pairs(2 * args.train_batch_size, args.seed + 1), pad_to=None, group_by_length=False,
                steps=1, batch_size=args.train_batch_size)  # warm-up
        a = run_arm(rm, pairs, pad_to=None, group_by_length=True, steps=args.train_steps,
                    batch_size=args.train_batch_size)
        tok_s = a["real_tokens_per_step"] / a["step_s"]
        tr = 3 * 2 * p_mm * tok_s / 1e9
        print(f"   training step ({args.train_batch_size} pairs): {a['step_s']:.2f} s, {tok_s:,.0f} real tokens/s, "
              f"padding {a['padding']:.1%}")
        print(f"   training achieved: {tr:.1f} GFLOP/s = {tr / peak:.0%} of matmul (3 x 2 x {p_mm / 1e6:.1f} M x real "
              f"tokens/s; with all parameters {tr * p_all / p_mm / peak:.0%})")
        res.update(train_step_s=a["step_s"], train_real_tokens_per_s=tok_s, train_gflops=tr, train_fraction=tr / peak,
                   train_padding=a["padding"])
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
