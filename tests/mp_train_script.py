"""A few steps of full-mode (or LoRA) SCPOTrainer training; run alone or under ``accelerate launch``.

Used by ``tests/test_multiprocess.py``::

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml tests/mp_train_script.py --out DIR

For every variant (``full-grouped``: full fine-tuning, length-grouped batches; ``full-random``;
``lora-random``) every process writes ``DIR/<variant>/rank<r>.json``: world size, the pair indices
it saw at every step, its losses, a sha256 of its final trainable weights, and (rank 0) the weights
themselves (``weights.npz``) and the final margins of the training pairs. Data: the synthetic ``tiny``
preset's first pairs; model: scpo's tiny randomly initialised BERT (same architecture and tokenizer
as the packaged encoder) with dropout 0.1, which ``TrainConfig.disable_dropout`` (the default) turns off
so that one process and two give the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def train_variant(out: Path, mode: str, grouped: bool, steps: int, n_pairs: int, batch_size: int) -> None:
    from scpo.config import TrainConfig, TrainerConfig
    from scpo.forward import rewards_of
    from scpo.jobs import _make_model
    from scpo.load.synthetic import generate
    from scpo.testing import tiny_encoder
    from scpo.trainer import PairCollator, SCPOTrainer, build_pair_dataset, training_arguments

    rm = tiny_encoder(hidden=32, layers=2, seed=0)
    g = torch.Generator().manual_seed(1)
    rm.set_head(torch.randn(rm.feature_dim, generator=g) / rm.feature_dim**0.5, 0.0)
    rm.model.config.hidden_dropout_prob = 0.1  # dropout on in the model: the trainer's disable_dropout turns it off
    for m in rm.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    pairs = generate("tiny", seed=0).pairs.select(range(n_pairs))
    prompts, chosen, rejected = list(pairs["prompt"]), list(pairs["chosen"]), list(pairs["rejected"])
    ds = build_pair_dataset(rm.tokenizer, rm.formatter, prompts, chosen, rejected, np.ones(n_pairs))
    ds = ds.add_column("pair_index", list(range(len(ds))))
    tc = TrainConfig(mode=mode, batch_size=batch_size)
    trc = TrainerConfig(group_by_length=grouped, lora_target_modules=["query", "value"])
    model = _make_model(rm, mode, trc, scratch=False)
    seen: list[list[int]] = []
    base = PairCollator(rm.tokenizer.pad_token_id or 0)

    def collate(features):
        seen.append([int(f["pair_index"]) for f in features])
        return base(features)

    losses: list[float] = []

    class Recording(SCPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
            return loss

    with tempfile.TemporaryDirectory() as tmp:
        targs = training_arguments(tmp, tc, trc, learning_rate=1e-2, max_steps=steps, seed=0, save_steps=0,
                                   logging_steps=10**6, dataloader_num_workers=0, disable_tqdm=True)
        trainer = Recording(model=model, args=targs, train_dataset=ds, data_collator=collate)
        trainer.train()
        acc = trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        final = acc.unwrap_model(trainer.model)
    state = {n: p.detach().float().cpu().numpy() for n, p in final.named_parameters() if p.requires_grad}
    h = hashlib.sha256()
    for n in sorted(state):
        h.update(n.encode())
        h.update(state[n].tobytes())
    out.mkdir(parents=True, exist_ok=True)
    rec = {"rank": rank, "world_size": world, "seen": seen[:steps], "losses": losses,
           "per_device_batch": targs.per_device_train_batch_size, "weights_sha256": h.hexdigest()}
    if rank == 0:
        np.savez(out / "weights.npz", **{n.replace(".", "/"): v for n, v in state.items()})
    # collective under a launcher: every rank scores its share of the batches, every rank gets every reward
    calls = [0]
    hook = final.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rw_c = rewards_of(final, rm.tokenizer, rm.formatter, prompts, chosen, batch_size=8)
    rw_r = rewards_of(final, rm.tokenizer, rm.formatter, prompts, rejected, batch_size=8)
    hook.remove()
    rec["margins"] = (rw_c - rw_r).tolist()
    rec["eval_forward_passes"] = calls[0]
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    acc.wait_for_everyone()


def score_variant(out: Path, n_texts: int = 160, batch_size: int = 16) -> None:
    """``encode_features`` (the global model's scoring) of the synthetic texts: features and forward passes."""
    from scpo.instrument import COUNTS
    from scpo.load.synthetic import generate
    from scpo.parallel import rank_and_world
    from scpo.score import encode_features
    from scpo.testing import tiny_encoder

    rm = tiny_encoder(hidden=32, layers=2, seed=0)
    pairs = generate("tiny", seed=0).pairs
    prompts = list(pairs["prompt"]) * 2
    responses = list(pairs["chosen"]) + list(pairs["rejected"])
    prompts, responses = prompts[:n_texts], responses[:n_texts]
    before = COUNTS["scoring_forward_passes"]
    feats, stats = encode_features(rm, prompts, responses, batch_size=batch_size, progress=False, kill_point=None)
    rank, world = rank_and_world()
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        np.save(out / "features.npy", feats)
    rec = {"rank": rank, "world_size": world, "distinct": stats["distinct"], "computed": stats["computed"],
           "forward_passes": COUNTS["scoring_forward_passes"] - before,
           "features_sha256": hashlib.sha256(np.ascontiguousarray(feats).tobytes()).hexdigest()}
    (out / f"rank{rank}.json").write_text(json.dumps(rec))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="full-grouped,full-random,lora-random,score",
                    help="MODE-SAMPLER list (MODE full or lora, SAMPLER grouped (by length) or random), "
                    "and 'score' (the global model's scoring)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8, help="global batch (pairs), split over the processes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    for v in args.variants.split(","):
        if v == "score":
            score_variant(Path(args.out) / v)
            continue
        mode, sampler = v.split("-")
        train_variant(Path(args.out) / v, mode, sampler == "grouped", args.steps, args.pairs, args.batch_size)


if __name__ == "__main__":
    main()
