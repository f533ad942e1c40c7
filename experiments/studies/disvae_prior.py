"""Study: does the VAE claim survive an attribution prior? (issue 21; ``protocol=disvae_prior``, experiment
``mnist_disvae_prior``).

A reproduction of Crabbé & van der Schaar (2022, "VAEs") added the total variation of each latent unit's saliency
map, weighted by lambda, to the VAE loss and reported that the correlation between unit maps then falls as beta
grows. Here the penalty is built from differentiable label-free attributions (:mod:`labelfree.priors`; Captum's
carry no graph, so a penalty on them trains nothing), the model is trained with it
(:class:`labelfree.models.prior.PriorRegularised`, hooked into the registry by ``model.prior``), and explained by the
VAE study's own run (:func:`experiments.studies.disvae.run`: :func:`labelfree.protocols.disvae.disvae_unit_maps`).

Per run (table ``disvae_prior.csv``): the VAE study's rows plus, on the same test images, ``prior_test`` (the
penalty Omega per test image, unweighted; mean / std over images), ``rec_test`` (the Bernoulli reconstruction loss
with z = mu, without the prior) and ``loss_test`` (the model's own clean loss, without the prior); columns
``lambda`` and ``prior`` (kind and attribution method). The summary also holds the seconds per training step with
and without the prior on one training batch (``step_seconds_plain``, ``step_seconds_prior``).

Lambda = 0 is the plain VAE: its model config drops the prior node, so it is the VAE study's model (same cache key
when the data, trainer and model settings are those of ``mnist_disvae``). The aggregation reuses the ``mnist_disvae``
runs (``study == "disvae"``) for lambda = 0 where this study has no lambda = 0 run of that (loss, beta, seed) and the
two were trained and explained alike (every ``dataset``, ``trainer``, ``model`` key but the prior, and the
protocol's explanation keys, equal); otherwise they are listed as skipped with the keys that differ.

Aggregated outputs under ``<results>/disvae_prior/<scale>/``: ``disvae_prior_runs.csv`` (with a ``source`` column),
``disvae_prior_stats.csv`` (mean, std across seeds, seeds per (loss, beta, lambda, metric)),
``disvae_prior_mean_std.{csv,md,tex}``, ``disvae_prior_runs.json`` and ``disvae_prior_correlation.{png,pdf}``
(pearson_pooled and the prior's test value against beta, one line per lambda, spread across seeds).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from experiments import aggregation as agg
from experiments.claims import Claim, claim_from, figure_link, fmt, paired, read_table
from experiments.studies import disvae
from experiments.study import Study, StudyResult
from experiments.workbench import Workbench
from labelfree.data.subsets import random_subset
from labelfree.io import save_csv, save_json
from labelfree.models.prior import PriorRegularised
from labelfree.modules import eval_mode, module_device
from labelfree.plots import save_figure
from labelfree.plots_prior import plot_metric_by_lambda
from labelfree.priors import AttributionPrior, step_seconds

log = logging.getLogger(__name__)

TABLE = "disvae_prior"
FOLDER = "disvae_prior"
PREFIX = "disvae_prior_"
REUSED_EXPERIMENT = "mnist_disvae"  # the lambda = 0 runs of the VAE study
EXTRA = ("prior_test", "rec_test", "loss_test")
KEYS = ["loss", "beta", "lambda", "metric"]
#: protocol keys that change what the VAE study measures (compared before a mnist_disvae run stands for lambda = 0)
EXPLAIN_KEYS = ("protocol.explainer", "protocol.n_test", "protocol.batch_size", "protocol.pooled_max_images",
                "protocol.collapse_kl")
LABELS = {**disvae.LABELS, "prior_test": "prior on test images", "rec_test": "test reconstruction loss"}


def prior_of(model_cfg: DictConfig) -> AttributionPrior:
    """The attribution prior of a model config (``model.prior``; absent: weight 0)."""
    node = model_cfg.get("prior")
    return AttributionPrior() if node is None else AttributionPrior.from_config(OmegaConf.to_container(node))


def training_config(model_cfg: DictConfig) -> DictConfig:
    """The model config the model is trained and cached under: without the prior node when its weight is 0,
    so a lambda = 0 model is exactly the VAE study's (same builder, same cache key)."""
    if prior_of(model_cfg).weight > 0 or "prior" not in model_cfg:
        return model_cfg
    plain = OmegaConf.to_container(model_cfg)
    plain.pop("prior")
    return OmegaConf.create(plain)


