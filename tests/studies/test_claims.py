"""Claim rules on hand-built tables: every rule holds, fails, is inconclusive, incomplete or not run."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from experiments import report
from experiments.claims import FAILS, HOLDS, INCOMPLETE, INCONCLUSIVE, NOT_RUN, Claim, Inequality, decide
from experiments.studies import consistency, disvae, pretext, roar

RULES = report.load_rules()
SEEDS = (1, 2, 3)


# -------------------------------------------------------------------------------------- the verdicts
def test_decide_reads_the_interval_across_seeds():
    assert decide([Inequality("a", {1: 1.0, 2: 1.1, 3: 0.9})], 0.95)[0] == HOLDS
    assert decide([Inequality("a", {1: -1.0, 2: -1.1, 3: -0.9})], 0.95)[0] == FAILS
    verdict, seeds, satisfied = decide([Inequality("a", {1: 1.0, 2: -0.9, 3: 0.2})], 0.95)
    assert (verdict, seeds, satisfied) == (INCONCLUSIVE, (1, 2, 3), 2)
    assert decide([Inequality("a", {1: 1.0})], 0.95)[0] == INCONCLUSIVE  # one seed and no spread: no interval
    assert decide([Inequality("a", {1: 1.0}, single_se=0.1)], 0.95)[0] == HOLDS
    assert decide([Inequality("a", {1: 1.0}, single_se=1.0)], 0.95)[0] == INCONCLUSIVE
    assert decide([Inequality("a", {1: 1.0, 2: 1.0})], 0.95, missing=["b"])[0] == INCOMPLETE
    assert decide([], 0.95)[0] == NOT_RUN
    # tiny but consistent differences are still a "holds": the interval, not the size, decides
    assert decide([Inequality("a", {1: 1e-3, 2: 1.1e-3, 3: 0.9e-3})], 0.95)[0] == HOLDS


def test_one_failing_inequality_fails_the_claim_and_per_seed_outcomes_are_counted():
    ok = Inequality("ok", {1: 1.0, 2: 1.2, 3: 0.8})
    bad = Inequality("bad", {1: -1.0, 2: -1.2, 3: 0.1})
    verdict, _, satisfied = decide([ok, bad], 0.95)
    assert verdict == INCONCLUSIVE and satisfied == 1
    worse = Inequality("worse", {1: -1.0, 2: -1.2, 3: -0.8})
    assert decide([ok, worse], 0.95)[0] == FAILS


# ---------------------------------------------------------------------------------- shared builders
def _level_rows(values: dict[str, float], levels, metric: str, seeds=SEEDS, noise: float = 0.0,
                std: float = 0.01, n: int = 100) -> pd.DataFrame:
    rows = []
    for seed in seeds:
        for level in levels:
            for method, value in values.items():
                jitter = noise * (1 if seed % 2 else -1) * (1 if method != "random_features" else 0)
                rows.append({"seed": seed, "method": method, "level": float(level), "metric": metric,
                             "value": value + jitter, "std": std, "n": n})
    return pd.DataFrame(rows)


def _features(ig: float, random: float, noise: float = 0.0, seeds=SEEDS, drop: str | None = None) -> pd.DataFrame:
    values = {"integrated_gradients": ig, "gradient_shap": ig, "saliency": ig, "random_features": random}
    values.pop(drop, None)
    frame = _level_rows(values, (5, 10, 20, 50, 80), "representation_shift", seeds, noise)
    full = _level_rows({m: 3.0 for m in values}, (100,), "representation_shift", seeds)
    return pd.concat([frame, full], ignore_index=True)


# ----------------------------------------------------------------------------------- the rules
def test_feature_consistency_every_verdict():
    check = consistency.feature_consistency
    held = check(_features(2.0, 1.0), "mnist", RULES["consistency"])
    assert held.verdict == HOLDS and held.per_seed == "3 of 3"
    assert "order" in held.measured and "equal at 100 %: yes" in held.measured
    assert check(_features(0.5, 1.0), "mnist", RULES["consistency"]).verdict == FAILS
    assert check(_features(1.1, 1.0, noise=1.0), "mnist", RULES["consistency"]).verdict == INCONCLUSIVE
    incomplete = check(_features(2.0, 1.0, drop="saliency"), "mnist", RULES["consistency"])
    assert incomplete.verdict == INCOMPLETE and "saliency" in incomplete.note
    assert check(None, "mnist", RULES["consistency"]).verdict == NOT_RUN


def test_equal_shift_at_full_masking_is_judged_within_each_seed():
    frame = _features(2.0, 1.0)
    full = frame["level"] == 100
    frame.loc[full, "value"] = 3.0 + frame.loc[full, "seed"]  # each seed's model shifts differently, methods equal
    assert "equal at 100 %: yes" in consistency.feature_consistency(frame, "mnist", RULES["consistency"]).measured
    frame.loc[full & (frame["method"] == "saliency") & (frame["seed"] == SEEDS[0]), "value"] += 1.0
    assert "equal at 100 %: NO" in consistency.feature_consistency(frame, "mnist", RULES["consistency"]).measured


def test_feature_consistency_fails_when_a_method_loses_at_a_large_p():
    frame = _features(2.0, 1.0)
    frame.loc[(frame["method"] == "saliency") & (frame["level"] == 80.0), "value"] = 0.5
    assert consistency.feature_consistency(frame, "mnist", RULES["consistency"]).verdict == FAILS


def test_feature_consistency_with_one_seed_uses_the_test_example_spread():
    rules = RULES["consistency"]
    assert consistency.feature_consistency(_features(2.0, 1.0, seeds=(1,)), "mnist", rules).verdict == HOLDS
    wide = _features(1.01, 1.0, seeds=(1,))
    wide["std"] = 5.0
    claim = consistency.feature_consistency(wide, "mnist", rules)
    assert claim.verdict == INCONCLUSIVE and "one seed" in claim.note


def _examples(most: float, least: float, noise: float = 0.0, methods=("influence_functions", "tracin", "simplex", "dknn"),
              levels=(5, 10, 20, 50, 100)) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        for level in levels:
            for method in methods:
                up = noise * (1 if seed % 2 else -1)
                for metric, value in (("similarity_most", most + up), ("similarity_least", least)):
                    value = 0.1 if level == 100 else value
                    rows.append({"seed": seed, "method": method, "level": float(level), "metric": metric,
                                 "value": value, "std": 0.1, "n": 1000})
    return pd.DataFrame(rows)


def test_example_consistency_every_verdict():
    check, rules = consistency.example_consistency, RULES["consistency"]
    held = check(_examples(0.6, 0.1), "mnist", rules)
    assert held.verdict == HOLDS and "base rate at M=100%: 0.1-0.1" in held.measured
    assert check(_examples(0.1, 0.3), "ecg5000", rules).verdict == FAILS
    assert check(_examples(0.31, 0.3, noise=0.5), "mnist", rules).verdict == INCONCLUSIVE
    # DKNN alone is not the claim: the paper runs four explainers on MNIST
    assert check(_examples(0.6, 0.1, methods=("dknn",)), "mnist", rules).verdict == INCOMPLETE
    # on CIFAR-10 the paper runs SimplEx and DKNN only
    assert check(_examples(0.6, 0.1, methods=("simplex", "dknn")), "cifar10", rules).verdict == HOLDS
    # only M = 5 % measured: the claim covers every M up to 50 %
    assert check(_examples(0.6, 0.1, levels=(5,)), "mnist", rules).verdict == INCOMPLETE
    assert check(None, "mnist", rules).verdict == NOT_RUN


def test_example_consistency_accepts_the_arnoldi_variant_of_influence_functions():
    frame = _examples(0.6, 0.1, methods=("influence_functions_arnoldi", "tracin", "simplex", "dknn"))
    assert consistency.example_consistency(frame, "ecg5000", RULES["consistency"]).verdict == HOLDS


def test_example_consistency_over_the_whole_training_split_is_its_own_row(tmp_path):
    """claims.yaml consistency.whole_training_split: mnist_examples_full's table gives a row of its own, beside
    the subset's, under the same rule."""
    rules = RULES["consistency"]
    node = rules["whole_training_split"]["mnist"]
    folder = tmp_path / node["experiment"] / "quick"
    folder.mkdir(parents=True)
    frame = _examples(0.6, 0.1, methods=("influence_functions_arnoldi", "tracin", "simplex", "dknn"))
    frame.assign(experiment=node["experiment"]).to_csv(folder / "consistency_examples_runs.csv", index=False)
    verdicts = {c.claim: c.verdict for c in consistency.claims(tmp_path, "quick", rules)}
    assert verdicts[f"Example consistency, MNIST, {node['candidates']}"] == HOLDS
    assert verdicts["Example consistency, MNIST"] == NOT_RUN  # the subset's row reads its own experiment


