"""The pretext study: aggregation across runs (broken runs skipped, no stale rows) and the runner's check of
the models' pretext tags."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from experiments.runner import run
from experiments.studies import pretext as pretext_study
from labelfree.protocols.pretext import TABLE

TASKS = ("reconstruction", "denoising", "inpainting", "classification")


def _fake_run(folder: Path, seed: int, feature: float, example: float, finished: bool = True) -> None:
    """A run directory with a pretext table: every off-diagonal pair at ``feature`` / ``example``."""
    rows = []
    for kind, method, value in (("features", "gradient_shap", feature), ("examples", "dknn", example)):
        for metric in ("pearson", "spearman"):
            for a in TASKS:
                for b in TASKS:
                    rows.append({"experiment": "mnist_pretext", "dataset": "mnist", "model": "mnist_conv", "seed": seed,
                                 "kind": kind, "method": method, "task_a": a, "task_b": b, "metric": metric,
                                 "level": float("nan"), "value": 1.0 if a == b else value, "n": 100})
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed: {seed}\n")
    pd.DataFrame(rows).to_csv(folder / f"{TABLE}.csv", index=False)
    for name in pretext_study.RUN_FIGURES:
        (folder / f"{name}.png").write_bytes(f"png of seed {seed}".encode())
    if finished:
        (folder / "summary.json").write_text(json.dumps({"experiment": "mnist_pretext", "study": "pretext", "scale": "quick", "seed": seed}))


def test_aggregation_of_two_runs_skips_a_broken_one_and_never_keeps_stale_rows(tmp_path):
    runs, results = tmp_path / "sweep", tmp_path / "results"
    out = results / "mnist_pretext" / "quick"
    _fake_run(runs / "seed=1", 1, 0.5, 0.1)
    _fake_run(runs / "seed=2", 2, 0.7, 0.3)
    _fake_run(runs / "seed=3", 3, 9.0, 9.0, finished=False)  # killed: no summary.json
    pretext_study.aggregate([runs], results, "quick")

    numbers = pd.read_csv(out / "pretext_features_gradient_shap_pearson.csv").set_index(["task_a", "task_b"])
    assert len(numbers) == 16 and numbers.loc[("reconstruction", "classification"), "mean"] == pytest.approx(0.6)
    assert numbers.loc[("reconstruction", "classification"), "std"] == pytest.approx(0.1414, abs=1e-4)
    markdown = (out / "pretext_features_gradient_shap_pearson.md").read_text()
    assert "| reconstruction | 1.0 +/- 0.0 |" in markdown and "0.60 +/- 0.14" in markdown
    assert (out / "pretext_features_gradient_shap_pearson.tex").exists()
    pairs = pd.read_csv(out / "pretext_pairs.csv")
    assert len(pairs) == 6 * 4 and set(pairs["n"]) == {2}  # 6 pairs x (2 kinds x 2 metrics), numbers
    shown = (out / "pretext_pairs.md").read_text()
    assert "| reconstruction / denoising |" in shown and "0.20 +/- 0.14" in shown
    stats = pd.read_csv(out / f"{TABLE}_mean_std.csv")
    assert set(stats["n"]) == {2}
    assert sorted(pd.read_csv(out / f"{TABLE}_runs.csv")["seed"].unique()) == [1, 2]
    for stem in ("pretext_correlations", "pretext_saliency_seed1", "pretext_top_examples_seed1"):
        assert (out / f"{stem}.png").exists()
    assert (out / "pretext_saliency_seed1.png").read_bytes() == b"png of seed 1"
    assert not list(out.glob(".*.tmp"))

    # seed 1 breaks, seed 4 arrives: the new tables hold seeds 2 and 4 only, seed 1's figures are gone
    (runs / "seed=1" / "summary.json").write_text("{broken")
    _fake_run(runs / "seed=4", 4, 0.9, 0.5)
    pretext_study.aggregate([runs], results, "quick")
    assert sorted(pd.read_csv(out / f"{TABLE}_runs.csv")["seed"].unique()) == [2, 4]
    numbers = pd.read_csv(out / "pretext_features_gradient_shap_pearson.csv").set_index(["task_a", "task_b"])
    assert numbers.loc[("reconstruction", "classification"), "mean"] == pytest.approx(0.8)
    assert not (out / "pretext_saliency_seed1.png").exists() and (out / "pretext_saliency_seed2.png").exists()


def test_aggregation_without_finished_runs_writes_nothing(tmp_path):
    _fake_run(tmp_path / "seed=1", 1, 0.5, 0.1, finished=False)
    assert pretext_study.aggregate([tmp_path], tmp_path / "out", "quick") == []
    assert not (tmp_path / "out").exists()



def test_models_with_the_same_pretext_tag_are_refused(compose_config, tmp_path):
    cfg = compose_config("experiment=mnist_pretext", "scale=smoke", "model@protocol.models.denoising=inpainting_ae")
    with pytest.raises(ValueError, match="distinct `pretext` tags"):
        run(cfg, tmp_path / "run")
