"""Write the smoke-scale reference tables that tests compare every experiment against.

    python tests/reference/make_reference_tables.py            # rewrite the references
    python tests/reference/make_reference_tables.py --check    # compare the current code against them

Runs every experiment of ``configs/experiment`` at ``scale=smoke`` (seed 1, CPU) on the tiny data sets
the tests build, and copies each run's tidy CSVs to ``tests/reference/smoke/<experiment>/``. The files
committed there were written by the code *before* the restructuring of issue 14 (commit 222ee75); a
test reruns every experiment with the current code and requires the same tables, so a refactoring
that changes a number fails. Regenerate only when a change is *meant* to change what an experiment
computes, and say so in the commit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = HERE / "smoke"
#: intra-op threads of the reference runs: float sums, and so the tables, depend on the thread count
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="compare with the committed tables, write nothing")
    parser.add_argument("experiments", nargs="*", help="default: every experiment")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    from hydra import compose, initialize_config_dir

    torch.set_num_threads(THREADS)

    from cifar_fixture import write_cifar_npz
    from dsprites_fixture import write_dsprites_npz
    from ecg_fixture import write_ecg5000
    from experiments.runner import run
    from mnist_fixture import write_mnist_idx

    import pandas as pd

    experiments = args.experiments or sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_mnist_idx(tmp / "data", n_train=400, n_test=200, seed=0)
        write_ecg5000(data, n_train=40, n_test=60, fmt="tsv", seed=0)
        write_cifar_npz(data, n_train=100, n_test=50, seed=0)
        write_dsprites_npz(data, n=160, form="subset", seed=0)
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
            for csv in sorted(run_dir.glob("*.csv")):
                shutil.copy(csv, target / csv.name)
            print(experiment, sorted(p.name for p in target.iterdir()))
    if failures:
        raise SystemExit("tables differ from the references:\n" + "\n".join(failures))
    if args.check:
        print("every table equals its reference")


if __name__ == "__main__":
    main()