def _roar(method: float, random: float, noise: float = 0.0, levels=(10, 20, 50, 70, 100)) -> pd.DataFrame:
    return _level_rows({"gradient_shap": method, "integrated_gradients": method, "random_features": random},
                       levels, "test_loss", noise=noise)


def test_roar_every_verdict():
    rules = RULES["roar"]
    assert roar.roar_claim(_roar(0.09, 0.05), rules).verdict == HOLDS
    assert roar.roar_claim(_roar(0.04, 0.05), rules).verdict == FAILS
    assert roar.roar_claim(_roar(0.051, 0.05, noise=0.05), rules).verdict == INCONCLUSIVE
    assert roar.roar_claim(_roar(0.09, 0.05, levels=(10, 20, 50)), rules).verdict == INCOMPLETE  # k = 70 % missing
    assert roar.roar_claim(None, rules).verdict == NOT_RUN


TASKS = ("reconstruction", "denoising", "inpainting", "classification")


def _pretext(feature: float, example_ae: float, example_clf: float, noise: float = 0.0, tasks=TASKS) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        jitter = noise * (1 if seed % 2 else -1)
        for a in tasks:
            for b in tasks:
                for kind, method in (("features", "gradient_shap"), ("examples", "dknn")):
                    if a == b:
                        value = 1.0
                    elif kind == "features":
                        value = feature + jitter
                    else:
                        value = example_clf if "classification" in (a, b) else example_ae
                    rows.append({"seed": seed, "kind": kind, "method": method, "task_a": a, "task_b": b,
                                 "metric": "pearson", "level": math.nan, "value": value, "n": 100})
    return pd.DataFrame(rows)


