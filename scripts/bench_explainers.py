"""Time labelfree's example explainers and metrics against the authors' package ``lfxai`` on identical inputs.

    python scripts/bench_explainers.py                      # the workload of configs/bench/default.yaml
    python scripts/bench_explainers.py --paper-scale        # labelfree only: the paper's MNIST example check
    python scripts/bench_explainers.py --tiny --out /tmp/b.md   # seconds; what the test runs
    python scripts/bench_explainers.py --peers              # against Captum and dattri (experiments.benchmark_peers)
    python scripts/bench_explainers.py --peers --out P.md --resume   # continue a stopped peer run (P.md.parts/)
    python scripts/bench_explainers.py --peers --tiny --no-isolate --out /tmp/p.md   # seconds; what the test runs
    python scripts/bench_explainers.py --recurrent          # LSTM per-example gradients (experiments.benchmark_recurrent)
    python scripts/bench_explainers.py --assemble WORKLOAD_MD PAPER_MD [PEERS_MD [RECURRENT_MD]] --out results/BENCHMARKS.md

``make bench`` runs all five. The benchmark itself (workload, agreement checks, why they are what they are)
is :mod:`experiments.benchmark`; the paper-scale timings are :mod:`experiments.benchmark_paper`. The agreement
checks must pass, or the command exits with status 1. ``lfxai`` comes from the optional ``bench`` extra
(``pip install -e ".[bench]"``); without it only labelfree's times are reported.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the studies (experiments/) are not installed: they import from the root

from labelfree.runtime import use_huge_page_allocations  # noqa: E402

use_huge_page_allocations()  # before anything imports torch, for every tool timed alike (labelfree/runtime.py)

import torch  # noqa: E402

from experiments.benchmark import Workload, assemble, write_workload  # noqa: E402
from experiments.benchmark_paper import write_paper_scale  # noqa: E402
from experiments.benchmark_peers import PeerWorkload, write_peers  # noqa: E402
from experiments.benchmark_recurrent import RecurrentWorkload, write_recurrent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file to write (default: print only)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long workload (for the test)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="labelfree only: 1000 x 1000, 10 checkpoints, depth 100, and peak memory per model")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--lfxai-repeats", type=int, default=None)
    parser.add_argument("--if-batch-size", type=int, default=None)
    parser.add_argument("--paper-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="paper scale: skip the per-model peak-memory runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peers", action="store_true",
                        help="labelfree against Captum and dattri on the same label-free task (the bench extra)")
    parser.add_argument("--no-isolate", action="store_true",
                        help="peers: run every piece in this process (no per-piece peak memory; for the test)")
    parser.add_argument("--resume", action="store_true",
                        help="peers: keep the pieces an earlier, stopped run of the same workload finished "
                             "(<out>.parts/) and run the rest")
    parser.add_argument("--recurrent", action="store_true",
                        help="per-example gradients of the ECG5000 LSTM autoencoder: probes against vmap")
    parser.add_argument("--assemble", nargs="+", type=Path, metavar="MD",
                        help="write --out (results/BENCHMARKS.md) from the tables of earlier runs: WORKLOAD_MD "
                             "PAPER_MD [PEERS_MD [RECURRENT_MD]]")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.assemble:
        if len(args.assemble) not in (2, 3, 4):
            parser.error("--assemble takes WORKLOAD_MD PAPER_MD [PEERS_MD [RECURRENT_MD]]")
        extra = dict(zip(("peers", "recurrent"), args.assemble[2:]))
        assemble(*args.assemble[:2], args.out or ROOT / "results" / "BENCHMARKS.md", **extra)
    elif args.recurrent:
        if not write_recurrent(RecurrentWorkload.from_config(tiny=args.tiny, repeats=args.repeats), args.threads,
                               out=args.out):
            sys.exit(1)
    elif args.peers:
        if write_peers(PeerWorkload.from_config(tiny=args.tiny, repeats=args.repeats), args.threads,
                       isolate=not args.no_isolate, out=args.out, resume=args.resume):
            sys.exit(1)
    elif args.paper_scale:
        write_paper_scale(args.threads, 0, with_memory=not args.no_memory, size=args.paper_size, out=args.out)
    else:
        workload = Workload.from_config(tiny=args.tiny, repeats=args.repeats, lfxai_repeats=args.lfxai_repeats,
                                        if_batch_size=args.if_batch_size)
        if write_workload(workload, args.out):
            sys.exit(1)


if __name__ == "__main__":
    main()
