"""Write ``results/REPORT.md``: one row per claim of the paper, what it claims, what was measured, whether it holds.

    python scripts/report.py --results results --scale quick

Reads the aggregated tables that ``scripts/figures.py``, ``scripts/aggregate_pretext.py`` and
``scripts/aggregate_disvae.py`` write under ``<results>/<experiment>/<scale>/``; a claim whose results are
missing is listed as "not run". The checks are plain functions of tidy tables (tested on hand-built ones).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from labelfree.aggregation import to_markdown
from labelfree.io import save_text

log = logging.getLogger("report")

FEATURE_LEVELS = (5.0, 10.0, 20.0)      # p at which the paper's feature consistency is read
EXAMPLE_LEVEL = 5.0                      # M at which most vs least important examples are compared
ROAR_LEVELS = (10.0, 20.0, 50.0)         # k at which removal by importance should hurt more than random
GRADIENT_METHODS = ("integrated_gradients", "gradient_shap")
DATASETS = {"mnist": "MNIST", "ecg5000": "ECG5000", "cifar10": "CIFAR-10"}
VAE_DATASETS = {"mnist": "MNIST", "dsprites": "dSprites"}


@dataclass
class Claim:
    """One row of the report."""

    claim: str
    paper: str
    measured: str
    holds: bool | None  # None: not run
    figure: str | None = None

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "not run"}[self.holds]


def _means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean across seeds per (method, metric, level)."""
    return frame.groupby(["method", "metric", "level"], as_index=False)["value"].mean()


def _lookup(means: pd.Series, keys: list[tuple]) -> list[float] | None:
    """The values at ``keys``, or None when any was not measured."""
    values = [means.get(key) for key in keys]
    return None if any(v is None for v in values) else [float(v) for v in values]


def feature_consistency(frame: pd.DataFrame | None, dataset: str) -> Claim:
    """Gradient methods shift the representation more than Random at p = 5, 10, 20 %."""
    name = f"Feature consistency, {DATASETS[dataset]}"
    paper = "masking the top p% features (IG, Gradient Shap) shifts the representation more than random masking, p = 5, 10, 20"
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    means = _means(frame[frame["metric"] == "representation_shift"]).set_index(["method", "level"])["value"]
    random = _lookup(means, [("random_features", p) for p in FEATURE_LEVELS])
    parts, holds = [], True
    for method in GRADIENT_METHODS:
        values = _lookup(means, [(method, p) for p in FEATURE_LEVELS])
        if values is None or random is None:
            continue
        holds &= all(v > r for v, r in zip(values, random))
        parts.append(f"{method}: " + ", ".join(f"{v / r:.1f}x" if r > 0 else "inf" for v, r in zip(values, random)) + " random")
    if not parts:
        return Claim(name, paper, "IG/Gradient Shap or Random not measured at p = 5, 10, 20", None)
    return Claim(name, paper, "; ".join(parts), holds)


def example_consistency(frame: pd.DataFrame | None, dataset: str) -> Claim:
    """Most important examples share the test label more often than the least important, M = 5 %."""
    name = f"Example consistency, {DATASETS[dataset]}"
    paper = "the M = 5% most important training examples share the test example's label more often than the least important"
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    means = _means(frame[frame["level"] == EXAMPLE_LEVEL]).set_index(["method", "metric"])["value"]
    parts, holds = [], True
    for method in [m for m in dict.fromkeys(frame["method"]) if m != "random_examples"]:
        values = _lookup(means, [(method, "similarity_most"), (method, "similarity_least")])
        if values is None:
            continue
        holds &= values[0] > values[1]
        parts.append(f"{method}: {values[0]:.2f} vs {values[1]:.2f}")
    if not parts:
        return Claim(name, paper, "not measured at M = 5%", None)
    return Claim(name, paper, "; ".join(parts), holds)


def roar_claim(frame: pd.DataFrame | None) -> Claim:
    """Removing the most important pixels hurts the retrained model more than removing random ones."""
    name = "ROAR, MNIST"
    paper = "retraining without the top-k% pixels (Gradient Shap, IG) gives a higher test loss than without random pixels, k = 10, 20, 50"
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    means = _means(frame[frame["metric"] == "test_loss"]).set_index(["method", "level"])["value"]
    random = _lookup(means, [("random_features", k) for k in ROAR_LEVELS])
    parts, holds = [], True
    for method in GRADIENT_METHODS:
        values = _lookup(means, [(method, k) for k in ROAR_LEVELS])
        if values is None or random is None:
            continue
        holds &= all(v > r for v, r in zip(values, random))
        parts.append(f"{method}: " + ", ".join(f"{v:.4f}" for v in values))
    if not parts:
        return Claim(name, paper, "IG/Gradient Shap or Random not measured at k = 10, 20, 50", None)
    parts.append("random: " + ", ".join(f"{r:.4f}" for r in random))
    return Claim(name, paper, "; ".join(parts), holds)


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _figure(path: Path, root: Path) -> str | None:
    return str(path.relative_to(root)) if path.exists() else None


