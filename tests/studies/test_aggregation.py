"""Aggregation of run directories: complete runs stack, broken ones are reported and skipped."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.aggregation import collect, format_mean_std, mean_std, to_latex, to_markdown, write_table


def _run(folder, seed, value, finished=True, table="t"):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: %d\n" % seed)
    pd.DataFrame({"method": ["a", "b"], "level": [5, 5], "value": [value, 2 * value], "seed": [seed, seed]}).to_csv(
        folder / f"{table}.csv", index=False
    )
    if finished:
        (folder / "summary.json").write_text(json.dumps({"experiment": "e", "seed": seed}))


def test_collect_skips_unfinished_and_broken_runs(tmp_path):
    _run(tmp_path / "s1", 1, 1.0)
    _run(tmp_path / "s2", 2, 3.0)
    _run(tmp_path / "s3", 3, 100.0, finished=False)
    _run(tmp_path / "s4", 4, 100.0)
    (tmp_path / "s4" / "summary.json").write_text("{broken")
    result = collect([tmp_path], "t")
    assert sorted(result.frame["seed"].unique()) == [1, 2]
    assert {p.name for p, _ in result.skipped} == {"s3", "s4"}
    stats = mean_std(result.frame, ["method", "level"])
    a = stats[stats.method == "a"].iloc[0]
    assert a["mean"] == pytest.approx(2.0) and a["std"] == pytest.approx(2**0.5) and a["n"] == 2


def test_collect_filters_by_experiment_and_missing_root(tmp_path):
    _run(tmp_path / "s1", 1, 1.0)
    assert collect([tmp_path], "t", experiment="other").frame.empty
    with pytest.raises(FileNotFoundError, match="No such run directory"):
        collect([tmp_path / "nope"], "t")


def test_write_table_is_idempotent(tmp_path):
    frame = pd.DataFrame({"pair": ["a_b"], "pearson": [format_mean_std(0.5, 0.1)], "x": [0.12345]})
    paths = write_table(frame, tmp_path / "table")
    first = [p.read_bytes() for p in paths]
    write_table(frame, tmp_path / "table")
    assert [p.read_bytes() for p in paths] == first
    assert "| pair | pearson | x |" in to_markdown(frame)
    assert r"a\_b & 0.50 $\pm$ 0.10 & 0.123 \\" in to_latex(frame)
