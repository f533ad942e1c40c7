"""Per-example gradients of the paper's ECG5000 LSTM autoencoder: probes (one batched backward) against vmap.

    nice -n 10 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/bench_per_example_grads.py --repeats 3

Times (process CPU time and wall time) of ``Objective.per_example_grads`` on ``--n`` random ECG-shaped beats
``[n, 140, 1]`` (the encoder's 116,736 parameters, the default ``wrt``), and of TracIn with one checkpoint on
``--n`` x ``--n`` beats, for each path and chunk size. The variants run in turn, ``--repeats`` rounds, so that a
background load affects them alike; read the ratios of the medians (the numbers in docs/NOTEBOOK.md). The
agreement of every variant with the first (vmap) is printed too: max over examples of the relative difference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, as scripts/bench_explainers.py

from labelfree.attribution.examples import Objective, TracIn  # noqa: E402
from labelfree.models.lstm import LSTMAutoEncoder  # noqa: E402


def timed(fn: Callable[[], torch.Tensor]) -> tuple[float, float, torch.Tensor]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="beats (and TracIn's n_train = n_test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vmap-chunks", type=int, nargs="*", default=[32], help="32: the LSTM's configured size")
    parser.add_argument("--probe-chunks", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--skip-tracin", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LSTMAutoEncoder()  # the paper's sizes: 128 and 64
    x = torch.randn(args.n, 140, 1)
    test = torch.randn(args.n, 140, 1)
    variants = [("vmap", c) for c in args.vmap_chunks] + [("probes", c) for c in args.probe_chunks]
    pieces: dict[str, Callable[[str, int], torch.Tensor]] = {
        "per-example gradients": lambda method, chunk: Objective(model, per_example=method).per_example_grads(
            x, chunk_size=chunk),
    }
    if not args.skip_tracin:
        pieces["TracIn, 1 checkpoint"] = lambda method, chunk: TracIn(
            Objective(model, per_example=method), [model.state_dict()], chunk_size=chunk).fit(x).attribute(test)
    print(f"torch threads {torch.get_num_threads()}; n = {args.n}; P = {Objective(model).n_params}")
    for piece, run in pieces.items():
        times: dict[tuple[str, int], list[tuple[float, float]]] = {v: [] for v in variants}
        reference = None
        for _ in range(args.repeats):
            for method, chunk in variants:
                cpu, wall, result = timed(lambda: run(method, chunk))  # noqa: B023
                times[(method, chunk)].append((cpu, wall))
                if reference is None:
                    reference = result
                difference = float(((result - reference).norm(dim=1) / reference.norm(dim=1)).max())
                print(f"  {piece} {method} chunk {chunk}: cpu {cpu:.2f} s, wall {wall:.2f} s, "
                      f"max relative difference to the first {difference:.1e}", flush=True)
        base = statistics.median(c for c, _ in times[variants[0]])
        print(f"{piece}: median CPU seconds (ratio to {variants[0][0]} chunk {variants[0][1]})")
        for (method, chunk), values in times.items():
            cpu = statistics.median(c for c, _ in values)
            wall = statistics.median(w for _, w in values)
            print(f"  {method:6s} chunk {chunk:4d}: cpu {cpu:6.2f}  wall {wall:6.2f}  x{base / cpu:5.1f}")


if __name__ == "__main__":
    main()
