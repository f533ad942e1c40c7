"""The text study (AG News): one clear error per bad setting before any data is read, a smoke run through the
runner, its aggregation across seeds and the claim rows."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments import report
from experiments.claims import NOT_RUN, VERDICTS
from experiments.runner import run
from experiments.studies import STUDIES, text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.baseline_token=unk", r"dataset.baseline_token='unk' is not accepted: expected one of \['mask', 'pad'\]"),
        ("dataset.vocab_size=3", "dataset.vocab_size=3 is not accepted: expected an integer >= 6"),
        ("dataset.max_length=1", "dataset.max_length=1 is not accepted: expected an integer >= 2"),
        ("model.teacher_forcing=1.5", "model.teacher_forcing=1.5 is not accepted: expected a number >= 0 and <= 1"),
        ("model.embedding_dim=0", "model.embedding_dim=0 is not accepted"),
        ("protocol.figures.highlight_index=-1", "protocol.figures.highlight_index=-1 is not accepted"),
        ("protocol.features.ignore_tokens=[EOS]", r"\['EOS'\] are not special tokens; accepted: \['\[PAD\]'"),
        ("protocol.features.explainers=[saliency]", "Unknown token explainer 'saliency'"),
    ],
)
def test_bad_text_settings_stop_before_any_data_or_training(compose_config, tmp_path, override, message):
    cfg = compose_config("experiment=agnews_consistency", "scale=smoke", "paths.data_dir=/no/such/folder", override)
    with pytest.raises(ValueError, match=message):
        run(cfg, tmp_path / "bad")
    assert not (tmp_path / "cache").exists(), "nothing may be trained or cached"


def test_smoke_run_aggregation_and_claims(compose_config, tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        summary = run(compose_config("experiment=agnews_consistency", "scale=smoke", f"seed={seed}"), runs / f"seed={seed}")
        assert set(summary["training"]) == {"default"}  # one model serves both checks
    features = pd.read_csv(runs / "seed=1" / "consistency_features.csv")
    assert set(features["method"]) == {"integrated_gradients", "gradient_shap", "random_features"}
    full = features[features["level"] == 100]["value"]
    assert full.max() - full.min() < 1e-6 * max(1.0, full.abs().max())  # every ranking masks every token
    examples = pd.read_csv(runs / "seed=1" / "consistency_examples.csv")
    assert examples[examples["level"] == 100]["value"].round(6).eq(0.25).all()  # the share of a topic
    highlight = pd.read_csv(runs / "seed=1" / "token_highlight.csv")
    assert set(highlight["method"]) == {"integrated_gradients", "gradient_shap"} and highlight["token"].iloc[-1] == "[EOS]"
    for stem in ("consistency_features", "consistency_examples", "token_highlight"):
        assert (runs / "seed=1" / f"{stem}.png").exists()

    results = tmp_path / "results"
    written = text.aggregate([runs], results, "smoke")
    folder = results / "agnews_consistency" / "smoke"
    assert folder / "consistency_features_table.csv" in written and (folder / "token_highlight.png").exists()
    stacked = pd.read_csv(folder / "consistency_features_runs.csv")
    assert sorted(stacked["seed"].unique()) == [1, 2]
    redrawn = text.redraw(results, "smoke")
    assert folder / "token_highlight.png" in redrawn

    rules = report.load_rules()["text"]
    claims = text.claims(results, "smoke", rules)
    assert [c.claim for c in claims] == ["Feature consistency, AG News", "Example consistency, AG News"]
    assert all(c.verdict in VERDICTS and c.verdict != NOT_RUN and c.seeds == (1, 2) for c in claims)
    assert "text" in STUDIES and STUDIES["text"] is text.STUDY