def test_pretext_every_verdict():
    rules = RULES["pretext"]
    held = pretext.pretext_claim(_pretext(0.5, 0.25, 0.1), rules)
    assert held.verdict == HOLDS and "features 0.5" in held.measured
    # feature above example for every pair is not enough: the paper says example importances correlate weakly
    assert pretext.pretext_claim(_pretext(0.65, 0.6, 0.5), rules).verdict == FAILS
    # and that the classifier differs most from the autoencoders on examples
    assert pretext.pretext_claim(_pretext(0.5, 0.05, 0.2), rules).verdict == FAILS
    assert pretext.pretext_claim(_pretext(0.5, 0.25, 0.1, noise=0.3), rules).verdict == INCONCLUSIVE
    assert pretext.pretext_claim(_pretext(0.5, 0.25, 0.1, tasks=TASKS[:3]), rules).verdict == INCOMPLETE
    assert pretext.pretext_claim(None, rules).verdict == NOT_RUN


def _vae(low: float, high: float, noise: float = 0.0, betas=(1, 5, 10), losses=("beta_vae", "tc_vae")) -> pd.DataFrame:
    rows = []
    for seed in SEEDS:
        jitter = noise * (1 if seed % 2 else -1)
        for loss in losses:
            for beta in betas:
                value = low + (high - low) * (beta - 1) / 9 + (jitter if beta == 10 else 0.0)
                for metric in ("pearson_pooled", "pearson"):
                    rows.append({"dataset": "mnist", "seed": seed, "loss": loss, "beta": float(beta), "metric": metric,
                                 "value": value, "std": math.nan, "n": 1000})
    return pd.DataFrame(rows)


def test_vae_every_verdict():
    rules = RULES["disvae"]
    held = disvae.vae_claim(_vae(0.6, 0.7), "mnist", rules)
    assert held.verdict == HOLDS and "slope" in held.measured and "CI" in held.measured
    # a small wobble downwards within the tolerance still "does not fall"; a real fall does
    assert disvae.vae_claim(_vae(0.600, 0.598), "mnist", rules).verdict == HOLDS
    assert disvae.vae_claim(_vae(0.6, 0.3), "mnist", rules).verdict == FAILS
    assert disvae.vae_claim(_vae(0.6, 0.55, noise=0.3), "mnist", rules).verdict == INCONCLUSIVE
    assert disvae.vae_claim(_vae(0.6, 0.7, losses=("beta_vae",)), "mnist", rules).verdict == INCOMPLETE
    assert disvae.vae_claim(_vae(0.6, 0.7, betas=(1, 10)), "mnist", rules).verdict == INCOMPLETE
    assert disvae.vae_claim(_vae(0.6, 0.7), "dsprites", rules).verdict == NOT_RUN


def test_vae_means_of_a_partial_sweep_use_the_seeds_with_every_beta():
    rules = RULES["disvae"]
    frame = _vae(0.6, 0.6)
    # one more seed that has run only beta 1, far lower: it must not pull beta 1's mean below beta 10's
    extra = frame[(frame["seed"] == SEEDS[0]) & (frame["beta"] == 1.0)].assign(seed=99, value=0.1)
    claim = disvae.vae_claim(pd.concat([frame, extra], ignore_index=True), "mnist", rules)
    assert "beta=1 0.6, beta=5 0.6, beta=10 0.6" in claim.measured
    assert "seed 99 not yet" in claim.measured
    assert "not yet" not in disvae.vae_claim(frame, "mnist", rules).measured


