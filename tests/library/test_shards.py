"""Example importance on shards of the training set merges into the unsharded matrix
(labelfree/attribution/examples/shards.py); what cannot be sharded, or merged, is refused."""

from __future__ import annotations

import pytest
import torch

from labelfree.attribution.examples import (
    DKNN,
    Arnoldi,
    InfluenceFunctions,
    LiSSA,
    Objective,
    RandomExampleImportance,
    SimplEx,
    TracIn,
    attribute_shard,
    merge_shards,
    shard_bounds,
)
from tests.library.test_examples import LinearAutoEncoder


def tiny() -> tuple[LinearAutoEncoder, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = LinearAutoEncoder().double()
    return model, torch.randn(11, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)


EXPLAINERS = {
    "tracin": lambda m: TracIn(Objective(m), [m.state_dict(), (m.state_dict(), 0.5)], chunk_size=3),
    "influence_lissa": lambda m: InfluenceFunctions(Objective(m), LiSSA(depth=3, batch_size=4, scale=10.0), seed=3),
    "influence_arnoldi": lambda m: InfluenceFunctions(Objective(m), Arnoldi(iterations=8, rank=4, scale=10.0), seed=3),
    "influence_streamed": lambda m: InfluenceFunctions(Objective(m), Arnoldi(iterations=8, rank=4, scale=10.0), seed=3,
                                                       train_chunk_size=2, test_chunk_size=3),
    "dknn": lambda m: DKNN(m.encoder),
    "random": lambda m: RandomExampleImportance(seed=2),
}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_two_shards_give_the_matrix_of_one(name: str) -> None:
    model, train, test = tiny()
    whole = EXPLAINERS[name](model).fit(train).attribute(test)
    blocks = []
    for index in (1, 0):  # any order
        start, stop = shard_bounds(len(train), index, 2)
        blocks.append((start, stop, attribute_shard(EXPLAINERS[name](model), train, test, start, stop)))
    assert [b[:2] for b in sorted(blocks)] == [(0, 5), (5, 11)]
    torch.testing.assert_close(merge_shards(blocks, len(train)), whole, rtol=1e-12, atol=1e-15)


def test_simplex_refuses_a_shard() -> None:
    model, train, test = tiny()
    with pytest.raises(ValueError, match="SimplEx cannot be computed on a shard.*softmax over every training"):
        attribute_shard(SimplEx(model.encoder, steps=2), train, test, 0, 5)


def test_a_missing_or_overlapping_shard_is_refused() -> None:
    block = torch.zeros(4, 5)
    with pytest.raises(ValueError, match=r"columns \[5, 11\) of 11 are missing"):
        merge_shards([(0, 5, block)], 11)
    with pytest.raises(ValueError, match=r"columns \[0, 5\) of 11 are missing"):
        merge_shards([(5, 11, torch.zeros(4, 6))], 11)
    with pytest.raises(ValueError, match="overlaps"):
        merge_shards([(0, 5, block), (4, 11, torch.zeros(4, 7)), (5, 11, torch.zeros(4, 6))], 11)
    with pytest.raises(ValueError, match="number of test examples"):
        merge_shards([(0, 5, block), (5, 11, torch.zeros(3, 6))], 11)


@pytest.mark.parametrize(("index", "count"), [(2, 2), (-1, 2), (0, 0), (0, 12)])
def test_shard_bounds_are_checked(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        shard_bounds(11, index, count)


def test_shard_bounds_cover_every_column_once() -> None:
    bounds = [shard_bounds(10, i, 3) for i in range(3)]
    assert bounds == [(0, 3), (3, 6), (6, 10)]


@pytest.mark.parametrize("solver", [LiSSA(depth=3, batch_size=4, scale=10.0), Arnoldi(iterations=8, rank=4, scale=10.0)])
def test_streamed_training_gradients_give_the_kept_scores(solver) -> None:
    """train_chunk_size: training gradients computed block by block at attribute time, never kept; same scores."""
    model, train, test = tiny()
    kept = InfluenceFunctions(Objective(model), solver, seed=3, test_chunk_size=3).fit(train)
    streamed = InfluenceFunctions(Objective(model), solver, seed=3, test_chunk_size=3, train_chunk_size=4).fit(train)
    assert streamed._train_grads is None
    torch.testing.assert_close(streamed.attribute(test), kept.attribute(test), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="train_chunk_size"):
        InfluenceFunctions(Objective(model), solver, train_chunk_size=0)
