"""Samplers: determinism per (seed, epoch), class balance, and Accelerate sharding over two simulated ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from ccsam_zoo.data import ClassBalancedSampler, ShuffleSampler, long_tailed_counts

LT_LABELS = np.repeat(np.arange(10), long_tailed_counts(10, 200, 100))  # 200 ... 2 per class


def test_shuffle_sampler_is_a_deterministic_permutation():
    a, b = ShuffleSampler(1000, seed=3), ShuffleSampler(1000, seed=3)
    first = list(a)
    assert sorted(first) == list(range(1000)) and len(a) == 1000
    assert first == list(b)
    assert first != list(range(1000))
    assert list(a) != first  # the next iteration is the next epoch
    b.set_epoch(0)
    assert list(b) == first  # set_epoch pins the epoch
    b.set_epoch(5)
    c = ShuffleSampler(1000, seed=3)
    c.set_epoch(5)
    assert list(b) == list(c)
    assert list(ShuffleSampler(1000, seed=4)) != first


def test_class_balanced_sampler_balances_and_cycles():
    labels = torch.from_numpy(LT_LABELS)
    sampler = ClassBalancedSampler(labels, seed=0)
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler) == len(labels)
    drawn = LT_LABELS[idx]
    per_class = np.bincount(drawn, minlength=10)
    assert per_class.max() - per_class.min() <= 1  # classes cycle through a shuffled list
    # every block of 10 consecutive draws is a permutation of the classes
    full = len(idx) // 10 * 10
    blocks = drawn[:full].reshape(-1, 10)
    assert all(sorted(b) == list(range(10)) for b in blocks)
    # within a class, images cycle: every full pass over a class holds each of its images once
    for c in range(10):
        members = np.flatnonzero(LT_LABELS == c)
        seq = idx[drawn == c]
        for start in range(0, len(seq) - len(members) + 1, len(members)):
            assert sorted(seq[start : start + len(members)]) == members.tolist()
        counts = np.bincount(seq, minlength=len(LT_LABELS))[members]
        assert counts.max() - counts.min() <= 1
    # tail classes are oversampled, the head undersampled
    assert per_class[9] > (LT_LABELS == 9).sum() and per_class[0] < (LT_LABELS == 0).sum()


def test_class_balanced_sampler_determinism_and_options():
    a = ClassBalancedSampler(LT_LABELS, seed=1)
    b = ClassBalancedSampler(LT_LABELS.tolist(), seed=1)
    assert list(a) == list(b)
    a.set_epoch(7)
    b.set_epoch(7)
    assert list(a) == list(b)
    a.set_epoch(0)
    assert list(a) != list(b)  # b moved on to epoch 8
    assert list(ClassBalancedSampler(LT_LABELS, seed=2)) != list(ClassBalancedSampler(LT_LABELS, seed=1))
    assert len(list(ClassBalancedSampler(LT_LABELS, num_samples=37))) == 37
    labels = np.array([0, 0, -1, 2, 2, -1])  # class 1 absent, -1 (open-set) never drawn
    drawn = np.array(list(ClassBalancedSampler(labels, num_samples=100)))
    assert set(labels[drawn]) == {0, 2}
    with pytest.raises(ValueError, match="at least one"):
        ClassBalancedSampler([-1, -1])


@pytest.mark.parametrize(
    "make", [lambda: ShuffleSampler(256, seed=5), lambda: ClassBalancedSampler(LT_LABELS[:256] % 7, seed=5)]
)
@pytest.mark.parametrize("epoch", [0, 3])
def test_two_ranks_cover_the_sequence_exactly_once(make, epoch):
    """Each rank builds its own sampler; Accelerate keeps every 2nd batch; the union is the full sequence."""
    reference = make()
    reference.set_epoch(epoch)
    full = list(reference)
    shards = []
    for rank in range(2):
        sampler = make()
        sampler.set_epoch(epoch)
        shard = BatchSamplerShard(BatchSampler(sampler, 16, drop_last=False), num_processes=2, process_index=rank)
        shards.append(list(shard))
    assert len(shards[0]) == len(shards[1]) == 8
    interleaved = [i for pair in zip(*shards) for batch in pair for i in batch]
    assert interleaved == full  # every position of the sequence on exactly one rank, in order
    if isinstance(reference, ShuffleSampler):
        assert sorted(interleaved) == list(range(256))  # no sample duplicated or dropped


def test_prepared_loaders_on_two_ranks_follow_set_epoch():
    """prepare_data_loader with explicit ranks: both ranks see disjoint halves of the same epoch sequence."""
    ds = TensorDataset(torch.arange(96))
    seen = []
    for rank in range(2):
        loader = DataLoader(ds, batch_size=8, sampler=ShuffleSampler(96, seed=11))
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        prepared.set_epoch(2)
        seen.append([b[0].tolist() for b in prepared])
    expected = ShuffleSampler(96, seed=11).indices(2).tolist()
    assert [i for pair in zip(*seen) for b in pair for i in b] == expected
    assert not set(sum(seen[0], [])) & set(sum(seen[1], []))


@pytest.mark.parametrize("sampler", ["shuffle", "class_balanced"])
def test_benchmark_loader_prepared_for_two_ranks(sampler):
    """bench.loader through Accelerate on two simulated ranks: the ranks split the single-process batches."""
    from ccsam_zoo.data import build_benchmark

    bench = build_benchmark("embedded")
    single = list(bench.loader("train", 103, sampler=sampler, seed=4))  # 1236 = 12 x 103
    ranks = []
    for rank in range(2):
        loader = bench.loader("train", 103, sampler=sampler, seed=4)
        prepared = prepare_data_loader(loader, num_processes=2, process_index=rank, put_on_device=False)
        ranks.append([(x, y) for x, y in prepared])
    assert len(ranks[0]) == len(ranks[1]) == 6
    merged = [batch for pair in zip(*ranks) for batch in pair]
    assert len(merged) == len(single)
    for (x, y), (sx, sy) in zip(merged, single):
        assert torch.equal(x, sx) and torch.equal(y, sy)
    x, _ = ranks[1][0]
    assert x.dtype == torch.uint8 and x.shape == (103, 3, 32, 32)
