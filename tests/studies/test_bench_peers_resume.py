"""The peer benchmark keeps every finished piece, so a run stopped part-way resumes where it stopped (no peer needs
to be installed: the pieces are replaced by a fake that counts its calls)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments import benchmark_peers


class _Stop(Exception):
    pass


def _fake_runs(monkeypatch: pytest.MonkeyPatch, stop_after: int | None) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    def run_piece(job: dict[str, Any]) -> dict[str, Any]:
        if stop_after is not None and len(calls) == stop_after:
            raise _Stop
        calls.append((job["piece"], job["package"]))
        seed = len(job["piece"]) + 7 * len(calls)
        return {"seconds": 1.0 + len(calls), "scores": np.random.default_rng(seed).random((2, 3)),
                "peak_rss_gib": None}

    monkeypatch.setattr(benchmark_peers, "run_piece", run_piece)
    monkeypatch.setattr(benchmark_peers, "peer_versions",
                        lambda: {"captum": "0", "dattri": "0", "pydvl": None})
    monkeypatch.setattr(benchmark_peers, "exact_series",
                        lambda w: dataclasses.replace(w, exact_lambda=0.5, exact_scale=2.0, exact_arnoldi_rank=2))
    return calls


def test_a_stopped_peer_run_resumes_at_the_piece_it_was_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    workload = benchmark_peers.PeerWorkload.from_config(tiny=True)
    out = tmp_path / "peers.md"
    calls = _fake_runs(monkeypatch, stop_after=3)
    with pytest.raises(_Stop):
        benchmark_peers.write_peers(workload, threads=1, isolate=False, out=out)
    assert len(calls) == 3
    partial = out.read_text()
    assert partial.startswith("**Partial table") and "| TracIn | dattri |" in partial  # the rows so far are written
    assert len(list((tmp_path / "peers.md.parts").glob("*.pt"))) == 3

    resumed = _fake_runs(monkeypatch, stop_after=None)
    benchmark_peers.write_peers(workload, threads=1, isolate=False, out=out, resume=True)
    assert ("tracin", "labelfree") not in resumed and len(resumed) > 0  # the first three pieces were not rerun
    table = out.read_text()
    assert not table.startswith("**Partial") and "| TracIn | labelfree | 2 |" in table  # the kept time

    # without --resume the kept pieces are dropped and every piece runs again
    fresh = _fake_runs(monkeypatch, stop_after=None)
    benchmark_peers.write_peers(workload, threads=1, isolate=False, out=out)
    assert fresh[:3] == calls and len(fresh) == len(calls) + len(resumed)
    # a changed workload never reuses a kept piece
    again = _fake_runs(monkeypatch, stop_after=None)
    benchmark_peers.write_peers(dataclasses.replace(workload, seed=workload.seed + 1), threads=1, isolate=False,
                                out=out, resume=True)
    assert len(again) == len(fresh)
