"""The example check on shards of the training set, as separate jobs, and the command that merges them.

A run with ``protocol.examples.shard.count > 1`` (``index`` in ``[0, count)``) computes, for every example
explainer, only the score columns of its shard of the training subset (``labelfree.attribution.examples.shards``)
and writes each block atomically to ``<shard.dir>/<explainer>/columns_<start>-<stop>_of_<n>.pt`` with what the
merge needs (labels, percents, the run's identity). Hydra runs the shards as separate jobs, e.g.::

    python run.py -m hydra/launcher=parallel experiment=mnist_consistency \\
        protocol.examples.shard.count=2 protocol.examples.shard.index=0,1

Then ``python -m experiments.shards <shard.dir> [--out FOLDER]`` merges the blocks, refuses a missing or
overlapping shard, and writes ``consistency_examples.csv``: the table the unsharded run writes (same rows,
same numbers). ``count: 1`` (the default) is the unsharded run, unchanged.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor

from experiments.study import identified
from labelfree.attribution.examples import ExampleImportance, attribute_shard, merge_shards, shard_bounds
from labelfree.guards import check_finite
from labelfree.io import load_torch, save_csv, save_torch
from labelfree.protocols.consistency import similarity_rows

log = logging.getLogger(__name__)

TABLE = "consistency_examples"
_KEYS = ("scores", "start", "stop", "n_train", "count", "explainers", "train_y", "test_y", "percents", "identity")


def write_example_shard(shard: DictConfig, explainers: Mapping[str, ExampleImportance], train_x: Tensor,
                        train_y: Tensor, test_x: Tensor, test_y: Tensor, percents: Sequence[float], fit_labels: bool,
                        identity: dict[str, Any]) -> dict[str, Any]:
    """Compute and write every explainer's block of shard ``shard.index`` of ``shard.count``; the summary entry."""
    index, count, folder = int(shard.index), int(shard.count), Path(str(shard.dir))
    start, stop = shard_bounds(len(train_x), index, count)
    seconds = {}
    for name, explainer in explainers.items():
        began = time.perf_counter()
        scores = attribute_shard(explainer, train_x, test_x, start, stop, train_y if fit_labels else None,
                                 test_y if fit_labels else None)
        check_finite(f"example importance by {name} (columns [{start}, {stop}))", scores)
        seconds[name] = time.perf_counter() - began
        path = folder / name / f"columns_{start}-{stop}_of_{len(train_x)}.pt"
        save_torch({"scores": scores, "start": start, "stop": stop, "n_train": len(train_x), "count": count,
                    "explainers": list(explainers), "train_y": train_y.cpu(), "test_y": test_y.cpu(),
                    "percents": [float(p) for p in percents], "identity": identity}, path)
        log.info("examples %s, shard %d of %d (columns [%d, %d)): %.1f s -> %s", name, index, count, start, stop,
                 seconds[name], path)
    return {"index": index, "count": count, "columns": [start, stop], "dir": str(folder), "seconds": seconds}


def _load_blocks(folder: Path) -> dict[str, list[dict[str, Any]]]:
    blocks: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*/columns_*.pt")):
        block = load_torch(path)
        if not isinstance(block, dict) or any(key not in block for key in _KEYS):
            raise ValueError(f"{path} is not a shard block written by a sharded run (keys {list(_KEYS)})")
        blocks.setdefault(path.parent.name, []).append({**block, "path": path})
    if not blocks:
        raise FileNotFoundError(f"no shard blocks (<explainer>/columns_*.pt) under {folder}")
    return blocks


def merge_example_shards(folder: str | Path) -> pd.DataFrame:
    """The example table of the unsharded run, from the blocks under ``folder``; every column exactly once."""
    folder = Path(folder)
    blocks = _load_blocks(folder)
    first = next(iter(blocks.values()))[0]
    for block in (b for group in blocks.values() for b in group):
        for key in ("n_train", "explainers", "percents", "identity"):
            if block[key] != first[key]:
                raise ValueError(f"{block['path']} has {key}={block[key]!r}, {first['path']} {first[key]!r}: "
                                 "blocks of different runs are mixed")
        for key in ("train_y", "test_y"):
            if not torch.equal(block[key], first[key]):
                raise ValueError(f"{block['path']} and {first['path']} hold different {key}: blocks of different "
                                 "runs are mixed")
    missing = [name for name in first["explainers"] if name not in blocks]
    if missing:
        raise ValueError(f"no shard of explainer(s) {missing} under {folder}: every shard job writes one block per "
                         f"explainer ({first['explainers']})")
    rows = []
    for name in first["explainers"]:
        scores = merge_shards([(b["start"], b["stop"], b["scores"]) for b in blocks[name]], first["n_train"])
        rows += similarity_rows(name, scores, first["train_y"], first["test_y"], first["percents"])
    return check_finite(TABLE, identified(first["identity"], pd.DataFrame(rows)))


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="protocol.examples.shard.dir of the sharded runs")
    parser.add_argument("--out", type=Path, default=None, help=f"where {TABLE}.csv goes (default: the folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = save_csv(merge_example_shards(args.folder), (args.out or args.folder) / f"{TABLE}.csv")
    log.info("merged example table: %s", path)
    return path


if __name__ == "__main__":
    main()
