"""scripts/bench_ecg_check.py on a tiny workload: every explainer of the ECG5000 example check runs with the
experiment's memory bounds and the table names each one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # four fresh processes, each importing torch: about 30 s
def test_ecg_check_bench_times_every_explainer(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_ecg_check", ROOT / "scripts" / "bench_ecg_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ecg.md"
    table = module.main(["--checkpoints", "2", "--n-train", "6", "--n-test", "4", "--arnoldi-steps", "3",
                         "--threads", "1", "--out", str(out)])
    assert out.read_text() == table
    for row in ("| TracIn, 2 checkpoints | chunk_size=128 |", "| influence functions, Arnoldi (3 steps, depth 100) |",
                "| SimplEx |", "| DKNN |", "| **all four** |"):
        assert row in table, row
