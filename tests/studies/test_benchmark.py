"""The benchmark measures memory with the bounds each model's experiment configures (no lfxai needed)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_explainers  # noqa: E402


def test_memory_options_follow_the_experiment_configs() -> None:
    lstm = bench_explainers.memory_options("ecg_lstm_ae", "influence_functions")
    assert lstm == {"chunk_size": 32, "vector_chunk_size": 4, "hvp_chunk_size": 50, "test_chunk_size": 256}
    assert bench_explainers.memory_options("ecg_lstm_ae", "tracin") == {"chunk_size": 32}
    mnist = bench_explainers.memory_options("mnist_ae", "influence_functions")
    assert mnist["chunk_size"] == 256 and mnist["hvp_chunk_size"] is None
    assert set(bench_explainers.MEMORY_MODELS) == {"mnist_ae", "ecg_lstm_ae", "dsprites_beta_vae"}
