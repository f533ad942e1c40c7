"""The attribution-prior study (issue 21): smoke runs through the runner, lambda = 0 shared with the VAE study
(same cached model, same numbers), the aggregation reusing mnist_disvae runs only when trained alike, its claims."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from experiments.claims import FAILS, HOLDS, INCOMPLETE, NOT_RUN, VERDICTS
from experiments.report import load_rules
from experiments.runner import run
from experiments.studies import STUDIES, disvae_prior
from labelfree.protocols.disvae import METRICS


def test_smoke_runs_share_lambda_zero_with_the_vae_study_and_aggregate(compose_config, tmp_path):
    runs = tmp_path / "runs"
    vae = run(compose_config("experiment=mnist_disvae", "scale=smoke", "seed=2"), runs / "vae2")
    zero = run(compose_config("experiment=mnist_disvae_prior", "scale=smoke", "seed=2", "model.prior.weight=0"),
               runs / "zero2")
    assert vae["model_cached"] is False and zero["model_cached"] is True  # lambda = 0 is the VAE study's model
    mine = pd.read_csv(runs / "zero2" / "disvae_prior.csv")
    theirs = pd.read_csv(runs / "vae2" / "disvae.csv")
    pd.testing.assert_series_equal(mine.set_index("metric")["value"].loc[list(METRICS)],
                                   theirs.set_index("metric")["value"].loc[list(METRICS)])

    summary = run(compose_config("experiment=mnist_disvae_prior", "scale=smoke", "model.prior.weight=0.1"),
                  runs / "prior1")
    frame = pd.read_csv(runs / "prior1" / "disvae_prior.csv")
    assert list(frame["metric"]) == [*METRICS, *disvae_prior.EXTRA]
    assert set(frame["lambda"]) == {0.1} and set(frame["prior"]) == {"total_variation:expected_gradients"}
    assert frame["value"].notna().all() and (runs / "prior1" / "disvae_prior.png").exists()
    assert summary["model_cached"] is False and "PriorRegularised" not in json.dumps(summary)
    assert summary["step_seconds_prior"] > 0 and summary["step_seconds_plain"] > 0
    assert summary["rec_test"] > 0 and summary["prior_test"] >= 0

    run(compose_config("experiment=mnist_disvae", "scale=smoke", "seed=1"), runs / "vae1")  # stands for lambda = 0
    run(compose_config("experiment=mnist_disvae", "scale=smoke", "seed=3", "trainer.epochs=1"), runs / "vae3")
    results = tmp_path / "results"
    written = STUDIES["disvae_prior"].aggregate([runs], results, "smoke")
    out = results / "disvae_prior" / "smoke"
    assert (out / "disvae_prior_correlation.png") in written and (out / "disvae_prior_correlation.pdf").exists()
    table = pd.read_csv(out / "disvae_prior_runs.csv")
    sources = table.drop_duplicates("run_dir").set_index("seed")
    assert sources.loc[1, "source"].tolist() == ["disvae_prior", "disvae"]  # lambda 0.1 (own) and 0 (reused)
    assert sources.loc[2, "source"] == "disvae_prior"                       # own lambda = 0 run: not reused
    assert 3 not in sources.index                                           # trained differently: left out
    record = json.loads((out / "disvae_prior_runs.json").read_text())
    assert [r["run_dir"].endswith("vae3") for r in record["skipped_disvae_runs"]] == [True]
    assert "trainer.epochs" in record["skipped_disvae_runs"][0]["reason"]
    stats = pd.read_csv(out / "disvae_prior_stats.csv")
    assert set(stats["lambda"]) == {0.0, 0.1}
    # only beta 1 was run: every claim is incomplete or not run, none holds
    claims = STUDIES["disvae_prior"].claims(results, "smoke", load_rules()["disvae_prior"])
    assert len(claims) == 6 and {c.verdict for c in claims} <= {INCOMPLETE, NOT_RUN}


def _runs(correlation, prior, noise: float = 0.0) -> pd.DataFrame:
    """Runs rows: pearson_pooled = correlation(beta, lambda), prior_test = prior(lambda), 3 seeds."""
    rows = []
    for seed in (1, 2, 3):
        jitter = noise * (seed - 2)
        for loss in ("beta_vae", "tc_vae"):
            for beta in (1.0, 5.0, 10.0):
                for lam in (0.0, 0.001, 0.005, 0.01, 0.1):
                    base = {"dataset": "mnist", "seed": seed, "loss": loss, "beta": beta, "lambda": lam,
                            "std": math.nan, "n": 100}
                    rows.append({**base, "metric": "pearson_pooled", "value": correlation(beta, lam) + jitter})
                    rows.append({**base, "metric": "pearson", "value": correlation(beta, lam)})
                    rows.append({**base, "metric": "prior_test", "value": prior(lam) + jitter})
    return pd.DataFrame(rows)


def test_claims_per_lambda_and_the_prior_check(tmp_path):
    rules = load_rules()["disvae_prior"]
    # the reproduction's report: correlation falls with beta once lambda is large; the prior falls with lambda
    frame = _runs(lambda beta, lam: 0.6 - (0.3 * (beta - 1) / 9 if lam >= 0.01 else 0.0), lambda lam: 5.0 / (1 + 100 * lam))
    folder = tmp_path / "disvae_prior" / "quick"
    folder.mkdir(parents=True)
    frame.to_csv(folder / "disvae_prior_runs.csv", index=False)
    claims = disvae_prior.claims(tmp_path, "quick", rules)
    verdicts = [c.verdict for c in claims]
    assert verdicts == [HOLDS, HOLDS, HOLDS, FAILS, FAILS, HOLDS]
    assert "lambda = 0.01" in claims[3].claim and "falls at every step" in claims[-1].measured
    # a prior that does not act
    flat = _runs(lambda beta, lam: 0.6, lambda lam: 5.0, noise=0.01)
    assert disvae_prior.prior_claim(flat, rules).verdict in {FAILS, "inconclusive"}
    assert disvae_prior.prior_claim(None, rules).verdict == NOT_RUN
    assert all(c.verdict in VERDICTS for c in claims)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_training_config_drops_the_prior_only_at_weight_zero(weight):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "beta_vae", "beta": 1, "prior": {"kind": "total_variation", "weight": weight}})
    out = disvae_prior.training_config(cfg)
    assert ("prior" in out) == (weight > 0)
    assert disvae_prior.prior_of(cfg).weight == weight
