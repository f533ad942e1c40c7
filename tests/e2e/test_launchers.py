"""Seed sweeps through Hydra's launchers: joblib (parallel processes) and submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests import ROOT


def _sweep(launcher: str, data_dir: Path, tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "LABELFREE_CACHE_DIR": str(tmp_path / "cache")}
    command = [
        sys.executable, "run.py", "-m", f"hydra/launcher={launcher}", "experiment=mnist_consistency", "scale=smoke",
        "seed=1,2", f"paths.data_dir={data_dir}", "dataset.download=false", f"hydra.sweep.dir={sweep}",
        'hydra.sweep.subdir="seed=${seed}"',
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def _check_two_seeds(sweep: Path) -> None:
    seeds = set()
    for seed in (1, 2):
        run_dir = sweep / f"seed={seed}"
        seeds.add(json.loads((run_dir / "summary.json").read_text())["seed"])
        assert set(pd.read_csv(run_dir / "consistency_features.csv")["seed"]) == {seed}
    assert seeds == {1, 2}


def test_joblib_launcher_runs_a_two_seed_sweep(tiny_data_dir, tmp_path):
    _check_two_seeds(_sweep("parallel", tiny_data_dir, tmp_path))


def test_submitit_local_launcher_runs_a_two_seed_sweep(tiny_data_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _check_two_seeds(_sweep("submitit_local", tiny_data_dir, tmp_path))


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done = subprocess.run(
        [sys.executable, "run.py", "hydra/launcher=slurm", "--cfg", "hydra", "--package", "hydra.launcher"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # no GPU unless asked; a timed-out job is requeued and resumes from checkpoints/last.pt
    assert "SlurmLauncher" in done.stdout and "gpus_per_node: null" in done.stdout
    assert "max_num_timeout: 3" in done.stdout
    asked = subprocess.run(
        [sys.executable, "run.py", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1", "--cfg", "hydra",
         "--package", "hydra.launcher"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "gpus_per_node: 1" in asked.stdout
