"""The Arrow-backed data path (scpo.scale): same texts, rows and features as the list-based path."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scpo.config import RunConfig  # noqa: E402
from scpo.load.synthetic import generate  # noqa: E402
from scpo.scale import distinct_texts, experiment, open_pairs, score_to_memmap, tiny_encoder  # noqa: E402


def _write(path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=7):  # several chunks, as a chunked writer makes
            w.write_batch(batch)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    pairs = generate("tiny", seed=0).pairs
    cols = ["pair_id", "group", "prompt", "chosen", "rejected", "split_key"]
    path = tmp_path_factory.mktemp("arrow") / "pairs.arrow"
    _write(path, pa.table({c: pairs[c] for c in cols}))
    return open_pairs(path)


def test_distinct_texts_match_the_python_index():
    table = pa.table({
        "prompt": ["p1", "p1", "p2", "p2", "p1"],
        "chosen": ["a", "b", "a", "c", "a"],
        "rejected": ["b", "c", "c", "a", "c"],
    })
    idx = distinct_texts(table)
    prompts, responses = idx.texts(np.arange(len(idx)))
    texts = list(zip(prompts, responses))
    assert len(texts) == len(set(texts)) == 5  # (p1,a) (p1,b) (p1,c) (p2,a) (p2,c): "a" under two prompts is two texts
    for i in range(table.num_rows):
        p = table["prompt"][i].as_py()
        assert texts[idx.chosen_row[i]] == (p, table["chosen"][i].as_py())
        assert texts[idx.rejected_row[i]] == (p, table["rejected"][i].as_py())


def test_memory_mapped_table_and_index(tiny_table):
    assert tiny_table.column("chosen").num_chunks > 1
    idx = distinct_texts(tiny_table)
    expected = set(zip(tiny_table["prompt"].to_pylist(), tiny_table["chosen"].to_pylist()))
    expected |= set(zip(tiny_table["prompt"].to_pylist(), tiny_table["rejected"].to_pylist()))
    assert set(zip(*idx.texts(np.arange(len(idx))))) == expected
    assert len(idx) == len(expected)


def test_scored_features_match_encode_features(tiny_table, tmp_path):
    from scpo.score import encode_features

    rm = tiny_encoder(hidden=32, layers=2, seed=0)
    idx = distinct_texts(tiny_table)
    feats, stats = score_to_memmap(rm, idx, tmp_path / "f.npy", batch_size=16, chunk=50)
    assert isinstance(feats, np.memmap) and feats.shape == (len(idx), rm.feature_dim)
    assert stats["computed"] == len(idx)
    p, r = idx.texts(np.arange(len(idx)))
    ref, _ = encode_features(rm, p, r, batch_size=16, cache=None, progress=False, kill_point=None)
    np.testing.assert_allclose(np.asarray(feats), ref, atol=1e-5)
    again, stats2 = score_to_memmap(rm, idx, tmp_path / "f.npy")
    assert stats2["computed"] == 0  # the finished file is reused
    np.testing.assert_array_equal(np.asarray(again), np.asarray(feats))


def test_experiment_runs_fit_heads(tiny_table, tmp_path):
    from scpo.pipeline import fit_heads

    rm = tiny_encoder(hidden=16, layers=1, seed=0)
    idx = distinct_texts(tiny_table)
    feats, _ = score_to_memmap(rm, idx, tmp_path / "f.npy")
    cfg = RunConfig().replace(methods=["global", "full", "scpo"], learning_rates=[1e-2], steps=[10], pulls=[0.0],
                              val_folds=1, global_steps=50, cache_dir=str(tmp_path / "c"), output_dir=str(tmp_path / "o"))
    exp = experiment(cfg, tiny_table, idx, feats, rm)
    assert set(exp.split) <= {"train", "test"} and len(exp.delta) == len(exp.group)
    np.testing.assert_allclose(
        exp.delta, (np.asarray(feats)[exp.chosen_row] - np.asarray(feats)[exp.rejected_row]).astype(np.float64)
        @ rm.head_params()[0].numpy().astype(np.float64), atol=1e-6)
    thetas, _ = fit_heads(exp, ["global", "full", "scpo"], [0], progress=False)
    assert {k[0] for k in thetas} == set(exp.groups)
    assert all(v[0].shape == (rm.feature_dim,) for v in thetas.values())
