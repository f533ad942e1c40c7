"""The worked example (``examples/own_encoder.py``) explains a user's own encoder end to end on tiny data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests import ROOT


def test_worked_example_runs_on_tiny_data(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "own_encoder"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "own_encoder.py"), "--tiny", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "own_encoder.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step3.pt", "step6.pt"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["similarity_rates"]) == {"tracin", "influence_functions", "simplex", "dknn"}
    for rates in results["similarity_rates"].values():
        assert 0 <= rates["least"] <= 1 and 0 <= rates["most"] <= 1
    shifts = results["representation_shift"]
    assert set(shifts) == {"10%", "50%"} and all(math.isfinite(v) for p in shifts.values() for v in p.values())
    assert math.isfinite(results["series_shift_10%"]) and results["series_shift_10%"] > 0
