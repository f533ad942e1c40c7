"""The benchmark script runs on a tiny workload and its agreement checks pass (needs lfxai: skipped otherwise)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import ROOT

pytest.importorskip("lfxai", reason="lfxai (the bench extra) is not installed")


def test_bench_script_on_a_tiny_workload(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "bench.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_explainers.py"), "--tiny", "--threads", "1", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = out.read_text()
    for piece in ("TracIn", "Influence functions", "SimplEx", "DKNN", "Masks", "Similarity rates"):
        assert f"| {piece}" in table
    assert "FAIL" not in table and table.count(" - pass") == 7
