"""Build the train/validation/test tensors of an experiment from its dataset config node.

One builder per dataset, registered in :data:`DATASET_BUILDERS` under the dataset's config name.
A builder takes ``(config, data_dir, seed, purpose)`` and returns :class:`DataSplits`; ``purpose``
is the check the data serves (``features`` or ``examples``): datasets whose paper protocol trains a
different model per check (ECG5000) return a different split, with its own ``variant`` name, for each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from labelfree.baselines import gaussian_blur
from labelfree.data.ag_news import AG_NEWS_CLASSES, ag_news_file, load_ag_news
from labelfree.data.cifar10 import cifar10_files, load_cifar10
from labelfree.data.cora import CoraGraph, load_cora
from labelfree.data.dsprites import DSPRITES_URL, load_dsprites
from labelfree.data.ecg5000 import ecg5000_files, example_split, feature_split, load_ecg5000
from labelfree.data.graph import EdgeSplit, split_edges
from labelfree.data.mnist import load_mnist, mnist_files
from labelfree.data.subsets import balanced_subset, train_val_split
from labelfree.data.text import MASK_ID, PAD_ID, encode_texts, train_wordpiece, unescape_entities

log = logging.getLogger(__name__)

PURPOSES = ("features", "examples")
BASELINE_KINDS = ("constant", "mean_train", "blur")

Baseline = float | Tensor | Callable[[Tensor], Tensor]


@dataclass
class DataSplits:
    """In-memory splits ``x [n, *input_shape]``, ``y [n]`` and the masking ``baseline``.

    ``baseline`` is a scalar, a tensor broadcastable to one input, or a function of a batch that
    returns one baseline per input (a blurred copy); ``channel_dim`` is the dim of a batch summed
    over when features are ranked (1 for images, -1 for the channels of a time series). ``variant``
    names the split, so that two checks that need differently trained models (ECG5000) never share
    a cached model. ``y`` holds the labels used for scoring (ECG5000: 0 normal, 1 abnormal).
    ``files`` are the data files the splits were read from (what a model cache fingerprints).
    ``vocabulary`` holds the token of each id for token-id data (AG News), empty otherwise.
    """

    name: str
    variant: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    baseline: Baseline
    channel_dim: int | None
    files: tuple[Path, ...] = ()
    vocabulary: tuple[str, ...] = ()


def _subset(x: Tensor, y: Tensor, per_class: int | None, seed: int) -> tuple[Tensor, Tensor]:
    if per_class is None:
        return x, y
    idx = balanced_subset(y, int(per_class), seed=seed)
    return x[idx], y[idx]


def make_baseline(spec: Any, train_x: Tensor) -> Baseline:
    """The masking baseline described by ``spec``.

    Accepted: a number (a constant, e.g. black pixels ``0.0``), or a mapping with ``kind``:
    ``constant`` (``value``), ``mean_train`` (the mean training input ``[*input_shape]``; ECG5000's
    mean normal beat when the training part holds normal beats only) or ``blur`` (a Gaussian-blurred
    copy of each input, ``kernel_size`` and ``sigma``).
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return float(spec)
    if not isinstance(spec, Mapping) or spec.get("kind") not in BASELINE_KINDS:
        raise ValueError(
            f"Unknown masking baseline {spec!r}; accepted: a number, or a mapping with kind in {list(BASELINE_KINDS)}"
        )
    kind = spec["kind"]
    if kind == "constant":
        return float(spec["value"])
    if kind == "mean_train":
        return train_x.mean(dim=0)
    return partial(gaussian_blur, kernel_size=int(spec["kernel_size"]), sigma=float(spec["sigma"]))


def _train_val(
    name: str, config: Mapping[str, Any], seed: int, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
    files: tuple[Path, ...] = (),
) -> DataSplits:
    """Class-balanced subsets (when configured), a validation split carved from the training set."""
    train_x, train_y = _subset(*train, config.get("train_per_class"), seed)
    test_x, test_y = _subset(*test, config.get("test_per_class"), seed)
    fit_idx, val_idx = train_val_split(len(train_x), float(config["val_fraction"]), seed=seed)
    log.info("%s: %d train, %d validation, %d test examples", name, len(fit_idx), len(val_idx), len(test_x))
    return DataSplits(
        name=name,
        variant="default",
        train_x=train_x[fit_idx],
        train_y=train_y[fit_idx],
        val_x=train_x[val_idx],
        val_y=train_y[val_idx],
        test_x=test_x,
        test_y=test_y,
        baseline=make_baseline(config["baseline"], train_x[fit_idx]),
        channel_dim=config.get("channel_dim"),
        files=files,
    )


