"""Write the smoke-scale reference tables that tests compare every experiment against.

    python -m tests.reference.make_reference_tables            # rewrite the references
    python -m tests.reference.make_reference_tables --check    # compare the current code against them
    python -m tests.reference.make_reference_tables mnist_roar # only some experiments

Run from the repository root (a module of the ``tests`` package: it imports ``tests.fixtures`` and
``experiments`` by absolute name, with the root on ``sys.path`` as ``python -m`` puts it there).

Runs every experiment of ``configs/experiment`` at ``scale=smoke`` (seed 1, CPU) on the tiny data sets
the tests build (``tests.fixtures.write_tiny_data``, the tests' ``tiny_data_dir``), and copies each run's tidy
CSVs to ``tests/reference/smoke/<experiment>/``. The files committed there were written by the code
*before* the restructuring of issue 14 (commit 222ee75); a test (``tests/e2e/test_smoke.py``) reruns every
experiment with the current code and requires the same tables, so a refactoring that changes a number fails. Regenerate only when a change is *meant* to change what an experiment
computes, and say so in the commit.

The tables hold exact floats, which depend on the CPU's float kernels: ``smoke/FINGERPRINT`` records those of the
machine that wrote them (:func:`kernel_fingerprint`), and the test compares tables only on a machine with the same
fingerprint (elsewhere it checks everything else and skips the exact comparison, saying why). The tables were
rewritten on 2026-12-02 on an AVX-512 machine by code whose tables equalled the earlier set on the machine that
wrote it (commit c8e39a6, CI green there); on this machine 6 experiments' tables differed from that set.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "smoke"
#: intra-op threads of the reference runs: float sums, and so the tables, depend on the thread count
THREADS = 2
#: the kernel fingerprint (:func:`kernel_fingerprint`) of the machine that wrote the tables
FINGERPRINT = OUT / "FINGERPRINT"


def kernel_fingerprint() -> str:
    """A hash of what this CPU's float kernels (oneDNN convolutions, BLAS, the LSTM) return for fixed inputs at
    ``THREADS`` threads. The tables depend on the exact floats, and those on the instruction set and the kernels
    torch picks for it: two machines with the same fingerprint write the same tables, others may not (an AVX-512
    and an AVX2 machine differ in the last bits, which tiny smoke models turn into other rankings)."""
    import hashlib

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 3, 32, 32, generator=g, requires_grad=True)
        conv = torch.randn(16, 3, 4, 4, generator=g, requires_grad=True)
        deconv = torch.randn(16, 1, 4, 4, generator=g, requires_grad=True)
        h = torch.nn.functional.conv2d(x, conv, stride=2, padding=1).relu()
        y = torch.nn.functional.conv_transpose2d(h, deconv, stride=2, padding=1)
        w = torch.randn(1024, 64, generator=g, requires_grad=True)
        z = y.flatten(1) @ w
        lstm = torch.nn.LSTM(4, 8, batch_first=True)
        with torch.no_grad():
            for param in lstm.parameters():
                param.copy_(torch.randn(param.shape, generator=g))
        out, _ = lstm(z.view(8, 16, 4))
        (out.square().sum() + z.square().sum()).backward()
        v = torch.randn(100_003, generator=g)  # ATen's vectorised reductions and elementwise kernels
        reductions = torch.stack([v.sum(), v.exp().sum(), torch.logsumexp(v, 0), v.sigmoid().mean(), v.norm()])
        digest = hashlib.sha256()
        for tensor in (y, z, out, x.grad, conv.grad, deconv.grad, w.grad, reductions):
            digest.update(tensor.detach().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]
    finally:
        torch.set_num_threads(before)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="compare with the committed tables, write nothing")
    parser.add_argument("experiments", nargs="*", help="default: every experiment")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    from hydra import compose, initialize_config_dir

    torch.set_num_threads(THREADS)

    import pandas as pd

    from experiments.runner import run
    from tests.fixtures import write_tiny_data

    experiments = args.experiments or sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tiny_data(tmp / "data")
        for experiment in experiments:
            with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
                cfg = compose("run", overrides=[
                    f"paths.data_dir={data}", f"paths.cache_dir={tmp / 'cache' / experiment}", f"paths.output_dir={tmp / 'out'}",
                    "dataset.download=false", f"experiment={experiment}", "scale=smoke",
                ])
            run_dir = tmp / "runs" / experiment
            run(cfg, run_dir)
            if args.check:
                for csv in sorted((OUT / experiment).glob("*.csv")):
                    try:
                        pd.testing.assert_frame_equal(pd.read_csv(run_dir / csv.name), pd.read_csv(csv))
                    except (AssertionError, FileNotFoundError) as error:
                        failures.append(f"{experiment}/{csv.name}: {error}")
                print(experiment, "checked")
                continue
            target = OUT / experiment
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for csv in sorted(p for p in run_dir.glob("*.csv") if p.name != "training_history.csv"):
                shutil.copy(csv, target / csv.name)
            print(experiment, sorted(p.name for p in target.iterdir()))
    if not args.check:
        FINGERPRINT.write_text(kernel_fingerprint() + "\n")
    if failures:
        raise SystemExit("tables differ from the references:\n" + "\n".join(failures))
    if args.check:
        print("every table equals its reference")


if __name__ == "__main__":
    main()
