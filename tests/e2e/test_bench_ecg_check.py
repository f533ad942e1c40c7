"""scripts/bench_ecg_check.py on a tiny workload: every explainer of the ECG5000 example check runs with the
experiment's memory bounds and the table names each one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ROOT


@pytest.mark.slow  # four fresh processes, each importing torch: about 40 s
def test_ecg_check_bench_times_every_explainer(tmp_path: Path) -> None:
    out = tmp_path / "ecg.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_ecg_check.py"), "--checkpoints", "2", "--n-train", "6",
         "--n-test", "4", "--arnoldi-steps", "3", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.read_text()
    for row in ("| TracIn, 2 checkpoints | chunk_size=128 |", "| influence functions, Arnoldi (3 steps, depth 100) |",
                "| SimplEx |", "| DKNN |", "| **all four** |"):
        assert row in table, row
