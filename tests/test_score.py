"""Scoring: batched equals one by one, the cache answers a second run, truncation keeps the response."""

from __future__ import annotations

import numpy as np
import torch

from scpo.instrument import COUNTS
from scpo.score import FeatureCache, encode_features, rewards_from_features

PROMPTS = ["How do I ask for a raise?", "Plan a family dinner.", "Tips for sleep?", "How do I ask for a raise?"]
RESPONSES = [
    "Be clear and list your results from this year.",
    "Cook something simple and ask everyone to bring a dish; start early so nobody waits too long.",
    "Go to bed at the same time.",
    "Be clear and list your results from this year.",  # duplicate input: scored once
]


def test_batched_equals_one_by_one(packaged_rm):
    torch.manual_seed(0)
    packaged_rm.set_head(torch.randn(packaged_rm.feature_dim) * 0.1, 0.3)
    w, b = packaged_rm.head_params()
    batched, stats = encode_features(packaged_rm, PROMPTS, RESPONSES, batch_size=8, progress=False)
    single = np.concatenate(
        [encode_features(packaged_rm, [p], [r], batch_size=1, progress=False)[0] for p, r in zip(PROMPTS, RESPONSES)]
    )
    assert stats["distinct"] == 3 and stats["computed"] == 3
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # rewards from cached features equal the model's own forward pass
    enc = packaged_rm.tokenizer(PROMPTS[:1], RESPONSES[:1], return_tensors="pt")
    with torch.inference_mode():
        direct = packaged_rm.model(**enc).logits[0, 0].item()
    assert rewards_from_features(batched[:1], w.numpy(), float(b))[0] == np.float64(direct) or abs(
        rewards_from_features(batched[:1], w.numpy(), float(b))[0] - direct
    ) < 1e-5


def test_cache_second_run_scores_nothing(packaged_rm, tmp_path):
    cache = FeatureCache(tmp_path, packaged_rm.feature_key())
    before = COUNTS["scoring_forward_passes"]
    f1, s1 = encode_features(packaged_rm, PROMPTS, RESPONSES, cache=cache, progress=False)
    assert COUNTS["scoring_forward_passes"] > before and s1["computed"] == 3
    # a fresh cache object (a new process) reads the shards from disk
    cache2 = FeatureCache(tmp_path, packaged_rm.feature_key())
    mid = COUNTS["scoring_forward_passes"]
    f2, s2 = encode_features(packaged_rm, PROMPTS, RESPONSES, cache=cache2, progress=False)
    assert COUNTS["scoring_forward_passes"] == mid
    assert s2["computed"] == 0 and s2["cached"] == 3
    np.testing.assert_array_equal(f1, f2)


def test_truncation_keeps_response_and_counts(packaged_rm):
    fmt = packaged_rm.formatter
    long_prompt = "word " * 200
    ids, tt, n = fmt.encode(packaged_rm.tokenizer, [long_prompt, "short"], ["the response stays", "ok"])
    assert n == 1
    assert len(ids[0]) == fmt.max_length
    text = packaged_rm.tokenizer.decode(ids[0])
    assert text.rstrip().endswith("the response stays [SEP]")
    # a response longer than the budget alone is cut too, and still counted
    ids, _, n = fmt.encode(packaged_rm.tokenizer, ["q"], ["long " * 300])
    assert n == 1 and len(ids[0]) == fmt.max_length


def test_chat_formatter_keeps_response(packaged_rm):
    import copy

    from scpo.model import InputFormatter

    tok = copy.deepcopy(packaged_rm.tokenizer)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    fmt = InputFormatter.for_tokenizer(tok, "auto", 24)
    assert fmt.kind == "chat"
    ids, tt, n = fmt.encode(tok, ["word " * 50, "hi"], ["keep this answer", "ok"])
    assert tt is None and n == 1 and len(ids[0]) == 24
    assert tok.decode(ids[0]).rstrip().endswith("keep this answer")
    assert tok.decode(ids[1]).startswith("< user > hi")


def test_formatter_capped_by_model_context(packaged_rm):
    from types import SimpleNamespace

    from scpo.model import InputFormatter

    cfg = SimpleNamespace(max_position_embeddings=128, model_type="bert", pad_token_id=0)
    assert InputFormatter.for_tokenizer(packaged_rm.tokenizer, "auto", 4096, cfg).max_length == 128
    rob = SimpleNamespace(max_position_embeddings=514, model_type="roberta", pad_token_id=1)
    assert InputFormatter.for_tokenizer(packaged_rm.tokenizer, "auto", 4096, rob).max_length == 512


def test_cache_lookup_across_shards(tmp_path):
    cache = FeatureCache(tmp_path, "k")
    cache.put(["b", "a"], np.array([[1, 1], [2, 2]], dtype=np.float32))
    cache.put(["c", "a"], np.array([[3, 3], [4, 4]], dtype=np.float32))  # "a" again: the features added last win
    for c, a in ((cache, [4, 4]), (FeatureCache(tmp_path, "k"), None)):  # in memory; read back (shards in name order)
        positions = c.find(["a", "z", "c", "b"])
        assert positions[1] == -1 and (positions[[0, 2, 3]] >= 0).all()
        out = np.full((4, 2), -1, dtype=np.float32)
        c.read(positions[[0, 2, 3]], out, np.array([0, 2, 3]))
        assert out[1:].tolist() == [[-1, -1], [3, 3], [1, 1]] and out[0].tolist() in ([2, 2], [4, 4])
        assert a is None or out[0].tolist() == a
        got = {k: v.tolist() for k, v in c.get(["c", "a", "q"]).items()}
        assert got == {"c": [3, 3], "a": out[0].tolist()}
