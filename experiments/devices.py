"""The GPU check: every experiment at smoke scale on CUDA, paper-scale timings, ``results/DEVICES.md``.

    bash scripts/gpu_check.sh            # on a machine with a CUDA GPU; under 8 minutes; fails on any CUDA error

Steps (each a fresh process, so a CUDA error stops the check with its traceback):

1. every experiment of ``configs/experiment`` at ``scale=smoke`` with ``device=cuda``, twice with the same seed:
   the tables must be equal (same seed, same device: same numbers) and finite;
2. one paper-scale training epoch of SimCLR on CIFAR-10 and of the beta-VAE on dSprites (wall time);
3. the paper-scale MNIST example check (1000 x 1000; influence functions, TracIn, SimplEx, DKNN) on a model
   trained for one epoch (the explainers' wall time does not depend on how long the model trained).

The CPU has its own numbers in ``results/BENCHMARKS.md``; this file only says what a GPU changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.aggregation import to_markdown
from labelfree.io import save_text

log = logging.getLogger("experiments.devices")
ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
#: one paper-scale epoch: (what, the run's overrides); the study's checks off, so only training is timed
EPOCHS = (
    ("SimCLR, CIFAR-10, one paper-scale epoch", ["experiment=cifar10_consistency", "protocol.examples.enabled=false",
                                                  "protocol.features.n_test=8", "trainer.epochs=1"]),
    ("beta-VAE, dSprites, one paper-scale epoch", ["experiment=dsprites_disvae", "protocol.n_test=8", "trainer.epochs=1"]),
)
EXAMPLE_CHECK = ["experiment=mnist_consistency", "protocol.features.enabled=false", "trainer.epochs=1",
                 "trainer.checkpoint_every=1"]


def _run(overrides: Sequence[str], folder: Path) -> dict:
    """``python run.py`` with ``overrides`` on CUDA into ``folder``; its summary. Raises on any failure."""
    command = [sys.executable, str(ROOT / "run.py"), "device=cuda", "progress=false", f"hydra.run.dir={folder}",
               f"paths.cache_dir={folder / 'cache'}", *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"failed on CUDA: {' '.join(overrides)}\n{done.stderr[-4000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    if summary.get("device") != "cuda":
        raise RuntimeError(f"{' '.join(overrides)} ran on {summary.get('device')!r}, not CUDA")
    summary["process_seconds"] = time.perf_counter() - start
    return summary


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p) for p in sorted(folder.glob("*.csv")) if p.name != "training_history.csv"}


def check(out: Path) -> Path:
    """Run every step (module docstring) and write ``out``; raise on the first failure."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU check needs one (torch.cuda.is_available() is False)")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for experiment in EXPERIMENTS:
            first = _run([f"experiment={experiment}", "scale=smoke"], tmp / experiment / "a")
            _run([f"experiment={experiment}", "scale=smoke"], tmp / experiment / "b")
            a, b = _tables(tmp / experiment / "a"), _tables(tmp / experiment / "b")
            for name in a:
                pd.testing.assert_frame_equal(a[name], b[name])  # same seed, same device: same numbers
            rows.append({"step": f"smoke: {experiment}", "seconds": round(first["wall_seconds"], 1),
                         "note": "twice, equal tables"})
        for what, overrides in EPOCHS:
            summary = _run(["scale=paper", *overrides], tmp / what.split(",")[0])
            seconds = sum(t["train_seconds"] or 0.0 for t in summary["training"].values())
            rows.append({"step": what, "seconds": round(seconds, 1), "note": "training only"})
        summary = _run(["scale=paper", *EXAMPLE_CHECK], tmp / "examples")
        for method, seconds in summary["example_explainer_seconds"].items():
            rows.append({"step": f"MNIST example check 1000 x 1000: {method}", "seconds": round(seconds, 1),
                         "note": "model trained 1 epoch"})
    device = torch.cuda.get_device_name(0)
    text = "\n".join([
        "# labelfree on a GPU",
        "",
        f"Written by `bash scripts/gpu_check.sh` on {time.strftime('%Y-%m-%d')}: {device}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, Python {platform.python_version()}.",
        "",
        to_markdown(pd.DataFrame(rows)),
    ])
    save_text(text, out)
    log.info("wrote %s", out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "results" / "DEVICES.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    check(Path(args.out))


if __name__ == "__main__":
    main()