def _test_rows(model: torch.nn.Module, prior: AttributionPrior, test_x: torch.Tensor, batch_size: int,
               seed: int) -> list[dict[str, Any]]:
    """``prior_test``, ``rec_test`` and ``loss_test`` on ``test_x``: mean / std over images (``n`` images)."""
    inner = model.model if isinstance(model, PriorRegularised) else model
    device = module_device(inner)
    generator = torch.Generator().manual_seed(seed)  # expected gradients draw references and alphas
    values: dict[str, list[torch.Tensor]] = {m: [] for m in EXTRA}
    with eval_mode(inner):
        for idx in torch.arange(len(test_x)).split(batch_size):
            xb = test_x[idx].to(device)
            values["prior_test"].append(prior(inner.encoder, xb, generator, create_graph=False).cpu())
            with torch.no_grad():
                values["rec_test"].append(inner.loss_terms(xb, sample=False)["rec"].cpu())
                values["loss_test"].append(inner.pretext_loss(xb, None, perturb=False).cpu())
    rows = []
    for metric, parts in values.items():
        v = torch.cat(parts).double()
        rows.append({"metric": metric, "value": float(v.mean()), "std": float(v.std()) if len(v) > 1 else math.nan,
                     "n": len(v)})
    return rows


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Train or load the VAE of ``cfg.model`` with its attribution prior, run the VAE study on it, and add the
    prior's test value and the test losses."""
    prior = prior_of(cfg.model)  # a wrong prior setting stops the run before any training
    data = bench.data("features")
    model_cfg = training_config(disvae.model_config(cfg, data))
    inner_cfg = copy.deepcopy(cfg)
    with open_dict(inner_cfg):
        inner_cfg.model = model_cfg
    result = disvae.run(inner_cfg, bench)  # trains or loads the model and explains its units (the VAE study)
    trained = bench.get("features", model_cfg)
    protocol, seed = cfg.protocol, int(cfg.seed)

    start = time.perf_counter()
    bench.reseed()
    test_x = data.test_x[random_subset(len(data.test_x), protocol.n_test, seed)]  # the VAE study's test images
    extra = _test_rows(trained.model, prior, test_x, int(protocol.batch_size), seed)
    frame = result.tables[disvae.TABLE]
    template = frame.iloc[0].to_dict()
    frame = pd.concat([frame, pd.DataFrame([{**template, **row} for row in extra])], ignore_index=True)
    frame.insert(frame.columns.get_loc("level") + 1, "lambda", float(prior.weight))
    frame.insert(frame.columns.get_loc("lambda") + 1, "prior", f"{prior.kind}:{prior.method}")
    summary = dict(result.summary)
    summary.update({row["metric"]: row["value"] for row in extra})
    summary.update({"lambda": float(prior.weight), "prior": prior.to_dict(), "prior_seconds": time.perf_counter() - start})
    summary.update(_timing(trained.model, prior, data.train_x, int(cfg.trainer.batch_size),
                           int(protocol.get("measure_steps", 0))))
    log.info("%s beta=%g lambda=%g seed %d: prior %.4g, rec %.4g, pearson_pooled %.3f", summary["loss"],
             summary["beta"], prior.weight, seed, summary["prior_test"], summary["rec_test"],
             summary.get("pearson_pooled", math.nan))
    return StudyResult(tables={TABLE: frame}, figures={TABLE: result.figures[disvae.TABLE]}, summary=summary)


