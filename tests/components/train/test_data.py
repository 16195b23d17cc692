import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from components.train.data import Batches, BatchPlan, Position


def test_docstring_example():
    plan = BatchPlan(size=8, batch_size=4, grad_accum=2, world_size=2, shuffle=False)
    ranks = [list(BatchPlan(8, 4, 2, 2, rank, shuffle=False).micro_batches(0)) for rank in (0, 1)]
    assert plan.batches_per_epoch == 2
    assert ranks == [[[0], [2], [4], [6]], [[1], [3], [5], [7]]]


def test_order_depends_on_seed_and_epoch_only():
    plan = BatchPlan(size=50, batch_size=5, seed=3)
    assert np.array_equal(plan.order(1), BatchPlan(size=50, batch_size=10, seed=3).order(1))
    assert not np.array_equal(plan.order(0), plan.order(1))
    assert not np.array_equal(plan.order(0), BatchPlan(size=50, batch_size=5, seed=4).order(0))
    assert sorted(plan.order(2).tolist()) == list(range(50))


@pytest.mark.parametrize(("grad_accum", "world_size"), [(1, 2), (2, 1), (2, 2), (4, 2)])
def test_ranks_and_micro_batches_cover_each_global_batch(grad_accum, world_size):
    one = BatchPlan(size=37, batch_size=8, seed=1)
    parts = [
        list(BatchPlan(37, 8, grad_accum, world_size, rank, seed=1).micro_batches(1))
        for rank in range(world_size)
    ]
    for step, batch in enumerate(one.micro_batches(1)):
        per_step = [p[step * grad_accum : (step + 1) * grad_accum] for p in parts]
        pieces = [idx for m in range(grad_accum) for rank in per_step for idx in rank[m]]
        assert pieces == batch  # in order: micro-batch by micro-batch, rank by rank


def test_bad_plans():
    with pytest.raises(ValueError, match="multiple of grad_accum \\* world_size = 6"):
        BatchPlan(size=100, batch_size=8, grad_accum=2, world_size=3)
    with pytest.raises(ValueError, match="dataset of 4 samples < batch_size 8"):
        BatchPlan(size=4, batch_size=8)


def _stream(position=None):
    data = TensorDataset(torch.arange(10))
    batches = Batches(data, BatchPlan(size=10, batch_size=3, grad_accum=1, seed=5))
    if position is not None:
        batches.position = position
    return batches


def test_stream_crosses_epochs_and_resumes_from_its_position():
    full = _stream()
    steps, positions = [], []
    for _ in range(8):
        steps.append(full.next_step()[0][0].tolist())
        positions.append(full.position)
    assert positions[2] == Position(1, 0)  # 3 batches of 3 per epoch, sample 10th dropped
    assert positions[7] == Position(2, 2)
    epoch0 = sorted(i for s in steps[:3] for i in s)
    assert len(set(epoch0)) == 9
    resumed = _stream(positions[3])
    assert [resumed.next_step()[0][0].tolist() for _ in range(4)] == steps[4:]


def test_stream_with_workers_gives_the_same_batches():
    data = TensorDataset(torch.arange(10))
    plan = BatchPlan(size=10, batch_size=4, grad_accum=2, seed=5)
    plain, workers = Batches(data, plan), Batches(data, plan, num_workers=2)
    for _ in range(3):
        a, b = plain.next_step(), workers.next_step()
        assert [m[0].tolist() for m in a] == [m[0].tolist() for m in b]


def test_stream_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches = _stream()
    for _ in range(5):
        batches.next_step()
    assert torch.equal(torch.rand(3), expected)