# ---------------------------------------------------------------------------------- the report
def test_report_on_a_results_folder_names_scale_settings_and_dates(tmp_path):
    folder = tmp_path / "mnist_consistency" / "quick"
    folder.mkdir(parents=True)
    features = _features(2.0, 1.0).assign(experiment="mnist_consistency", finished_at="2026-11-30T10:00:00+00:00")
    features.to_csv(folder / "consistency_features_runs.csv", index=False)
    _examples(0.1, 0.3).assign(experiment="mnist_consistency").to_csv(folder / "consistency_examples_runs.csv",
                                                                       index=False)
    claims = report.collect_claims(tmp_path, "quick")
    verdicts = {c.claim: c.verdict for c in claims}
    assert verdicts["Feature consistency, MNIST"] == HOLDS
    assert verdicts["Example consistency, MNIST"] == FAILS
    assert verdicts["ROAR, MNIST"] == NOT_RUN
    text = report.render(claims, "quick", report.runs_read(tmp_path, "quick"))
    assert "# Reproduction report: quick scale" in text and "configs/preset/mnist_consistency/quick.yaml" in text
    assert "2026-11-30" in text and "| Feature consistency, MNIST |" in text
    assert report.report_path(tmp_path, "smoke") != report.report_path(tmp_path, "quick")


@pytest.mark.parametrize("study", sorted(RULES))
def test_every_study_has_rules_with_a_confidence(study):
    assert 0 < RULES[study]["confidence"] < 1


def test_paper_report_rows_rest_on_quick_evidence_only_when_not_run_at_paper_scale(tmp_path):
    for scale, better in (("quick", 2.0), ("paper", 3.0)):
        folder = tmp_path / "mnist_consistency" / scale
        folder.mkdir(parents=True)
        _features(better, 1.0).assign(experiment="mnist_consistency").to_csv(
            folder / "consistency_features_runs.csv", index=False)
    folder = tmp_path / "cifar10_consistency" / "quick"
    folder.mkdir(parents=True)
    _features(2.0, 1.0).assign(experiment="cifar10_consistency").to_csv(
        folder / "consistency_features_runs.csv", index=False)
    extra = report.report_rules()
    assert extra["fallback"] == {"paper": "quick"} and "CIFAR-10" in extra["needs_gpu"]
    claims = report.with_fallback(report.collect_claims(tmp_path, "paper"), "paper",
                                  report.collect_claims(tmp_path, "quick"), "quick", extra["needs_gpu"])
    rows = {c.claim: c for c in claims}
    assert rows["Feature consistency, MNIST"].scale == "paper" and rows["Feature consistency, MNIST"].status == ""
    cifar = rows["Feature consistency, CIFAR-10"]
    assert cifar.scale == "quick" and cifar.status == "needs GPU, quick-scale evidence only: holds"
    assert rows["Example consistency, CIFAR-10"].status == "needs GPU, no evidence yet"
    assert rows["ROAR, MNIST"].verdict == NOT_RUN and rows["ROAR, MNIST"].scale == "-"
    text = report.render(claims, "paper")
    assert "| needs GPU, quick-scale evidence only: holds |" in text


