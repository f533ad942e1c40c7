"""The claim report on hand-built result tables: some claims pass, some fail, missing ones are 'not run'."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = _load("report")


def _features(shift_ig: float, shift_random: float) -> pd.DataFrame:
    rows = []
    for seed in (1, 2):
        for p in (5.0, 10.0, 20.0):
            for method, value in (("integrated_gradients", shift_ig), ("gradient_shap", shift_ig),
                                  ("random_features", shift_random)):
                rows.append({"method": method, "metric": "representation_shift", "level": p, "value": value * p,
                             "seed": seed})
    return pd.DataFrame(rows)


def _examples(most: float, least: float) -> pd.DataFrame:
    return pd.DataFrame([
        {"method": m, "metric": metric, "level": 5.0, "value": v, "seed": 1}
        for m in ("dknn", "simplex") for metric, v in (("similarity_most", most), ("similarity_least", least))
    ])


def test_feature_claim_passes_and_fails():
    assert report.feature_consistency(_features(2.0, 1.0), "mnist").holds is True
    failed = report.feature_consistency(_features(1.0, 2.0), "cifar10")
    assert failed.holds is False and "0.5x random" in failed.measured
    assert report.feature_consistency(None, "mnist").holds is None


def test_example_claim_passes_and_fails():
    assert report.example_consistency(_examples(0.9, 0.1), "mnist").holds is True
    assert report.example_consistency(_examples(0.1, 0.2), "ecg5000").holds is False


def test_report_on_a_results_folder(tmp_path):
    folder = tmp_path / "mnist_consistency" / "quick"
    folder.mkdir(parents=True)
    _features(2.0, 1.0).to_csv(folder / "consistency_features_runs.csv", index=False)
    _examples(0.1, 0.3).to_csv(folder / "consistency_examples_runs.csv", index=False)
    claims = report.collect_claims(tmp_path, "quick")
    verdicts = {c.claim: c.verdict for c in claims}
    assert verdicts["Feature consistency, MNIST"] == "holds"
    assert verdicts["Example consistency, MNIST"] == "does not hold"
    assert verdicts["ROAR, MNIST"] == "not run"
    text = report.render(claims, "quick")
    assert "1 of 2 checked claims hold" in text and "| Feature consistency, MNIST |" in text


def _pretext(feature: float, example: float) -> pd.DataFrame:
    tasks = ("classification", "denoising", "reconstruction")
    rows = []
    for kind, method, value in (("features", "gradient_shap", feature), ("examples", "dknn", example)):
        for a in tasks:
            for b in tasks:
                rows.append({"kind": kind, "method": method, "metric": "pearson", "task_a": a, "task_b": b,
                             "mean": 1.0 if a == b else value, "std": 0.0, "n": 2})
    return pd.DataFrame(rows)


def test_pretext_claim_passes_and_fails():
    assert report.pretext_claim(_pretext(0.5, 0.1)).holds is True
    failed = report.pretext_claim(_pretext(0.2, 0.3))
    assert failed.holds is False and "0.20 vs 0.30" in failed.measured
    assert report.pretext_claim(None).holds is None


def _trend(falls: bool) -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "mnist", "loss": "beta_vae", "metric": "pearson", "beta=1": 0.6, "beta=5": 0.5 if falls else 0.6,
         "beta=10": 0.4 if falls else 0.7, "slope": -0.02 if falls else 0.01, "falls": falls},
        {"dataset": "mnist", "loss": "tc_vae", "metric": "pearson", "beta=1": 0.6, "beta=5": 0.6, "beta=10": 0.6,
         "slope": 0.0, "falls": False},
    ])


def test_vae_claim_passes_and_fails():
    assert report.vae_claim(_trend(False), "mnist").holds is True
    assert report.vae_claim(_trend(True), "mnist").holds is False
    assert report.vae_claim(_trend(False), "dsprites").holds is None
