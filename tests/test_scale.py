"""The Arrow data path of ``prepare``: same texts, rows, features and margins as a list-based reference."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scpo.config import RunConfig  # noqa: E402
from scpo.load import pair_table  # noqa: E402
from scpo.load.arrow import open_pairs
from scpo.load.synthetic import generate  # noqa: E402
from scpo.score import TextIndex, distinct_texts, encode_features  # noqa: E402
from scpo.testing import tiny_encoder  # noqa: E402


def _write(path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=7):  # several chunks, as a chunked writer makes
            w.write_batch(batch)


def _python_index(parts):
    """The list-and-dict text index ``prepare`` used to build: the reference."""
    index: dict[tuple[str, str], int] = {}
    rows = []
    for table, sel in parts:
        sel = range(table.num_rows) if sel is None else sel
        out = []
        for col in ("chosen", "rejected"):
            out.append([index.setdefault((table["prompt"][i].as_py(), table[col][i].as_py()), len(index)) for i in sel])
        rows.append(out)
    return list(index), rows


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The synthetic tiny preset twice: as the loader makes it, and memory-mapped from an Arrow file."""
    loaded = generate("tiny", seed=0)
    path = tmp_path_factory.mktemp("arrow") / "pairs.arrow"
    _write(path, pair_table(loaded.pairs))
    mapped = dataclasses.replace(loaded, pairs=open_pairs(path))
    return loaded, mapped


def test_distinct_texts_match_the_python_index():
    table = pa.table({
        "prompt": ["p1", "p1", "p2", "p2", "p1"],
        "chosen": ["a", "b", "a", "c", "a"],
        "rejected": ["b", "c", "c", "a", "c"],
    })
    other = pa.table({"prompt": ["p3", "p1"], "chosen": ["a", "z"], "rejected": ["c", "a"]})
    parts = [(table, np.array([4, 1, 3])), (other, None), (table, np.array([0, 2]))]
    idx, rows = distinct_texts(parts)
    texts, expected_rows = _python_index(parts)
    assert list(zip(*idx.texts(np.arange(len(idx))))) == texts  # same texts, numbered in the same order
    assert [[list(c), list(r)] for c, r in rows] == expected_rows
    assert len(idx) == 8  # "a" under two prompts is two texts; rows 0 and 2 of the table add (p2, a)


def test_text_index_of_lists_maps_every_input_to_its_first_occurrence():
    idx, text_row, first = TextIndex.of_lists(["p", "q", "p", "p"], ["a", "a", "a", "b"])
    assert list(zip(*idx.texts(np.arange(len(idx))))) == [("p", "a"), ("q", "a"), ("p", "b")]
    assert text_row.tolist() == [0, 1, 0, 2] and first.tolist() == [0, 1, 3]


def test_open_pairs_is_memory_mapped_and_complete(tiny_data):
    loaded, mapped = tiny_data
    table = pair_table(mapped.pairs)
    assert table.column("chosen").num_chunks > 1
    assert table.equals(pair_table(loaded.pairs))


def test_features_in_chunks_and_into_a_memmap_equal_one_call(tiny_data, tmp_path, monkeypatch):
    from scpo import score

    loaded, _ = tiny_data
    rm = tiny_encoder(hidden=16, layers=1, seed=0)
    idx, _ = distinct_texts([(pair_table(loaded.pairs), None)])
    ref, _ = encode_features(rm, *idx.texts(np.arange(len(idx))), batch_size=8, cache=None, progress=False, kill_point=None)
    monkeypatch.setattr(score, "TOKENIZE_CHUNK", 7)
    out = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=(len(idx), rm.feature_dim))
    got, stats = encode_features(rm, texts=idx, out=out, batch_size=8, cache=None, progress=False, kill_point=None)
    assert got is out and stats["computed"] == len(idx)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), ref)  # the same batches: bit-identical


def test_prepare_on_a_memory_mapped_table(tiny_data, tmp_path):
    from scpo.experiment import prepare
    from scpo.fitting import fit
    from scpo.load import split_data

    loaded, mapped = tiny_data
    cfg = RunConfig().replace(synthetic_preset="tiny", methods=["global", "full", "scpo"], learning_rates=[1e-2],
                              steps=[10], pulls=[0.0], val_folds=1, global_steps=50, cache_dir=str(tmp_path / "c"),
                              output_dir=str(tmp_path / "o"))
    rm = tiny_encoder(hidden=16, layers=1, seed=0)
    ref = prepare(cfg, progress=False, rm=rm)  # the loader's in-memory data set
    exp = prepare(cfg, progress=False, rm=rm, data=mapped, features_file=tmp_path / "features.npy")
    assert isinstance(exp.features, np.memmap) and exp.score_stats["cached"] == len(exp.text_index)
    for name in ("group", "split", "split_key", "chosen_row", "rejected_row", "contested", "oracle_margin", "delta"):
        np.testing.assert_array_equal(getattr(exp, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(exp.features, ref.features)
    # against lists: the pairs are the table's non-global rows with their own texts, the features
    # those of the texts, the margins theirs
    split = pair_table(split_data(cfg, loaded)[0]).to_pylist()
    expected = Counter((r["group"], r["split_key"], r["prompt"], r["chosen"], r["rejected"]) for r in split
                       if r["split"] != "global" and r["group"] in exp.groups)
    prompts, chosen = exp.texts(exp.chosen_row)
    prompts_r, rejected = exp.texts(exp.rejected_row)
    assert prompts_r == prompts
    assert Counter(zip(exp.group.tolist(), exp.split_key.tolist(), prompts, chosen, rejected)) == expected
    feats, _ = encode_features(rm, *exp.texts(np.arange(len(exp.text_index))), cache=None, progress=False, kill_point=None)
    np.testing.assert_allclose(exp.features, feats, atol=1e-6)
    w = rm.head_params()[0].numpy().astype(np.float64)
    np.testing.assert_allclose(exp.delta, (feats[exp.chosen_row].astype(np.float64) - feats[exp.rejected_row]) @ w,
                               atol=1e-6)
    res = fit(exp, ["global", "full", "scpo"], [0], progress=False)
    assert {k[0] for k in res.models} == set(exp.groups)
    assert all(w.shape == (rm.feature_dim,) for w in res.models.values())


def test_diffs_are_computed_once_per_rows(tiny_data, tmp_path):
    from scpo.experiment import prepare

    _, mapped = tiny_data
    cfg = RunConfig().replace(synthetic_preset="tiny", global_steps=20, cache_dir=str(tmp_path / "c"))
    exp = prepare(cfg, progress=False, rm=tiny_encoder(hidden=16, layers=1, seed=0), data=mapped)
    d = exp.diffs()
    np.testing.assert_array_equal(d.numpy(), exp.features[exp.chosen_row] - exp.features[exp.rejected_row])
    assert exp.diffs() is d
    assert dataclasses.replace(exp, cfg=cfg.replace(tau=0.5)).diffs() is d  # a sweep cell: the same pairs
    rows = np.arange(0, len(exp.group), 3)
    sub = dataclasses.replace(exp, chosen_row=exp.chosen_row[rows], rejected_row=exp.rejected_row[rows])
    np.testing.assert_array_equal(sub.diffs().numpy(), d.numpy()[rows])
    np.testing.assert_array_equal(exp.diffs().numpy(), d.numpy())
