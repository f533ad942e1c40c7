"""Aggregation of run directories: complete runs stack, broken ones are reported and skipped."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.aggregation import collect, format_mean_std, mean_std, to_latex, to_markdown, write_table


def _run(folder, seed, value, finished=True, table="t"):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: %d\n" % seed)
    pd.DataFrame({"experiment": "e", "method": ["a", "b"], "level": [5, 5], "value": [value, 2 * value],
                  "seed": [seed, seed]}).to_csv(
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


def _finished_run(folder, seed, value, finished_at, config_extra=""):
    _run(folder, seed, value)
    (folder / "config.yaml").write_text(f"seed: {seed}\nexperiment: e\nmodel: {{lr: 1}}\n{config_extra}")
    (folder / "summary.json").write_text(json.dumps({"experiment": "e", "seed": seed, "finished_at": finished_at,
                                                     "device": "cpu"}))


def test_runs_with_different_overrides_are_refused_not_averaged(tmp_path):
    from experiments.aggregation import check_one_config

    _finished_run(tmp_path / "a" / "s1", 1, 1.0, "2026-01-01T00:00:00")
    _finished_run(tmp_path / "b" / "s2", 2, 3e21, "2026-01-01T00:00:00", "trainer: {lr: 100.0}\n")
    found = collect([tmp_path], "t")
    assert found.frame["config_id"].nunique() == 2
    with pytest.raises(ValueError, match="differ in more than the seed.*trainer.lr"):
        check_one_config(found, ["experiment"], "t")


def test_a_seed_measured_twice_counts_once_the_latest_run_kept(tmp_path):
    _finished_run(tmp_path / "old" / "s1", 1, 1.0, "2026-01-01T00:00:00")
    _finished_run(tmp_path / "new" / "s1", 1, 5.0, "2026-02-01T00:00:00")
    _finished_run(tmp_path / "new" / "s2", 2, 3.0, "2026-02-01T00:00:00")
    found = collect([tmp_path], "t")
    assert sorted(found.frame["seed"]) == [1, 1, 2, 2] and found.frame["run_dir"].nunique() == 2
    assert found.frame[found.frame["seed"] == 1]["value"].iloc[0] == 5.0
    assert len(found.duplicates) == 1 and found.duplicates[0][0].endswith("old/s1")
    stats = mean_std(found.frame, ["method", "level"])
    assert stats[stats.method == "a"]["n"].iloc[0] == 2  # seeds, not rows


def test_seeds_a_multirun_asked_for_but_did_not_produce_are_listed(tmp_path):
    from experiments.aggregation import expected_seeds

    sweep = tmp_path / "sweep"
    _finished_run(sweep / "seed=1", 1, 1.0, "2026-01-01T00:00:00")
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - experiment=e\n    - scale=quick\n    - seed=1,2,3\n")
    expected = expected_seeds([tmp_path], "quick")
    assert expected == {"e": [1, 2, 3]}
    record = collect([tmp_path], "t").record(expected)
    assert record["missing_seeds"] == {"e": [2, 3]} and record["seeds"] == {"e": [1]}


def test_keep_copies_small_outputs_of_finished_runs_only(tmp_path):
    from experiments.keep import keep

    runs = tmp_path / "outputs"
    _finished_run(runs / "e" / "quick" / "seed=1", 1, 1.0, "2026-01-01T00:00:00")
    _run(runs / "e" / "quick" / "seed=2", 2, 1.0, finished=False)
    (runs / "e" / "quick" / "seed=1" / "model.pt").write_bytes(b"weights")
    (runs / "e" / "quick" / "multirun.yaml").write_text("hydra: {}\n")
    kept = tmp_path / "results" / "runs"
    written = keep(runs, kept)
    names = {p.relative_to(kept).as_posix() for p in written}
    assert names == {"e/quick/multirun.yaml", "e/quick/seed=1/t.csv", "e/quick/seed=1/config.yaml",
                     "e/quick/seed=1/summary.json"}
    assert keep(runs, kept) == []  # nothing changed, nothing copied
    assert sorted(collect([kept], "t").frame["seed"].unique()) == [1]


def test_redraw_rewrites_tables_and_figures_from_kept_rows_only(tmp_path):
    from experiments.aggregate import redraw

    folder = tmp_path / "results" / "mnist_roar" / "quick"
    folder.mkdir(parents=True)
    rows = [{"experiment": "mnist_roar", "dataset": "mnist", "model": "ae", "seed": s, "method": m, "level": k,
             "metric": "test_loss", "value": v + 0.01 * s, "std": 0.1, "n": 10}
            for s in (1, 2) for m, v in (("gradient_shap", 0.09), ("random_features", 0.05)) for k in (10.0, 20.0)]
    pd.DataFrame(rows).to_csv(folder / "roar_runs.csv", index=False)
    written = {p.name for p in redraw(tmp_path / "results", "quick", ["roar"])}
    assert {"roar_table.csv", "roar_table.md", "roar_table.tex", "roar.png", "roar.pdf"} <= written
    table = pd.read_csv(folder / "roar_table.csv")
    assert table["mean"].notna().all() and set(table["n"]) == {2} and set(table["seed_list"]) == {"1, 2"}


def test_how_examples_were_sharded_does_not_change_a_runs_config_id():
    from experiments.aggregation import _neutral, config_id

    base = {"protocol.examples.percents": [5, 10], "trainer.epochs": 3}
    sharded = {**base, "protocol.examples.shard.count": 2, "protocol.examples.shard.index": 1,
               "protocol.examples.shard.dir": "/tmp/x"}
    kept = {k: v for k, v in sharded.items() if not _neutral(k)}
    assert config_id(kept, "cpu") == config_id(base, "cpu")
    assert not _neutral("protocol.examples.percents")
