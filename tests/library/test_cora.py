"""The Cora (Planetoid raw) loader on a tiny real-format copy, its restricted unpickler, and the real files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from labelfree.data import DataNotFoundError
from labelfree.data.cora import (
    CORA_FILES,
    CORA_N_CLASSES,
    CORA_N_EDGES,
    CORA_N_FEATURES,
    CORA_N_NODES,
    load_cora,
)
from tests.fixtures.cora import write_cora


@pytest.fixture
def tiny(tmp_path):
    return tmp_path, write_cora(tmp_path, seed=1)


def test_shapes_labels_and_test_reordering(tiny):
    root, written = tiny
    graph = load_cora(root)
    assert graph.x.shape == written.x.shape and graph.x.dtype == torch.float32
    assert graph.y.shape == (len(written.x),) and graph.y.dtype == torch.int64
    # the tx/ty rows (in test.index order) land on their nodes: every node has its own features and label
    np.testing.assert_array_equal(graph.x.numpy(), written.x)
    np.testing.assert_array_equal(graph.y.numpy(), written.y)
    assert 0 <= int(graph.y.min()) and int(graph.y.max()) < 3 and graph.num_classes == 3
    assert graph.train_index.tolist() == list(range(written.n_train))
    assert graph.test_index.tolist() == sorted(written.test_index.tolist())
    assert set(graph.val_index.tolist()).isdisjoint(graph.test_index.tolist())
    assert graph.files == [root / "Cora" / "raw" / name for name in CORA_FILES]


def test_edges_symmetric_without_self_loops_or_duplicates(tiny):
    root, written = tiny
    edges = load_cora(root).edge_index
    assert edges.dtype == torch.int64 and edges.shape[0] == 2
    pairs = list(map(tuple, edges.t().tolist()))
    assert len(pairs) == len(set(pairs)), "duplicates"
    assert all(a != b for a, b in pairs), "self-loops"
    assert set(pairs) == {(b, a) for a, b in pairs}, "not symmetric"
    assert {(min(a, b), max(a, b)) for a, b in pairs} == written.edges  # the one-direction edge is completed
    assert pairs == sorted(pairs)


def test_missing_file_names_expected_files(tiny):
    root, _ = tiny
    (root / "Cora" / "raw" / "ind.cora.graph").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing ind\.cora\.graph.*ind\.cora\.x, ind\.cora\.tx"):
        load_cora(root)
    with pytest.raises(DataNotFoundError, match="ind.cora.test.index"):
        load_cora(root / "elsewhere")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_restricted_unpickler_refuses_other_globals(tiny):
    root, _ = tiny
    with open(root / "Cora" / "raw" / "ind.cora.y", "wb") as handle:
        pickle.dump(_Evil(), handle, protocol=2)
    with pytest.raises(ValueError, match=r"ind\.cora\.y.*refused to load global posix\.getcwd"):
        load_cora(root)


def test_loading_writes_nothing(tiny):
    root, _ = tiny
    before = sorted(p for p in Path(root).rglob("*"))
    load_cora(root)
    assert sorted(p for p in Path(root).rglob("*")) == before


@pytest.mark.realdata
def test_real_cora():
    data_dir = os.environ.get("LABELFREE_DATA_DIR")
    if not data_dir or not (Path(data_dir) / "Cora" / "raw").is_dir():
        pytest.skip("LABELFREE_DATA_DIR unset or without Cora/raw/")
    graph = load_cora(data_dir)
    assert graph.x.shape == (CORA_N_NODES, CORA_N_FEATURES)
    assert graph.num_classes == CORA_N_CLASSES
    assert torch.bincount(graph.y).tolist() == [351, 217, 418, 818, 426, 298, 180]
    assert graph.edge_index.shape == (2, CORA_N_EDGES)
    assert not (graph.edge_index[0] == graph.edge_index[1]).any()
    assert (len(graph.train_index), len(graph.val_index), len(graph.test_index)) == (140, 500, 1000)
