"""Several processes, checked in one: the training order (PairSampler), the shared-inference loop,
devices and dropout. The 2-process runs themselves are in tests/test_multiprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from scpo.config import ConfigError, ModelConfig, TrainConfig, TrainerConfig
from scpo.jobs import _make_model
from scpo.parallel import default_device, map_batches, rank_and_world, union_mask
from scpo.trainer import PairSampler, training_arguments


def _epochs(sampler: PairSampler, k: int) -> list[list[int]]:
    out = []
    for e in range(k):
        sampler.set_epoch(e)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("n,batch", [(27, 8), (24, 8), (3, 8), (1, 1)])
def test_pair_sampler_epochs_are_whole_global_batches_of_consecutive_passes(n, batch):
    s = PairSampler(n, batch, seed=5)
    epochs = _epochs(s, 4)
    assert all(len(e) == len(s) and len(e) % batch == 0 and len(e) >= n for e in epochs)
    stream = [i for e in epochs for i in e]
    passes = len(stream) // n
    for j in range(passes):  # the epochs, laid end to end, are passes over the data: each a permutation
        assert sorted(stream[j * n:(j + 1) * n]) == list(range(n))
        assert stream[j * n:(j + 1) * n] == s.one_pass(j)


def test_pair_sampler_is_seeded():
    a, b, c = PairSampler(50, 8, seed=1), PairSampler(50, 8, seed=1), PairSampler(50, 8, seed=2)
    assert _epochs(a, 3) == _epochs(b, 3)
    assert _epochs(a, 1) != _epochs(c, 1)
    a.set_epoch(2)
    b.set_epoch(0)
    b.set_epoch(2)  # the order of an epoch depends on its number only: a resume lands on the same batches
    assert list(a) == list(b)


def test_pair_sampler_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, size=400).tolist()
    grouped, plain = PairSampler(400, 8, 0, lengths), PairSampler(400, 8, 0)

    def spread(order):
        return np.mean([np.ptp([lengths[i] for i in order[k:k + 8]]) for k in range(0, len(order), 8)])

    assert spread(list(grouped)) < 0.25 * spread(list(plain))


@pytest.mark.parametrize("n", [27, 32, 5])
def test_one_and_two_ranks_train_on_the_same_global_batches(n):
    """What accelerate makes of the sampler: per-device batches dealt to the ranks in turn."""
    global_batch = 8
    for epoch in range(3):
        s = PairSampler(n, global_batch, seed=3, lengths=list(range(n)))
        s.set_epoch(epoch)
        one = [sorted(b) for b in BatchSampler(s, global_batch, drop_last=False)]
        ranks = [list(BatchSamplerShard(BatchSampler(s, global_batch // 2, drop_last=False), 2, r)) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == len(one)
        for step, batch in enumerate(one):
            a, b = ranks[0][step], ranks[1][step]
            assert len(a) == len(b) == global_batch // 2  # no rank gets a short or wrapped-around batch
            assert sorted(a + b) == batch


def test_map_batches_single_process_is_a_plain_loop():
    assert rank_and_world() == (0, 1)
    batches = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5])]
    got = list(map_batches(batches, lambda b: np.stack([b, 2 * b], 1).astype(np.float32), 2))
    assert [i for i, _ in got] == [0, 1, 2]
    np.testing.assert_array_equal(got[2][1], [[4, 8], [5, 10]])
    mask = np.array([True, False, True])
    np.testing.assert_array_equal(union_mask(mask), mask)


def test_devices_and_cpu_training_arguments(tmp_path):
    assert default_device() == torch.device("cpu")  # this machine has no GPU
    assert ModelConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="--device"):
        ModelConfig(device="gpu")
    args = training_arguments(str(tmp_path), TrainConfig(batch_size=8), TrainerConfig(), learning_rate=1e-3, max_steps=2, seed=0)
    assert args.use_cpu  # so that accelerate launch on a CPU machine trains data-parallel over gloo
    assert args.per_device_train_batch_size == 8


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout(disable):
    from scpo.testing import tiny_encoder

    rm = tiny_encoder(hidden=16, layers=1, heads=2)
    for m in rm.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    model = _make_model(rm, "full", TrainerConfig(disable_dropout=disable), scratch=False)
    ps = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    assert ps == ({0.0} if disable else {0.1})
    assert {m.p for m in rm.model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}  # the global model is untouched


def test_lora_initialisation_depends_on_the_job_seed_only():
    from scpo.testing import tiny_encoder

    rm = tiny_encoder(hidden=16, layers=1, heads=2)
    tc = TrainerConfig(lora_target_modules=["query", "value"])

    def lora_a(seed):
        model = _make_model(rm, "lora", tc, scratch=False, seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    a = lora_a(0)
    torch.rand(1000)  # whatever the global RNG went through before (other jobs, other ranks' histories)
    b, c = lora_a(0), lora_a(1)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
