"""Cora citation graph (Planetoid raw files, Yang et al. 2016), read offline without PyTorch Geometric.

Files, all in ``data_dir/Cora/raw/`` (:data:`CORA_FILES`): ``ind.cora.{x,tx,allx,y,ty,ally,graph}`` (Python 2
pickles: scipy CSR feature matrices, numpy one-hot label arrays, a ``defaultdict(list)`` adjacency dict) and
``ind.cora.test.index`` (one test node id per line). Nothing is written anywhere (PyG's ``Planetoid`` would
write ``processed/`` files next to the raw ones); a missing file stops with one :class:`DataNotFoundError`
naming every expected file.

**Trust decision.** Unpickling can execute code. These files are data in a fixed, known format, read from a
local folder the user points at, so they are unpickled, but with a restricted unpickler
(:class:`_PlanetoidUnpickler`) that resolves only the classes such a file needs (numpy arrays and dtypes,
scipy's CSR matrix, ``collections.defaultdict``, ``list``); any other global stops with
``pickle.UnpicklingError`` naming it. ``ind.cora.test.index`` is plain text.

Processing follows PyG's ``read_planetoid_data`` (and Kipf & Welling's ``load_data``): features are
``allx`` then ``tx``, labels ``ally`` then ``ty`` (argmax of the one-hot rows); the ``tx``/``ty`` rows are in the
order of ``test.index``, so row ``len(allx) + j`` is moved to node ``sorted(test.index)[j]``'s reordered
position (``x[test_index] = x[sorted_test_index]``). The adjacency dict becomes an undirected ``edge_index``
with both directions of every edge, no self-loops and no duplicates, sorted by (source, target): for the real
files 2708 nodes, 1433 binary features, 7 classes, 5278 undirected = 10556 directed edges (PyG's count). The
standard split: train = the first ``len(y)`` = 140 nodes, validation the next 500, test the 1000
``test.index`` nodes (the validation nodes are capped at ``len(allx)``, so a tiny graph's validation split
never reaches its test nodes; the real files are unaffected: 140 + 500 < 1708).
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from labelfree.data.errors import DATA_FIX_HINT, DataNotFoundError

__all__ = [
    "CORA_FILES",
    "CORA_N_CLASSES",
    "CORA_N_EDGES",
    "CORA_N_FEATURES",
    "CORA_N_NODES",
    "CORA_SUBDIR",
    "CoraGraph",
    "cora_dir",
    "load_cora",
]

#: Folder, relative to ``data_dir``, that holds the raw files (PyG's layout ``<root>/Cora/raw``).
CORA_SUBDIR = Path("Cora") / "raw"
#: The Planetoid raw files, by their suffix.
CORA_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
CORA_FILES = tuple(f"ind.cora.{part}" for part in CORA_PARTS)
#: Sizes of the real data set.
CORA_N_NODES = 2708
CORA_N_FEATURES = 1433
CORA_N_CLASSES = 7
#: Directed edges of ``edge_index`` (both directions of the 5278 undirected edges).
CORA_N_EDGES = 10556
#: Size of the standard validation split (the nodes after the training nodes).
CORA_N_VAL = 500


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The globals a Planetoid pickle may name, by (module, name) as written in the file (Python 2 or 3)."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, wherever it lives
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "defaultdict"): collections.defaultdict,
        ("__builtin__", "list"): list,
        ("builtins", "list"): list,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,  # how Python 3's protocol 2 writes the bytes of an array
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    for module in ("scipy.sparse.csr", "scipy.sparse._csr"):  # Python 2 scipy, and scipy >= 1.8
        allowed[(module, "csr_matrix")] = sp.csr_matrix
    return allowed


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 codec that protocol-2 pickles use for bytes."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with codec {encoding!r} (only latin1 is expected)")
    return text.encode("latin1")


class _PlanetoidUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the classes of a Planetoid raw file (see the module's trust decision)."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load global {module}.{name}: a Planetoid raw file holds only numpy arrays, scipy CSR "
                "matrices and a defaultdict(list)"
            ) from None


def _unpickle(path: Path) -> Any:
    """One Planetoid pickle (Python 2 ones need ``encoding='latin1'`` for numpy's byte strings)."""
    with open(path, "rb") as handle:
        try:
            return _PlanetoidUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"Malformed Planetoid file {path}: {exc}") from exc


