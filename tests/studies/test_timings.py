"""The wall-time table: measured parts from summary.json, one row per run found twice, estimates only for the
runs no finished run has measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.timings import (
    collect_timings,
    load_estimates,
    readme_table,
    sync_readme,
    timing_table,
    write_timings,
)
from tests import ROOT


def _run(root: Path, relative: str, seconds: float, finished: str, cached: bool = False, scale: str = "paper",
         experiment: str = "mnist_consistency") -> None:
    folder = root / experiment / scale / relative
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({
        "experiment": experiment, "scale": scale, "seed": int(relative.rsplit("=", 1)[-1]), "device": "cpu",
        "threads": 2, "wall_seconds": seconds, "model_cached": cached, "finished_at": finished}))


def test_measured_parts_and_duplicates(tmp_path: Path) -> None:
    outputs, kept = tmp_path / "outputs", tmp_path / "kept"
    _run(outputs, "features/seed=1", 600.0, "2026-12-01T10:00:00+00:00")
    _run(kept, "features/seed=1", 540.0, "2026-11-30T10:00:00+00:00")  # the same run kept earlier: counts once
    _run(outputs, "features/seed=2", 1200.0, "2026-12-01T11:00:00+00:00")
    _run(outputs, "examples/seed=1", 60.0, "2026-12-01T12:00:00+00:00", cached=True)
    _run(outputs, "features/seed=3", 5.0, "2026-12-01T12:00:00+00:00", scale="quick")  # another scale
    frame = collect_timings([outputs, kept], "paper")
    assert sorted(frame["run"]) == ["seed=1", "seed=1", "seed=2"]
    features = frame[frame["part"] == "features"].set_index("run")["wall_seconds"]
    assert features["seed=1"] == 600.0  # the one that finished last
    table = timing_table(frame, {}).set_index("part")
    assert table.loc["mnist_consistency/features", "runs"] == 2
    assert table.loc["mnist_consistency/features", "minutes per run (median)"] == "15.0"
    assert table.loc["mnist_consistency/features", "total hours"] == "0.50"
    assert table.loc["mnist_consistency/examples", "source"] == "measured, models from the cache"


def test_estimates_fill_the_runs_not_measured_yet(tmp_path: Path) -> None:
    _run(tmp_path, "features/seed=1", 600.0, "2026-12-01T10:00:00+00:00")
    _run(tmp_path, "examples/seed=1", 600.0, "2026-12-01T10:00:00+00:00")
    _run(tmp_path, "examples/seed=2", 660.0, "2026-12-01T11:00:00+00:00")
    estimates = {"mnist_consistency/features": {"runs": 3, "minutes_per_run": 99, "basis": "guess"},
                 "mnist_consistency/examples": {"runs": 2, "minutes_per_run": 50, "basis": "guess"},
                 "mnist_roar/sweep": {"runs": 1, "minutes_per_run": 180, "basis": "scaled from quick"}}
    table = timing_table(collect_timings([tmp_path], "paper"), estimates)
    features = table[table["part"] == "mnist_consistency/features"]
    assert list(features["source"]) == ["measured", "estimate for the 2 of 3 runs not measured yet (guess)"]
    assert list(features["runs"]) == [1, 2] and list(features["total hours"]) == ["0.17", "~3.3"]
    examples = table[table["part"] == "mnist_consistency/examples"]  # every planned run measured: no estimate
    assert list(examples["source"]) == ["measured"] and examples["runs"].item() == 2
    roar = table[table["part"] == "mnist_roar/sweep"]
    assert roar["source"].item() == "estimate (scaled from quick)" and roar["total hours"].item() == "~3.0"
    out = tmp_path / "TIMES-paper.md"
    write_timings([tmp_path], "paper", out)
    assert "mnist_consistency/features" in out.read_text()


def test_estimates_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "timings.yaml"
    path.write_text("paper:\n  a/b: {runs: 1, basis: x}\n")
    with pytest.raises(ValueError, match="minutes_per_run"):
        load_estimates("paper", path)
    assert load_estimates("quick", path) == {}


def test_the_project_estimates_parse() -> None:
    estimates = load_estimates("paper")
    assert "mnist_roar/sweep" in estimates and all(v["minutes_per_run"] > 0 for v in estimates.values())


def test_resumed_training_is_listed_apart(tmp_path: Path) -> None:
    _run(tmp_path, "features/seed=1", 600.0, "2026-12-01T10:00:00+00:00")
    folder = tmp_path / "mnist_consistency" / "paper" / "features" / "seed=2"
    _run(tmp_path, "features/seed=2", 30.0, "2026-12-01T11:00:00+00:00")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "training_resumed": True}))
    table = timing_table(collect_timings([tmp_path], "paper"), {})
    assert sorted(table["source"]) == ["measured", "measured, training resumed (earlier epochs not counted)"]
    assert table[table["source"] == "measured"]["runs"].item() == 1


def test_the_readme_table_is_copied_between_its_markers(tmp_path: Path) -> None:
    times = tmp_path / "TIMES-paper.md"
    times.write_text("# Wall times\n\nintro\n\n| part | runs |\n|---|---|\n| a/sweep | 3 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- times:paper -->\nold table\n<!-- /times:paper -->\nafter\n")
    assert sync_readme(readme, times, "paper")
    assert readme.read_text() == ("before\n<!-- times:paper -->\n\n| part | runs |\n|---|---|\n| a/sweep | 3 |\n\n"
                                  "<!-- /times:paper -->\nafter\n")
    assert not sync_readme(readme, times, "paper"), "a second copy changes nothing"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="times:paper"):
        sync_readme(readme, times, "paper")


def test_the_committed_readme_shows_the_committed_paper_times() -> None:
    text = (ROOT / "README.md").read_text()
    start, end = readme_table(text, "paper")
    times = (ROOT / "results" / "TIMES-paper.md").read_text()
    assert text[start:end].strip() == times[times.index("| part |"):].strip(), (
        "README's time table differs from results/TIMES-paper.md: python -m experiments.timings --runs outputs "
        "results/runs --scale paper --readme README.md")