def collect_claims(results: Path, scale: str) -> list[Claim]:
    """Every claim, checked on the aggregated tables under ``results`` (missing ones are 'not run')."""
    claims: list[Claim] = []
    for dataset in DATASETS:
        folder = results / f"{dataset}_consistency" / scale
        for table, check in (("consistency_features", feature_consistency), ("consistency_examples", example_consistency)):
            claim = check(_read(folder / f"{table}_runs.csv"), dataset)
            claim.figure = _figure(folder / f"{table}.png", results)
            claims.append(claim)
    claims.extend(extra(results, scale) for extra in EXTRA_CLAIMS)
    roar = results / "mnist_roar" / scale
    claim = roar_claim(_read(roar / "roar_runs.csv"))
    claim.figure = _figure(roar / "roar.png", results)
    claims.append(claim)
    return claims


def pretext_claim(frame: pd.DataFrame | None, feature_method: str = "gradient_shap",
                  example_method: str = "dknn", metric: str = "pearson") -> Claim:
    """For every pair of pretext tasks, saliency maps correlate more than example importances.

    ``frame``: ``pretext_correlations_mean_std.csv`` (kind, method, metric, task_a, task_b, mean, std, n).
    """
    name = "Pretext sensitivity, MNIST"
    paper = ("across pretext tasks saliency maps correlate moderately, example importances weakly: "
             "feature Pearson > example Pearson for every pair of tasks")
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    rows = frame[(frame["metric"] == metric) & (frame["task_a"] < frame["task_b"])]
    features = rows[(rows["kind"] == "features") & (rows["method"] == feature_method)]
    examples = rows[(rows["kind"] == "examples") & (rows["method"] == example_method)]
    pairs = features.merge(examples, on=["task_a", "task_b"], suffixes=("_f", "_e"))
    if pairs.empty:
        return Claim(name, paper, f"no {feature_method}/{example_method} {metric} pairs", None)
    holds = bool((pairs["mean_f"] > pairs["mean_e"]).all())
    parts = [f"{r.task_a[:3]}/{r.task_b[:3]} {r.mean_f:.2f} vs {r.mean_e:.2f}" for r in pairs.itertuples()]
    return Claim(name, paper, f"{feature_method} vs {example_method} {metric}: " + "; ".join(parts), holds)


def vae_claim(frame: pd.DataFrame | None, dataset: str, metric: str = "pearson") -> Claim:
    """The mean correlation between unit saliency maps does not fall as beta grows, for either loss.

    ``frame``: ``disvae_trend.csv`` (dataset, loss, metric, beta=<b> columns, slope, falls); ``falls`` is
    True when the mean decreases at every step of beta.
    """
    name = f"Disentangled VAEs, {VAE_DATASETS[dataset]}"
    paper = "the correlation between latent units' saliency maps does not decrease as beta increases (beta-VAE, beta-TCVAE)"
    if frame is None or frame.empty:
        return Claim(name, paper, "-", None)
    rows = frame[(frame["dataset"] == dataset) & (frame["metric"] == metric)]
    if rows.empty:
        return Claim(name, paper, f"{dataset} not measured", None)
    betas = [c for c in rows.columns if c.startswith("beta=")]
    parts = [
        f"{r['loss']}: " + ", ".join(f"{c} {r[c]:.2f}" for c in betas) + f" (slope {r['slope']:+.4f})"
        for _, r in rows.iterrows()
    ]
    holds = not bool(rows["falls"].astype(bool).any())
    return Claim(name, paper, f"{metric}: " + "; ".join(parts), holds)


def _pretext(results: Path, scale: str) -> Claim:
    folder = results / "mnist_pretext" / scale
    claim = pretext_claim(_read(folder / "pretext_correlations_mean_std.csv"))
    claim.figure = _figure(folder / "pretext_correlations.png", results)
    return claim


def _vae(dataset: str) -> Callable[[Path, str], Claim]:
    def check(results: Path, scale: str) -> Claim:
        folder = results / "disvae" / scale
        claim = vae_claim(_read(folder / "disvae_trend.csv"), dataset)
        claim.figure = _figure(folder / f"disvae_{dataset}_boxplots.png", results)
        return claim

    return check


#: Claims of the pretext and VAE studies, read from their own aggregations.
EXTRA_CLAIMS: list[Callable[[Path, str], Claim]] = [_pretext, *(_vae(d) for d in ("mnist", "dsprites"))]


def render(claims: list[Claim], scale: str) -> str:
    """The Markdown report."""
    table = pd.DataFrame(
        [{"claim": c.claim, "paper": c.paper, "measured": c.measured, "verdict": c.verdict} for c in claims]
    )
    held = sum(c.holds is True for c in claims)
    run = sum(c.holds is not None for c in claims)
    lines = [
        f"# Reproduction report ({scale} scale)",
        "",
        "Generated by `scripts/report.py` from the aggregated results under `results/`; "
        f"{held} of {run} checked claims hold ({len(claims) - run} not run). Scale `{scale}`: see each "
        "experiment's `configs/preset/<experiment>/" + scale + ".yaml` for what was reduced.",
        "",
        to_markdown(table),
        "## Figures",
        "",
    ]
    for c in claims:
        if c.figure:
            lines += [f"### {c.claim}", "", f"![{c.claim}]({c.figure})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--scale", default="quick", choices=["paper", "quick", "smoke"])
    parser.add_argument("--out", default=None, help="default: <results>/REPORT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    claims = collect_claims(results, args.scale)
    out = Path(args.out) if args.out else results / "REPORT.md"
    save_text(render(claims, args.scale), out)
    for c in claims:
        log.info("%-40s %s", c.claim, c.verdict)


if __name__ == "__main__":
    main()