def build_mnist(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> DataSplits:
    """MNIST ``[n, 1, 28, 28]`` in [0, 1] (``image_size`` resizes, e.g. 32 for the VAEs); one split for both checks."""
    download = bool(config.get("download", False))
    train = load_mnist(data_dir, train=True, download=download)
    test = load_mnist(data_dir, train=False, download=download)
    size = config.get("image_size")
    if size is not None and int(size) != train[0].shape[-1]:
        resize = partial(torch.nn.functional.interpolate, size=(int(size), int(size)), mode="bilinear", align_corners=False)
        train, test = (resize(train[0]).clamp(0, 1), train[1]), (resize(test[0]).clamp(0, 1), test[1])
    files = (*mnist_files(data_dir, train=True), *mnist_files(data_dir, train=False))
    return _train_val(str(config["name"]), config, seed, train, test, files)


def build_cifar10(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> DataSplits:
    """CIFAR-10 ``[n, 3, 32, 32]`` in [0, 1]; one split for both checks."""
    download = bool(config.get("download", False))
    train = load_cifar10(data_dir, train=True, download=download)
    test = load_cifar10(data_dir, train=False, download=download)
    files = (*cifar10_files(data_dir, train=True), *cifar10_files(data_dir, train=False))
    return _train_val("cifar10", config, seed, train, test, files)


def build_ecg5000(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> DataSplits:
    """ECG5000 beats ``[n, 140, 1]`` with binary labels (0 normal, 1 abnormal); the paper's two splits.

    ``features``: train on normal beats (``val_fraction`` held out), test = every abnormal beat,
    baseline = the mean normal training beat. ``examples``: a random ``test_fraction`` split of all
    beats, ``val_fraction`` of the rest held out for early stopping.
    """
    x, classes = load_ecg5000(data_dir, download=bool(config.get("download", False)))
    if purpose == "features":
        split = feature_split(x, classes, val_fraction=float(config["val_fraction"]), seed=seed)
    else:
        split = example_split(
            x, classes, test_fraction=float(config["test_fraction"]), seed=seed,
            val_fraction=float(config["val_fraction"]),
        )
    log.info(
        "ecg5000 (%s split): %d train, %d validation, %d test beats (%.1f%% abnormal in test)",
        purpose, len(split["train_x"]), len(split["val_x"]), len(split["test_x"]),
        100 * float(split["test_y"].float().mean()),
    )
    return DataSplits(
        name="ecg5000",
        variant=purpose,
        train_x=split["train_x"],
        train_y=split["train_y"],
        val_x=split["val_x"],
        val_y=split["val_y"],
        test_x=split["test_x"],
        test_y=split["test_y"],
        baseline=make_baseline(config["baseline"], split["train_x"]),
        channel_dim=config.get("channel_dim"),
        files=tuple(ecg5000_files(data_dir)),
    )


def build_dsprites(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> DataSplits:
    """dSprites ``[n, 1, 64, 64]`` in {0, 1}; a random ``test_fraction`` (0.1: the paper's 90/10) split by seed.

    ``n_examples`` (null = every image of the file) draws a seeded subset first; ``val_fraction`` of
    the training part is held out for early stopping. ``y`` is the shape class (0 square, 1 ellipse,
    2 heart), for display only. One split for every check.
    """
    sprites = load_dsprites(
        data_dir, n_examples=config.get("n_examples"), seed=seed, download=bool(config.get("download", False)),
        url=str(config.get("url") or DSPRITES_URL),
    )
    x, y = sprites.images, sprites.shapes
    rest_idx, test_idx = train_val_split(len(x), float(config["test_fraction"]), seed=seed)
    fit_pos, val_pos = train_val_split(len(rest_idx), float(config["val_fraction"]), seed=seed)
    fit_idx, val_idx = rest_idx[fit_pos], rest_idx[val_pos]
    log.info("dsprites (%s): %d train, %d validation, %d test images", sprites.source.name, len(fit_idx), len(val_idx), len(test_idx))
    return DataSplits(
        name="dsprites",
        variant="default",
        train_x=x[fit_idx],
        train_y=y[fit_idx],
        val_x=x[val_idx],
        val_y=y[val_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        baseline=make_baseline(config["baseline"], x[fit_idx]),
        channel_dim=config.get("channel_dim"),
        files=(sprites.source,),
    )


#: ``dataset.baseline_token`` -> the id that replaces a masked token
BASELINE_TOKENS = {"mask": MASK_ID, "pad": PAD_ID}


def build_ag_news(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> DataSplits:
    """AG News as token ids ``int64 [n, max_length]`` with topic labels 0..3; one split for both checks.

    The WordPiece vocabulary (``vocab_size``, ``min_frequency``; :func:`labelfree.data.text.train_wordpiece`) is
    learnt from every text of the training file (it does not depend on the seed); ``train_per_class`` /
    ``test_per_class`` draw class-balanced subsets (null: all), ``val_fraction`` of the training texts is held
    out (seeded) for early stopping. ``baseline`` is the id of ``baseline_token`` (``mask``: [MASK], ``pad``:
    [PAD]), the token that replaces masked tokens.
    """
    token = config.get("baseline_token")
    if token not in BASELINE_TOKENS:
        raise ValueError(f"dataset.baseline_token={token!r} is not accepted; expected one of {sorted(BASELINE_TOKENS)}")
    train_texts, train_y = load_ag_news(data_dir, "train")
    test_texts, test_y = load_ag_news(data_dir, "test")
    if config.get("unescape_entities", True):
        train_texts, test_texts = ([unescape_entities(t) for t in texts] for texts in (train_texts, test_texts))
    tokenizer = train_wordpiece(train_texts, int(config["vocab_size"]), int(config.get("min_frequency", 2)))
    length = int(config["max_length"])
    train = (encode_texts(tokenizer, train_texts, length), train_y)
    test = (encode_texts(tokenizer, test_texts, length), test_y)
    files = (ag_news_file(data_dir, "train"), ag_news_file(data_dir, "test"))
    splits = _train_val("ag_news", {**config, "baseline": 0.0}, seed, train, test, files)
    splits.baseline = BASELINE_TOKENS[token]
    splits.vocabulary = tuple(sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get))
    log.info("ag_news: %d WordPiece tokens, %d tokens per text, %s", len(splits.vocabulary), length,
             ", ".join(f"{name} {int((splits.test_y == c).sum())}" for c, name in enumerate(AG_NEWS_CLASSES)))
    return splits


@dataclass
class GraphSplits(DataSplits):
    """A graph's splits: the examples are node ids (``train_x`` the explained training nodes, ``test_x`` the test
    nodes, ``y`` their classes, for scoring only); ``val_x [k, 2]`` the validation node pairs of the link task
    (``val_y`` 1 for a held-out edge, 0 for a negative); ``graph`` the whole graph and ``edges`` the link split
    (message passing on ``edges.train_edge_index`` only)."""

    graph: CoraGraph | None = None
    edges: EdgeSplit | None = None


def build_cora(config: Mapping[str, Any], data_dir: Path, seed: int, purpose: str) -> GraphSplits:
    """Cora (Planetoid files, :func:`labelfree.data.cora.load_cora`) for the VGAE: a seeded link split
    (``val_edge_fraction``, ``test_edge_fraction`` of the undirected edges held out); training examples = every
    node outside the Planetoid test split, test examples = the Planetoid test nodes. One split for both checks."""
    graph = load_cora(data_dir)
    edges = split_edges(graph.edge_index, graph.num_nodes, float(config["val_edge_fraction"]),
                        float(config["test_edge_fraction"]), seed)
    is_test = torch.zeros(graph.num_nodes, dtype=torch.bool)
    is_test[graph.test_index] = True
    train_nodes = (~is_test).nonzero().flatten()
    val_pairs = torch.cat([edges.val_pos, edges.val_neg], dim=1).t().contiguous()
    val_labels = torch.cat([torch.ones(edges.val_pos.shape[1]), torch.zeros(edges.val_neg.shape[1])]).long()
    log.info("cora: %d nodes, %d training / %d validation / %d test edges; %d training and %d test nodes",
             graph.num_nodes, edges.train_edge_index.shape[1] // 2, edges.val_pos.shape[1], edges.test_pos.shape[1],
             len(train_nodes), len(graph.test_index))
    return GraphSplits(
        name="cora", variant="default", train_x=train_nodes, train_y=graph.y[train_nodes], val_x=val_pairs,
        val_y=val_labels, test_x=graph.test_index, test_y=graph.y[graph.test_index],
        baseline=make_baseline(config["baseline"], graph.x), channel_dim=None, files=tuple(graph.files),
        graph=graph, edges=edges,
    )


DatasetBuilder = Callable[[Mapping[str, Any], Path, int, str], DataSplits]

#: ``dataset.name`` -> builder. Add a dataset by registering its builder here.
DATASET_BUILDERS: dict[str, DatasetBuilder] = {
    "mnist": build_mnist,
    "cifar10": build_cifar10,
    "ecg5000": build_ecg5000,
    "dsprites": build_dsprites,
    "ag_news": build_ag_news,
    "cora": build_cora,
}


def build_dataset(config: Mapping[str, Any], data_dir: str | Path, seed: int, purpose: str = "features") -> DataSplits:
    """Load the dataset named ``config['name']`` from ``data_dir`` and split it (deterministic for ``seed``)."""
    if purpose not in PURPOSES:
        raise ValueError(f"Unknown data purpose {purpose!r}; accepted: {list(PURPOSES)}")
    name = config.get("name")
    if name not in DATASET_BUILDERS:
        raise ValueError(f"Unknown dataset {name!r}; accepted: {sorted(DATASET_BUILDERS)}")
    return DATASET_BUILDERS[name](config, Path(data_dir).expanduser(), int(seed), purpose)


def baseline_like(baseline: Baseline, inputs: Tensor) -> Tensor:
    """The baseline as a tensor shaped like ``inputs`` ``[n, *input_shape]``."""
    if callable(baseline) and not isinstance(baseline, Tensor):
        return baseline(inputs)
    if isinstance(baseline, Tensor):
        return baseline.to(inputs).expand_as(inputs).clone()
    return torch.full_like(inputs, float(baseline))