def test_report_fallback_names_known_scales(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text("report:\n  fallback: {paper: huge}\n")
    with pytest.raises(ValueError, match="huge"):
        report.report_rules(path)


def test_rows_that_measured_arnoldi_say_it_estimates_the_papers_lissa():
    notes = report.report_rules()["method_notes"]
    assert "expectation of the paper's depth-100 LiSSA" in notes["influence_functions_arnoldi"]
    rows = [Claim("a", "p", "influence_functions_arnoldi at M=5%: 0.36 vs 0.23", note="one seed"),
            Claim("b", "p", "influence_functions at M=5%: 0.36 vs 0.23")]
    marked = report.with_method_notes(rows, notes)
    assert marked[0].note.startswith("one seed; influence functions by the Arnoldi solver")
    assert marked[1].note == "", "plain influence functions (LiSSA, the paper's solver) get no note"


def test_claim_notes_reach_only_rows_run_at_their_scale_and_must_name_a_claim():
    notes = report.report_rules()["claim_notes"]["paper"]
    assert "LiSSA" in notes["Example consistency, ECG5000"]
    rows = [Claim("Example consistency, ECG5000", "p", "tracin at M=5%: 0.6 vs 0.5", verdict=INCOMPLETE,
                  note="influence_functions not measured", scale="paper"),
            Claim("Example consistency, ECG5000", "p", "m", verdict=HOLDS, scale="quick")]
    marked = report.with_claim_notes(rows, notes, "paper")
    assert marked[0].note.startswith("influence_functions not measured; influence functions are left out")
    assert marked[1].note == "", "a row borrowed from quick scale does not get the paper-scale note"
    with pytest.raises(ValueError, match="do not exist"):
        report.with_claim_notes(rows, {"Example consistency, ECG": "typo"}, "paper")


def test_a_partial_sweep_is_incomplete_at_its_scale_and_says_what_is_missing():
    plans = report.report_rules()["planned_seeds"]["paper"]
    assert plans["Disentangled VAEs, MNIST"] == {"make": "DISVAE_SEEDS", "seeds": [1, 2, 3, 4, 5]}
    rows = [Claim("Disentangled VAEs, MNIST", "p", "m", verdict=HOLDS, seeds=(1, 2), satisfied=2, scale="paper"),
            Claim("ROAR, MNIST", "p", "m", verdict=HOLDS, seeds=(1,), satisfied=1, scale="paper"),
            Claim("Pretext sensitivity, MNIST", "p", "m", verdict=HOLDS, seeds=(1,), scale="quick",
                  status="not run at paper scale yet; quick scale: holds"),
            Claim("Feature consistency, MNIST", "p", "-")]
    marked = report.with_planned_seeds(rows, {c.claim: plans[c.claim] for c in rows}, "paper")
    vae, roar, borrowed, not_run = marked
    assert vae.verdict == INCOMPLETE and vae.per_seed == "2 of 2"
    assert vae.note == ("partial sweep: seeds 3, 4, 5 of the planned 1, 2, 3, 4, 5 not run yet "
                        "(`make` variable DISVAE_SEEDS); on the 2 measured: holds")
    assert roar == rows[1], "every planned seed measured: the verdict stands"
    assert borrowed == rows[2], "a row showing quick-scale evidence is not judged against the paper plan"
    assert not_run.verdict == NOT_RUN
    already = report.with_planned_seeds([replace(rows[0], verdict=INCOMPLETE, note="tc_vae not measured")],
                                        {rows[0].claim: plans[rows[0].claim]}, "paper")[0]
    assert already.note == ("tc_vae not measured; partial sweep: seeds 3, 4, 5 of the planned 1, 2, 3, 4, 5 not run "
                            "yet (`make` variable DISVAE_SEEDS)"), "no verdict 'on the seeds measured' to add"
    text = report.render(marked, "paper")
    assert "| incomplete | partial sweep: seeds 3, 4, 5" in text
    with pytest.raises(ValueError, match="do not exist"):
        report.with_planned_seeds(rows, {"ROAR, MNIST ": {"make": "ROAR_SEEDS", "seeds": [1]}}, "paper")


def test_every_planned_claim_exists(tmp_path):
    names = {c.claim for c in report.collect_claims(tmp_path, "paper")}
    for scale, plans in report.report_rules()["planned_seeds"].items():
        assert set(plans) <= names, (scale, sorted(set(plans) - names))


def test_the_paper_report_sets_each_verdict_beside_the_quick_one():
    paper = [Claim("A", "p", "m", verdict=HOLDS, seeds=(1, 2, 3), satisfied=3, scale="paper"),
             Claim("B", "p", "m", verdict=HOLDS, seeds=(1, 2, 3), satisfied=3, scale="paper"),
             Claim("C", "p", "m", verdict=INCONCLUSIVE, seeds=(1,), scale="quick", status="not run at paper scale yet"),
             Claim("D", "p", "-", scale="-")]
    quick = [Claim("A", "p", "m", verdict=HOLDS, seeds=(1,), satisfied=1, scale="quick"),
             Claim("B", "p", "m", verdict=INCONCLUSIVE, seeds=(1,), satisfied=0, scale="quick"),
             Claim("C", "p", "m", verdict=INCONCLUSIVE, seeds=(1,), scale="quick")]
    table = report.scale_comparison(paper, "paper", quick, "quick")
    assert table.to_dict("records") == [
        {"claim": "A", "paper": "holds (3 of 3)", "quick": "holds (1 of 1)", "differs": "no"},
        {"claim": "B", "paper": "holds (3 of 3)", "quick": "inconclusive (0 of 1)", "differs": "**yes**"}], (
        "only claims run at both scales: C borrows quick evidence, D was run nowhere")
    text = report.render(paper, "paper", comparison=table)
    assert "## Against quick scale" in text and "1 of 2 differ" in text
    assert "## Against" not in report.render(paper, "paper")