@dataclass(frozen=True)
class CoraGraph:
    """The Cora graph as tensors.

    Attributes:
        x: node features ``float32 [N, F]`` (binary bag of words; N = 2708, F = 1433 for the real files).
        y: labels ``int64 [N]`` in ``0..C-1`` (C = 7).
        edge_index: ``int64 [2, E]``, both directions of every undirected edge, no self-loops, no duplicates,
            sorted by (source, target) (E = 10556).
        train_index, val_index, test_index: ``int64`` node ids of the standard Planetoid split (140, 500 and
            1000 nodes; the test ids sorted).
        files: the files read, in :data:`CORA_FILES` order.
    """

    x: Tensor
    y: Tensor
    edge_index: Tensor
    train_index: Tensor
    val_index: Tensor
    test_index: Tensor
    files: list[Path] = field(default_factory=list)

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0


def cora_dir(data_dir: str | Path) -> Path:
    """The folder ``data_dir/Cora/raw`` where the files are looked for."""
    return Path(data_dir).expanduser() / CORA_SUBDIR


def _dense(matrix: Any, path: Path) -> np.ndarray:
    """A scipy sparse matrix or numpy array as a dense 2-d float array."""
    array = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if array.ndim != 2:
        raise ValueError(f"Malformed Planetoid file {path}: expected a 2-d matrix, got shape {array.shape}")
    return array


def _edge_index(graph: Any, num_nodes: int, path: Path) -> np.ndarray:
    """``int64 [2, E]``: both directions of every edge of the adjacency dict, no self-loops or duplicates."""
    if not isinstance(graph, dict):
        raise ValueError(f"Malformed Planetoid file {path}: expected a dict of adjacency lists, got {type(graph)}")
    sources = [int(node) for node, neighbours in graph.items() for _ in neighbours]
    targets = [int(other) for neighbours in graph.values() for other in neighbours]
    edges = np.array([sources + targets, targets + sources], dtype=np.int64).reshape(2, -1)
    if edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        raise ValueError(f"Malformed Planetoid file {path}: node ids outside [0, {num_nodes})")
    edges = edges[:, edges[0] != edges[1]]
    keys = np.unique(edges[0] * num_nodes + edges[1])  # sorted by (source, target), duplicates gone
    return np.stack([keys // num_nodes, keys % num_nodes])


def load_cora(data_dir: str | Path) -> CoraGraph:
    """Read Cora from ``data_dir/Cora/raw`` (see the module docstring for the processing).

    Returns:
        a :class:`CoraGraph`: ``x float32 [N, F]``, ``y int64 [N]``, ``edge_index int64 [2, E]`` and the split.

    Raises:
        DataNotFoundError: a file is absent (names every expected file and the folder).
        ValueError: a file is malformed or refers to a class outside the allowed ones (names the file).
    """
    folder = cora_dir(data_dir)
    paths = [folder / name for name in CORA_FILES]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise DataNotFoundError(
            f"Cora (Planetoid) files not found in {folder}: missing {', '.join(missing)}; expected all of "
            f"{', '.join(CORA_FILES)}. Nothing is downloaded. {DATA_FIX_HINT}"
        )
    part = dict(zip(CORA_PARTS, paths))
    tx, allx = (_dense(_unpickle(part[name]), part[name]) for name in ("tx", "allx"))
    ty, ally = (_dense(_unpickle(part[name]), part[name]) for name in ("ty", "ally"))
    y_train = _dense(_unpickle(part["y"]), part["y"])
    try:
        test_index = np.loadtxt(part["test.index"], dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise ValueError(f"Malformed Planetoid file {part['test.index']}: {exc}") from exc
    if len(tx) != len(test_index) or len(ty) != len(test_index) or len(allx) != len(ally):
        raise ValueError(f"Inconsistent Planetoid files in {folder}: tx {tx.shape}, ty {ty.shape}, "
                         f"test.index {test_index.shape}, allx {allx.shape}, ally {ally.shape}")
    x = np.concatenate([allx, tx]).astype(np.float32)
    labels = np.concatenate([ally, ty])
    sorted_test = np.sort(test_index)
    num_nodes = len(x)
    if sorted_test.min() < 0 or sorted_test.max() >= num_nodes:
        raise ValueError(f"Malformed Planetoid file {part['test.index']}: node ids outside [0, {num_nodes})")
    x[test_index] = x[sorted_test]
    labels[test_index] = labels[sorted_test]
    if not np.isfinite(x).all():
        raise ValueError(f"Planetoid features in {part['allx']} / {part['tx']} contain NaN or inf")
    edges = _edge_index(_unpickle(part["graph"]), num_nodes, part["graph"])
    n_train = len(y_train)
    return CoraGraph(
        x=torch.from_numpy(x),
        y=torch.from_numpy(labels.argmax(axis=1).astype(np.int64)),
        edge_index=torch.from_numpy(edges),
        train_index=torch.arange(n_train),
        val_index=torch.arange(n_train, min(n_train + CORA_N_VAL, len(allx))),
        test_index=torch.from_numpy(sorted_test),
        files=paths,
    )
