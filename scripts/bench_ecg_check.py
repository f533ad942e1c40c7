"""Time the attribution of the paper-scale ECG5000 example check (issue 18: under 15 minutes on 2 CPU cores).

    python scripts/bench_ecg_check.py                       # 1000 training x 800 test beats, 15 checkpoints
    python scripts/bench_ecg_check.py --checkpoints 5       # fewer checkpoints (training stopped early)

The paper's LSTM autoencoder with random weights (the cost does not depend on them: Arnoldi runs all its steps),
the experiment's sizes (``configs/experiment/ecg5000_consistency.yaml``: 500 + 500 training beats, 400 + 400 test
beats) and memory bounds, TracIn over ``--checkpoints`` checkpoints (the schedule's maximum: one every 10 of up to
150 epochs), influence functions by Arnoldi at the paper's depth 100 (``configs/explainer/
influence_functions_arnoldi.yaml``), SimplEx and DKNN; each explainer in a fresh process
(:func:`experiments.benchmark_paper.run_job`), so the peak memory is its own. Writes a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from omegaconf import OmegaConf  # noqa: E402

from experiments.benchmark import CONFIGS, explainer_settings, machine, memory_options  # noqa: E402
from experiments.benchmark_paper import run_job  # noqa: E402
from labelfree.io import save_text  # noqa: E402

MODEL = "ecg_lstm_ae"


def main(argv: list[str] | None = None) -> str:
    experiment = OmegaConf.load(CONFIGS / "experiment" / "ecg5000_consistency.yaml")
    examples, trainer = experiment.protocol.examples, experiment.trainer
    most_checkpoints = trainer.epochs // trainer.checkpoint_every  # one every checkpoint_every of up to epochs
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=most_checkpoints,
                        help=f"TracIn checkpoints (default: the training schedule's maximum, {most_checkpoints})")
    parser.add_argument("--n-train", type=int, default=2 * examples.train_per_class)
    parser.add_argument("--n-test", type=int, default=2 * examples.test_per_class)
    parser.add_argument("--arnoldi-steps", type=int, default=None, help="default: the explainer config's (100)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arnoldi = explainer_settings("influence_functions_arnoldi")["solver"]
    if args.arnoldi_steps is not None:
        arnoldi = dataclasses.replace(arnoldi, iterations=args.arnoldi_steps, rank=min(arnoldi.rank, args.arnoldi_steps))
    base = {"model": MODEL, "threads": args.threads, "seed": 0, "n_train": args.n_train, "n_test": args.n_test,
            "n_checkpoints": args.checkpoints}
    pieces = [
        (f"TracIn, {args.checkpoints} checkpoints", "tracin", memory_options(MODEL, "tracin")),
        (f"influence functions, Arnoldi ({arnoldi.iterations} steps, depth {arnoldi.depth})", "influence_functions",
         {**memory_options(MODEL, "influence_functions"), "solver": arnoldi}),
        ("SimplEx", "simplex", {}),
        ("DKNN", "dknn", {}),
    ]
    lines = [f"ECG5000 example check, attribution only: {args.n_train} training x {args.n_test} test beats, the "
             f"paper's LSTM autoencoder (random weights), {args.threads} threads. Machine: {machine()}", "",
             "| explainer | memory bounds | seconds | peak RSS (GiB) |", "|---|---|---|---|"]
    total = 0.0
    for label, name, options in pieces:
        result = run_job({**base, "explainer": name, "options": options})
        total += result["seconds"]
        bounds = ", ".join(f"{k}={v}" for k, v in options.items() if k != "solver") or "-"
        lines.append(f"| {label} | {bounds} | {result['seconds']:.1f} | {result['peak_rss_gib']:.2f} |")
    lines.append(f"| **all four** | | **{total:.1f} ({total / 60:.1f} min)** | |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        save_text(table, args.out)
    return table


if __name__ == "__main__":
    main()
