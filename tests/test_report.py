"""The claim report on hand-built result tables: some claims pass, some fail, missing ones are 'not run'."""

from __future__ import annotations

import pandas as pd

from experiments import report
from experiments.studies import consistency, disvae, pretext

RULES = report.load_rules()


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


def _node(check: str) -> dict:
    return {**RULES["consistency"][check], "datasets": RULES["consistency"]["datasets"]}


def test_feature_claim_passes_and_fails():
    assert consistency.feature_consistency(_features(2.0, 1.0), "mnist", _node("features")).holds is True
    failed = consistency.feature_consistency(_features(1.0, 2.0), "cifar10", _node("features"))
    assert failed.holds is False and "0.5x random" in failed.measured
    assert consistency.feature_consistency(None, "mnist", _node("features")).holds is None


def test_example_claim_passes_and_fails():
    assert consistency.example_consistency(_examples(0.9, 0.1), "mnist", _node("examples")).holds is True
    assert consistency.example_consistency(_examples(0.1, 0.2), "ecg5000", _node("examples")).holds is False


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
    assert pretext.pretext_claim(_pretext(0.5, 0.1), RULES["pretext"]).holds is True
    failed = pretext.pretext_claim(_pretext(0.2, 0.3), RULES["pretext"])
    assert failed.holds is False and "0.20 vs 0.30" in failed.measured
    assert pretext.pretext_claim(None, RULES["pretext"]).holds is None


def _trend(falls: bool) -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "mnist", "loss": "beta_vae", "metric": "pearson", "beta=1": 0.6, "beta=5": 0.5 if falls else 0.6,
         "beta=10": 0.4 if falls else 0.7, "slope": -0.02 if falls else 0.01, "falls": falls},
        {"dataset": "mnist", "loss": "tc_vae", "metric": "pearson", "beta=1": 0.6, "beta=5": 0.6, "beta=10": 0.6,
         "slope": 0.0, "falls": False},
    ])


def test_vae_claim_passes_and_fails():
    assert disvae.vae_claim(_trend(False), "mnist", RULES["disvae"]).holds is True
    assert disvae.vae_claim(_trend(True), "mnist", RULES["disvae"]).holds is False
    assert disvae.vae_claim(_trend(False), "dsprites", RULES["disvae"]).holds is None
