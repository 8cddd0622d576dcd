"""Benchmark 2: a full-mode training step, dynamic padding + length-grouped batches vs padding to 512.

    .venv/bin/python bench/bench_training.py                 # 64 pairs, batches of 8, one epoch per arm
    .venv/bin/python bench/bench_training.py --pairs 128 --batch-size 16

Three arms, each a real :class:`scpo.trainer.SCPOTrainer` run (full fine-tuning of the packaged
all-MiniLM-L6-v2 with a seeded score layer, AdamW) on the same PRISM-like pairs:

* ``scpo``     — :class:`scpo.trainer.PairCollator` (dynamic padding) + length-grouped batches;
* ``pad512``   — every text padded to 512 tokens (``PairCollator(pad_to=512)``), the same batches;
* ``dynamic``  — dynamic padding with random (not length-grouped) batches, to split the two effects;
* ``grouped32`` — length-grouped, padded to the batch's longest rounded up to a multiple of 32
  (fewer distinct shapes, at the cost of some padding).

Dropout is switched off in every arm so that ``scpo`` and ``pad512`` (same batches, same seed)
must give the same loss on every step: the first steps' losses are printed side by side. Pairs per
second are timed over one epoch (every arm trains on the same pairs), from the start of training to
the last step's end (data loading, forward, backward and optimiser steps), after a separate
warm-up run; the arms run alternately ``--repeats`` times and each keeps its fastest run (other
processes share this machine's two cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from _common import footer, header, packaged_model_with_head, prism_like, write_json


def make_pairs(n_pairs: int, seed: int = 0):
    """(prompts, chosen, rejected) from PRISM-like interactions: 2 pairs per 4-response interaction."""
    texts = prism_like(4 * ((n_pairs + 1) // 2), seed=seed)
    p, c, r = [], [], []
    for s in range(0, len(texts.responses), 4):
        for a, b in ((0, 1), (2, 3)):
            p.append(texts.prompts[s + a])
            c.append(texts.responses[s + a])
            r.append(texts.responses[s + b])
    return p[:n_pairs], c[:n_pairs], r[:n_pairs]


def run_arm(rm, pairs, *, pad_to: int | None, group_by_length: bool, steps: int, batch_size: int, seed: int = 0,
            lr: float = 1e-5, multiple_of: int = 1) -> dict:
    """One SCPOTrainer run of ``steps`` steps; returns losses, pairs/s and tokens processed."""
    import copy

    import torch
    from transformers import TrainerCallback

    from scpo.config import TrainConfig, TrainerConfig
    from scpo.trainer import PairCollator, SCPOTrainer, build_pair_dataset, training_arguments

    prompts, chosen, rejected = pairs
    ds = build_pair_dataset(rm.tokenizer, rm.formatter, prompts, chosen, rejected, np.ones(len(prompts)))
    model = copy.deepcopy(rm.model)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    losses: list[float] = []
    tokens = {"real": 0, "padded": 0}

    class Recording(SCPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens["real"] += int(inputs["attention_mask"].sum())
            tokens["padded"] += int(inputs["attention_mask"].numel())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    tc, trc = TrainConfig(mode="full", batch_size=batch_size), TrainerConfig(group_by_length=group_by_length)
    with tempfile.TemporaryDirectory() as out:
        targs = training_arguments(out, tc, trc, learning_rate=lr, max_steps=steps, seed=seed, save_steps=0,
                                   logging_steps=10**6)
        collator = PairCollator(rm.tokenizer.pad_token_id or 0, pad_to=pad_to)
        if multiple_of > 1:  # dynamic padding rounded up to a multiple: fewer distinct shapes
            def collator(features, _pad=rm.tokenizer.pad_token_id or 0):
                longest = max(max(len(f["chosen_input_ids"]), len(f["rejected_input_ids"])) for f in features)
                return PairCollator(_pad, pad_to=-(-longest // multiple_of) * multiple_of)(features)
        trainer = Recording(model=model, args=targs, train_dataset=ds, data_collator=collator, callbacks=[Clock()])
        trainer.train()
    timed_s = ends[-1] - ends[0]
    n_timed = len(ends) - 1
    return {
        "losses": losses,
        "pairs_per_s": n_timed * batch_size / timed_s,
        "step_s": timed_s / n_timed,
        "real_tokens_per_step": tokens["real"] / len(losses),
        "padded_tokens_per_step": tokens["padded"] / len(losses),
        "padding": 1 - tokens["real"] / tokens["padded"],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=64, help="training pairs (default 64)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per arm (default 0: one epoch, so every arm "
                    "trains on the same pairs)")
    ap.add_argument("--pad-to", type=int, default=512, help="fixed length of the padded arm (default 512)")
    ap.add_argument("--repeats", type=int, default=2, help="run the arms alternately this many times, keep each "
                    "arm's fastest (default 2)")
    ap.add_argument("--skip-dynamic", action="store_true", help="leave out the dynamic-padding random-batch arm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    header("benchmark 2: full-mode training step (dynamic padding + length grouping vs padding to 512)")
    rm = packaged_model_with_head(args.seed)
    pairs = make_pairs(args.pairs, args.seed)
    args.steps = args.steps or args.pairs // args.batch_size
    kw = dict(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    plan = {"scpo": (None, True, 1), "pad512": (args.pad_to, True, 1)}
    if not args.skip_dynamic:
        plan["dynamic"] = (None, False, 1)
        plan["grouped32"] = (None, True, 32)
    run_arm(rm, make_pairs(4 * args.batch_size, args.seed + 1), pad_to=None, group_by_length=False,
            steps=1, batch_size=args.batch_size)  # warm-up: first backward, allocator, thread pool
    arms: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, (pad_to, grouped, mult) in plan.items():
            a = run_arm(rm, pairs, pad_to=pad_to, group_by_length=grouped, multiple_of=mult, **kw)
            if name not in arms or a["pairs_per_s"] > arms[name]["pairs_per_s"]:
                arms[name] = a
    print(f"   {args.pairs} pairs, batches of {args.batch_size} pairs ({2 * args.batch_size} texts), "
          f"{args.steps} timed steps per arm (one epoch), {args.repeats} repeats")
    print(f"   {'arm':<9} {'pairs/s':>8} {'s/step':>7} {'tokens/step':>12} {'padding':>8}")
    for name, a in arms.items():
        print(f"   {name:<9} {a['pairs_per_s']:8.2f} {a['step_s']:7.2f} {a['padded_tokens_per_step']:12,.0f} "
              f"{a['padding']:8.1%}")
    ratio = arms["scpo"]["pairs_per_s"] / arms["pad512"]["pairs_per_s"]
    k = min(3, len(arms["scpo"]["losses"]))
    l_s, l_p = arms["scpo"]["losses"][:k], arms["pad512"]["losses"][:k]
    diff = float(np.max(np.abs(np.array(l_s) - np.array(l_p))))
    print(f"   ratio scpo/pad512: {ratio:.2f}x")
    if "dynamic" in arms:
        print(f"   of which length grouping (scpo/dynamic): {arms['scpo']['pairs_per_s'] / arms['dynamic']['pairs_per_s']:.2f}x;"
              f" grouped and padded to a multiple of 32 vs pad512: "
              f"{arms['grouped32']['pairs_per_s'] / arms['pad512']['pairs_per_s']:.2f}x")
    print(f"   first {k} losses  scpo {[round(x, 6) for x in l_s]}  pad512 {[round(x, 6) for x in l_p]}  "
          f"largest difference {diff:.1e}")
    footer()
    res = {"ratio": ratio, "first_loss_max_abs_diff": diff, "arms": arms, "pairs": args.pairs,
           "batch_size": args.batch_size, "steps": args.steps}
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