def _timing(model: torch.nn.Module, prior: AttributionPrior, train_x: torch.Tensor, batch_size: int,
            steps: int) -> dict[str, float]:
    """Seconds of one training step (loss and backward; median of ``steps``) with and without the prior, on the
    first training batch; the trained weights do not change. Run last: it draws random numbers."""
    if steps < 1:
        return {}
    inner = model.model if isinstance(model, PriorRegularised) else model
    xb = train_x[:batch_size].to(module_device(inner))
    timed = PriorRegularised(inner, AttributionPrior(**{**prior.to_dict(), "weight": max(prior.weight, 1.0)}))
    plain, with_prior = step_seconds(inner, xb, steps), step_seconds(timed, xb, steps)
    return {"step_seconds_plain": plain, "step_seconds_prior": with_prior, "step_cost_ratio": with_prior / plain}


# -------------------------------------------------------------------------------------- aggregation
def _comparable(config: Mapping[str, object]) -> dict[str, object]:
    """The keys that make two runs the same lambda = 0 model, explained alike (the prior node excluded)."""
    return {k: v for k, v in config.items()
            if (k.split(".")[0] in ("dataset", "trainer") or (k.startswith("model.") and not k.startswith("model.prior."))
                or k in EXPLAIN_KEYS) and k != "model.beta"}


def reused_vae_runs(own: agg.Collected, vae: agg.Collected) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The VAE study's rows that stand for lambda = 0: runs of a (loss, beta, seed) this study has no lambda = 0
    run of, trained and explained as this study's runs of that loss. Also the runs left out, with the reason."""
    if vae.frame.empty or own.frame.empty:
        return pd.DataFrame(), []
    mine = own.frame.drop_duplicates("run_dir")
    covered = {(r.loss, float(r.beta), int(r.seed)) for r in mine[mine["lambda"] == 0].itertuples(index=False)}
    references = {loss: _comparable(own.configs[part["run_dir"].iloc[0]]) for loss, part in mine.groupby("loss")}
    kept, skipped = [], []
    for run_dir, part in vae.frame.groupby("run_dir", sort=True):
        first = part.iloc[0]
        key = (first["loss"], float(first["beta"]), int(first["seed"]))
        if key in covered:
            continue
        reference = references.get(first["loss"])
        if reference is None:
            skipped.append((run_dir, f"no {TABLE} run of loss {first['loss']} to compare its settings with"))
            continue
        theirs = _comparable(vae.configs[run_dir])
        differing = sorted(k for k in set(theirs) | set(reference) if theirs.get(k) != reference.get(k))
        if differing:
            skipped.append((run_dir, "trained or explained differently: " + ", ".join(differing[:6])))
            continue
        kept.append(part.assign(**{"lambda": 0.0, "prior": "none"}))
    return (pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()), skipped


