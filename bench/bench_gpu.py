"""Benchmarks 1-3 on an accelerator: a DeBERTa-v3-base-sized reward model, bf16, random token ids.

    python bench/bench_gpu.py                                   # on a GPU machine: cuda, bfloat16
    python bench/bench_gpu.py --device cpu --dtype float32 --tiny --texts 96 --train-pairs 16   # smoke run

Nothing is downloaded: the model is built from a configuration equal to microsoft/deberta-v3-base's
(12 layers, hidden 768, 12 heads, relative position buckets 256, vocabulary 128,100; 184 M
parameters) with random weights and a one-output score layer, and fed random token ids whose
lengths are those of PRISM-like (prompt, response) texts (the packaged tokenizer's counts of
``_common.prism_like`` texts, 4 responses per interaction). Three measurements, side by side:

1. **Scoring**: scpo's scoring loop (``scpo.forward.forward``: every text sorted by
   length, batches of ``--batch-size``, dynamic padding, ``torch.inference_mode``) against the
   reference approach (batches that never cross an interaction, at most 8 texts, padded to the
   chunk's longest, dataset order, ``torch.no_grad`` granted). Texts/s, the ratio, and the largest
   reward difference, checked in float32 (TF32 off) on the first ``--check-texts`` texts, where
   both must agree to < 1e-4 (in bf16 a different batch composition moves rewards by ~1e-2).
2. **Training**: ``SCPOTrainer`` full-mode steps (AdamW, ``--dtype`` autocast via ``bf16``) with
   ``PairCollator`` dynamic padding + length-grouped batches against every text padded to 512, the
   same pairs, dropout off: pairs/s, the ratio, and the first losses side by side.
3. **Close to the limit**: the accelerator's dense matmul throughput in ``--dtype`` (8192^3,
   best of 10) against scoring's and training's achieved FLOP/s: 2 x matmul parameters x real
   tokens per second for scoring, 3x that for training (embedding tables are lookups, not
   matmuls, and are left out; attention's T^2 terms are printed apart).

``--tiny`` shrinks the model (2 layers, hidden 64) so that the script can be checked on a CPU.
Prints everything, and with ``--json FILE`` writes it.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from _common import footer, header, non_embedding_params, packaged_model_with_head, prism_like, write_json


def deberta_v3_base(tiny: bool = False):
    """A random DeBERTa-v3-base-sized sequence-classification model (one output)."""
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256) if tiny else dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    cfg = DebertaV2Config(vocab_size=128100, max_position_embeddings=512, relative_attention=True,
                          position_buckets=256, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                          share_att_key=True, position_biased_input=False, type_vocab_size=0, max_relative_positions=-1,
                          layer_norm_eps=1e-7, num_labels=1, pad_token_id=0, **size)
    return DebertaV2ForSequenceClassification(cfg)


def reward_model(model, tok, device, dtype):
    """scpo's RewardModel around ``model`` (moved to ``device``/``dtype`` in place); the packaged
    tokenizer ``tok`` only supplies the padding id."""
    import torch

    from scpo.model import InputFormatter, RewardModel

    model = model.to(device=device, dtype=dtype).eval()
    rm = RewardModel(model, tok, InputFormatter.for_tokenizer(tok, "text-pair", 512), "deberta-v3-base-random")
    rm.set_head(torch.randn(rm.feature_dim, generator=torch.Generator().manual_seed(0)) / rm.feature_dim**0.5, 0.0)
    return rm


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def token_ids(packaged, n_texts: int, seed: int, vocab: int) -> tuple[list[list[int]], np.ndarray]:
    """Random ids with PRISM-like lengths (the packaged model's token counts), and the interaction of each."""
    texts = prism_like(n_texts, seed=seed)
    ids, _, _ = packaged.formatter.encode(packaged.tokenizer, texts.prompts, texts.responses)
    rng = np.random.default_rng(seed)
    out = [[101] + rng.integers(1000, vocab, size=len(x) - 2).tolist() + [102] for x in ids]
    return out, texts.interaction


def scpo_rewards(rm, ids, batch_size, device) -> np.ndarray:
    """scpo's scoring loop on token ids: length-sorted batches, dynamic padding, inference mode."""
    from scpo.forward import Tokens, forward, plan

    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    tokens = Tokens(np.concatenate([np.asarray(x, dtype=np.int32) for x in ids]), None,
                    np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    batches = plan(lengths, batch_size)
    w, b = rm.head_params()
    out = np.zeros(len(ids))
    for i, f in forward(rm.model, tokens, batches, pad_id=0, output="features", module=rm.score_layer):
        out[batches[i]] = f.astype(np.float64) @ w.numpy() + float(b)
    return out


def reference_rewards(rm, ids, interaction, device, max_per_batch: int = 8) -> np.ndarray:
    import torch

    out = np.zeros(len(ids))
    bounds = np.flatnonzero(np.diff(interaction)) + 1
    for s0, e0 in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(ids)]])):
        for s in range(s0, e0, max_per_batch):
            e = min(s + max_per_batch, e0)
            T = max(len(x) for x in ids[s:e])
            x = torch.zeros((e - s, T), dtype=torch.long)
            m = torch.zeros((e - s, T), dtype=torch.long)
            for i, seq in enumerate(ids[s:e]):
                x[i, :len(seq)] = torch.tensor(seq)
                m[i, :len(seq)] = 1
            with torch.no_grad():
                out[s:e] = rm.model(input_ids=x.to(device), attention_mask=m.to(device)).logits[:, 0].float().cpu().numpy()
    return out