def mean_std_table(stats: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (loss, beta, lambda); a ``mean +/- std`` column per metric; the number of seeds last."""
    keys = ["loss", "beta", "lambda"]
    cells = stats.assign(cell=[agg.format_mean_std(m, s, 3) for m, s in zip(stats["mean"], stats["std"])])
    wide = cells.pivot(index=keys, columns="metric", values="cell").reindex(columns=list(metrics))
    wide["seeds"] = stats.groupby(keys)["n"].max()
    return wide.rename_axis(columns=None).reset_index()


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Tables and the figure of the prior study; lambda = 0 from the VAE study's runs where this study has none."""
    own = agg.collect(runs, TABLE, scale=scale, study="disvae_prior")
    if own.frame.empty:
        return []
    agg.check_one_config(own, ["experiment", "loss", "beta", "lambda"], TABLE)
    vae = agg.collect(runs, disvae.TABLE, experiment=REUSED_EXPERIMENT, scale=scale, study="disvae")
    reused, skipped = reused_vae_runs(own, vae)
    frame = own.frame.assign(source=TABLE)
    if not reused.empty:
        frame = pd.concat([frame, reused.assign(source="disvae")], ignore_index=True)
    out = results / FOLDER / scale
    present = set(frame["metric"])
    metrics = [m for m in (*disvae.METRICS, *EXTRA) if m in present]
    stats = agg.mean_std(frame, KEYS)
    written = [save_csv(frame, out / f"{PREFIX}runs.csv"), save_csv(stats, out / f"{PREFIX}stats.csv")]
    written += agg.write_table(stats, out / f"{PREFIX}mean_std", display=mean_std_table(stats, metrics))
    seeds = sorted(frame["seed"].unique())
    title = (f"MNIST: VAEs trained with an attribution prior ({', '.join(sorted(set(own.frame['prior'])))}); "
             f"{len(seeds)} seed{'s' * (len(seeds) > 1)}")
    figure = plot_metric_by_lambda(frame, [m for m in ("pearson_pooled", "prior_test") if m in present], title, LABELS)
    written += save_figure(figure, out / f"{PREFIX}correlation")
    record = own.record(agg.expected_seeds(runs, scale))
    record["reused_disvae_runs"] = sorted(set(reused["run_dir"])) if not reused.empty else []
    record["skipped_disvae_runs"] = [{"run_dir": r, "reason": why} for r, why in skipped]
    written.append(save_json(record, out / f"{PREFIX}runs.json"))
    agg.remove_stale(out, PREFIX, written)
    log.info("disvae_prior: %d runs, %d mnist_disvae runs reused for lambda = 0, %d not", len(own.runs),
             len(record["reused_disvae_runs"]), len(skipped))
    return written


# ------------------------------------------------------------------------------------------- claims
def prior_claim(frame: pd.DataFrame | None, rules: Mapping[str, Any]) -> Claim:
    """The prior acts: for each (loss, beta), its test value at the largest lambda is below its value at the
    smallest (lambda = 0), paired by seed; the means at every lambda are reported beside it."""
    lambdas = sorted(float(v) for v in rules["lambdas"])
    low, high = lambdas[0], lambdas[-1]
    name = "Attribution prior, MNIST: the prior acts"
    paper = f"the prior's test value falls as lambda grows: lower at lambda = {high:g} than at lambda = {low:g}"
    if frame is None or frame.empty:
        return Claim(name, paper, "-")
    rows = frame[frame["metric"] == "prior_test"]
    inequalities, missing, parts = [], [], []
    for loss in rules["losses"]:
        for beta in (float(b) for b in rules["betas"]):
            part = rows[(rows["loss"] == loss) & (rows["beta"] == beta)]
            q = paired(part, {"lambda": low}, {"lambda": high}, f"{loss}, beta {beta:g}: lambda {low:g} vs {high:g}")
            if q is None or not q.differences:
                missing.append(f"{loss}, beta {beta:g} at lambda {low:g} and {high:g}")
                continue
            inequalities.append(q)
            means = part.groupby("lambda")["value"].mean()
            falls = bool(len(means) > 1 and (means.diff().dropna() < 0).all())
            parts.append(f"{loss} beta={beta:g}: " + ", ".join(f"{lam:g}: {fmt(v)}" for lam, v in means.items())
                         + (" (falls at every step)" if falls else ""))
    return claim_from(name, paper, "prior_test by lambda: " + "; ".join(parts), inequalities, rules, missing)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    """The VAE claim under each lambda (the VAE study's rule on the runs of that lambda), then the prior check."""
    folder = results / FOLDER / scale
    runs = read_table(folder / f"{PREFIX}runs.csv")
    figure = figure_link(folder / f"{PREFIX}correlation.png", results)
    out = []
    for lam in sorted(float(v) for v in rules["lambdas"]):
        part = None if runs is None else runs[runs["lambda"] == lam]
        claim = disvae.vae_claim(part, "mnist", {**rules, "datasets": {"mnist": "MNIST"}})
        claim.claim = f"{claim.claim}, attribution prior lambda = {lam:g}"
        claim.figure = figure
        out.append(claim)
    claim = prior_claim(runs, rules)
    claim.figure = figure
    return [*out, claim]


STUDY = Study("disvae_prior", "Disentangled VAEs trained with an attribution prior: unit maps against beta and lambda",
              (TABLE,), run, aggregate, claims)