def timed(fn, device, *args):
    sync(device)
    t = time.perf_counter()
    out = fn(*args)
    sync(device)
    return out, time.perf_counter() - t


def matmul_peak(device, dtype, n: int, repeats: int = 10) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def train_arm(model, ids_c, ids_r, *, pad_to, batch_size, steps, bf16, seed=0) -> dict:
    import copy

    import datasets
    import torch
    from transformers import TrainerCallback

    from scpo.config import TrainConfig, TrainerConfig
    from scpo.trainer import PairCollator, SCPOTrainer, training_arguments

    ds = datasets.Dataset.from_dict({"chosen_input_ids": ids_c, "rejected_input_ids": ids_r,
                                     "weight": [1.0] * len(ids_c),
                                     "length": [max(len(a), len(b)) for a, b in zip(ids_c, ids_r)]})
    losses, tokens, ends = [], {"real": 0, "padded": 0}, []

    class Recording(SCPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            tokens["real"] += int(inputs["attention_mask"].sum())
            tokens["padded"] += int(inputs["attention_mask"].numel())
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync(model.device)
            ends.append(time.perf_counter())

    model = copy.deepcopy(model).train()
    for m in model.modules():  # dropout off (scpo's default): both arms must give the same losses
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tc, trc = TrainConfig(mode="full", batch_size=batch_size), TrainerConfig(group_by_length=True, bf16=bf16)
    with tempfile.TemporaryDirectory() as out:
        args = training_arguments(out, tc, trc, learning_rate=1e-6, max_steps=steps + 1, seed=seed, save_steps=0,
                                  logging_steps=10**6)
        trainer = Recording(model=model, args=args, train_dataset=ds,
                            data_collator=PairCollator(0, pad_to=pad_to), callbacks=[Clock()])
        trainer.train()
    dt = ends[-1] - ends[0]  # the first step (allocator, kernels' first launch) is not timed
    return {"losses": losses, "pairs_per_s": steps * batch_size / dt, "step_s": dt / steps,
            "real_tokens_per_s": tokens["real"] * steps / (steps + 1) / dt,
            "padding": 1 - tokens["real"] / tokens["padded"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--texts", type=int, default=4000, help="texts to score (default 4000)")
    ap.add_argument("--batch-size", type=int, default=64, help="scpo's scoring batch (default 64)")
    ap.add_argument("--check-texts", type=int, default=256, help="texts of the float32 reward check (default 256)")
    ap.add_argument("--train-pairs", type=int, default=256, help="training pairs per arm (default 256)")
    ap.add_argument("--train-batch-size", type=int, default=8, help="pairs per training step (default 8, the paper's)")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model: to check the script on a CPU")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    header(f"benchmarks 1-3 on {device} ({args.dtype}): DeBERTa-v3-base-sized reward model, random token ids")
    if device.type == "cuda":
        print(f"   accelerator: {torch.cuda.get_device_name(device)}")
    torch.manual_seed(0)
    base = deberta_v3_base(args.tiny)
    vocab = base.config.vocab_size
    p_all, p_mm = sum(p.numel() for p in base.parameters()), non_embedding_params(base)
    print(f"   model: {p_all / 1e6:.1f} M parameters, {p_mm / 1e6:.1f} M outside the embedding tables")
    packaged = packaged_model_with_head()
    ids, inter = token_ids(packaged, args.texts, seed=0, vocab=vocab)
    lengths = np.array([len(x) for x in ids])
    print(f"   {len(ids)} texts, tokens per text: mean {lengths.mean():.0f}, median {np.median(lengths):.0f}, "
          f"max {lengths.max()}")
    res: dict = {"device": str(device), "dtype": args.dtype, "params": p_all, "matmul_params": p_mm}

    # 1. the same rewards, checked in float32
    rm32 = reward_model(base, packaged.tokenizer, device, torch.float32)
    k = min(args.check_texts, len(ids))
    diff = float(np.max(np.abs(scpo_rewards(rm32, ids[:k], args.batch_size, device)
                               - reference_rewards(rm32, ids[:k], inter[:k], device))))
    print(f"   float32 check on {k} texts: largest reward difference scpo vs reference {diff:.1e} (must be < 1e-4)")
    # 1. scoring speed in --dtype
    rm = reward_model(base, packaged.tokenizer, device, dtype)  # the same module, now in --dtype
    with torch.inference_mode():
        scpo_rewards(rm, ids[:2 * args.batch_size], args.batch_size, device)  # warm-up
        reference_rewards(rm, ids[:64], inter[:64], device)
    _, t_ref = timed(reference_rewards, device, rm, ids, inter, device)
    _, t_scpo = timed(scpo_rewards, device, rm, ids, args.batch_size, device)
    ratio = t_ref / t_scpo
    print(f"   scoring: reference {len(ids) / t_ref:,.0f} texts/s, scpo {len(ids) / t_scpo:,.0f} texts/s: {ratio:.2f}x")
    res.update(reward_max_abs_diff_fp32=diff, reference_texts_per_s=len(ids) / t_ref,
               scpo_texts_per_s=len(ids) / t_scpo, scoring_ratio=ratio)

    # 3. the limit
    n_mm = args.matmul_n if not args.tiny else 1024
    peak = matmul_peak(device, dtype, n_mm)
    real = int(lengths.sum())
    sc = 2 * p_mm * real / t_scpo / 1e9
    att = 4 * base.config.num_hidden_layers * base.config.hidden_size * float((lengths.astype(np.float64) ** 2).sum())
    print(f"   {args.dtype} matmul {n_mm}^3: {peak:,.0f} GFLOP/s; scoring achieved {sc:,.0f} GFLOP/s = "
          f"{sc / peak:.0%} (attention's T^2 terms add {att / t_scpo / 1e9:,.0f} GFLOP/s)")
    res.update(matmul_gflops=peak, scoring_gflops=sc, scoring_fraction=sc / peak)

    # 2. training
    del rm, rm32
    n = args.train_pairs
    train_model = base.to(device=device, dtype=torch.float32)  # fp32 master weights, --dtype autocast
    ids_c, ids_r = ids[0:2 * n:2], ids[1:2 * n:2]
    steps = max(1, n // args.train_batch_size - 1)
    arms = {}
    for name, pad_to in (("scpo", None), ("pad512", 512)):
        arms[name] = train_arm(train_model, ids_c, ids_r, pad_to=pad_to, batch_size=args.train_batch_size,
                               steps=steps, bf16=args.dtype == "bfloat16")
        a = arms[name]
        print(f"   training {name:<6}: {a['pairs_per_s']:8.2f} pairs/s, {a['step_s']:.3f} s/step, padding {a['padding']:.1%}")
    tr_ratio = arms["scpo"]["pairs_per_s"] / arms["pad512"]["pairs_per_s"]
    tr = 3 * 2 * p_mm * arms["scpo"]["real_tokens_per_s"] / 1e9
    k = min(3, len(arms["scpo"]["losses"]))
    print(f"   training ratio scpo/pad512: {tr_ratio:.2f}x; first {k} losses scpo "
          f"{[round(x, 5) for x in arms['scpo']['losses'][:k]]} pad512 {[round(x, 5) for x in arms['pad512']['losses'][:k]]}")
    print(f"   training achieved {tr:,.0f} GFLOP/s = {tr / peak:.0%} of the {args.dtype} matmul")
    res.update(training=arms, training_ratio=tr_ratio, training_gflops=tr, training_fraction=tr / peak)
    footer()
    write_json(args.json, res)
    return res


if __name__ == "__main__":
    main()
