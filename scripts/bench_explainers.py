"""Time labelfree's example explainers and metrics against the authors' package ``lfxai`` on identical inputs.

    python scripts/bench_explainers.py                      # the workload of the issue, writes results/BENCHMARKS.md
    python scripts/bench_explainers.py --paper-scale        # labelfree only: the paper's MNIST example check
    python scripts/bench_explainers.py --tiny --out /tmp/b.md   # seconds; what the test runs

Workload (``configs/bench/default.yaml``): the paper's MNIST autoencoder (d = 4) with fixed weights, MNIST-shaped
inputs in [0, 1], n_train = n_test = 200, two TracIn checkpoints, LiSSA depth 5 with the paper's damping (1e-3) and
scale (1000), top-20 % masks of 1000 images, similarity rates of a 1000 x 1000 score matrix at M = 5, 10, 20, 50,
70, 100 %. Every explainer is built by ``build_example_explainer`` with the settings of its
``configs/explainer/<name>.yaml`` (the library defaults); the workload only changes what it names.
Both packages see the same model (eval mode: BatchNorm uses its running statistics), the same inputs, the same
checkpoint files and the same per-example loss (mean squared reconstruction error of one image). lfxai runs
the code paths its experiments use (``attribute_loader``: one example per step, one file per gradient).

Agreement checks (each must pass, or the script exits with status 1):

* TracIn and DKNN: the same scores within float tolerance (DKNN: labelfree adds eps = 1e-12 to the squared
  distance, configs/explainer/dknn.yaml and the library default; lfxai adds nothing). Representations of a
  random-weight encoder on random images are close together, so eps matters: 1e-8 would change the largest
  scores by about 1 %.
* Masks and similarity rates: identical.
* SimplEx: labelfree is run with lfxai's optimiser settings (Adam, lr 1e-3, 1000 steps, no decay) so both
  solve the same problem along the same path; the float summation order differs (one matrix product versus
  batches of 50), so weights are compared by their mean per-row Spearman correlation (>= 0.99).
* Influence functions: LiSSA is stochastic and the two packages draw different training batches (and lfxai
  divides by a constant, n_train), so scores are compared by Spearman correlation over all (test, train)
  pairs (>= 0.95). With the paper's damping and scale the estimate is a large multiple of the gradient plus a
  small curvature term that depends on the sampled batches; the ranks agree almost exactly.

``lfxai`` comes from the optional ``bench`` extra (``pip install -e ".[bench]"``); without it only labelfree's
times are reported. The script installs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import logging
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelfree.attribution.examples import Arnoldi, LiSSA, Objective, build_example_explainer  # noqa: E402
from labelfree.io import save_text  # noqa: E402
from labelfree.metrics import percent_to_count, similarity_rate_curves, top_feature_mask  # noqa: E402
from labelfree.models.registry import build_autoencoder  # noqa: E402
from labelfree.training import Checkpoint  # noqa: E402

log = logging.getLogger("bench")

SIMILARITY_PERCENTS = (5, 10, 20, 50, 70, 100)
TARGETS = {"tracin": 50.0, "influence_functions": 10.0, "masks": 100.0, "similarity_rates": 20.0,
           "simplex": 2.0, "dknn": 1.0}
SIMPLEX_MIN_SPEARMAN = 0.99
IF_MIN_SPEARMAN = 0.95
TRACIN_RTOL = 1e-3
DKNN_RTOL = 1e-4
LFXAI_SIMPLEX_LR = 1e-3  # lfxai: torch.optim.Adam default learning rate
FAST_PIECE_S = 1.0  # pieces faster than this get a warm-up call and Workload.fast_repeats timed calls


def explainer_config(name: str) -> dict[str, Any]:
    """The library's settings of one explainer, ``configs/explainer/<name>.yaml`` (the single source of its numbers)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "explainer" / f"{name}.yaml"))


def explainer_settings(name: str) -> dict[str, Any]:
    """``configs/explainer/<name>.yaml`` as :func:`build_example_explainer` takes it: the node instantiated (the
    solver becomes an object), without ``kind`` and ``method``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    settings = dict(instantiate(OmegaConf.load(ROOT / "configs" / "explainer" / f"{name}.yaml"), _convert_="all"))
    settings.pop("kind")
    settings.pop("method")
    return settings


def bench_config() -> dict[str, Any]:
    """The benchmark's workloads, ``configs/bench/default.yaml``."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "bench" / "default.yaml"))


def paper_lissa() -> LiSSA:
    """The paper's LiSSA (damping 1e-3, scale 1000, depth 100, batch 300): the influence-function config's solver."""
    return explainer_settings("influence_functions")["solver"]


def expected_lissa(lissa: LiSSA, cap: int | None = None) -> Arnoldi:
    """The Arnoldi solver of the expectation of ``lissa``'s estimate (its damping, scale, depth and batch), with
    the library's iterations and rank, both at most ``cap`` (the number of training examples of a small workload)."""
    arnoldi = Arnoldi(damping=lissa.damping, scale=lissa.scale, depth=lissa.depth, batch_size=lissa.batch_size)
    if cap is not None:
        arnoldi = dataclasses.replace(arnoldi, iterations=min(arnoldi.iterations, cap), rank=min(arnoldi.rank, cap))
    return arnoldi


@dataclass
class Workload:
    """One workload of ``configs/bench/default.yaml`` (see there)."""

    n_train: int
    n_test: int
    n_checkpoints: int
    depth: int
    if_batch_size: int
    mask_images: int
    mask_percent: float
    similarity_size: int
    n_classes: int
    repeats: int
    lfxai_repeats: int
    fast_repeats: int  # timed calls of pieces under FAST_PIECE_S (0: no warm-up rule)
    seed: int

    @classmethod
    def from_config(cls, tiny: bool = False) -> Workload:
        """The workload (``tiny``: with the tiny one's values) of ``configs/bench/default.yaml``; a null
        ``if_batch_size`` is the paper's LiSSA batch."""
        config = bench_config()
        values = {**config["workload"], **(config["tiny"] if tiny else {})}
        if values["if_batch_size"] is None:
            values["if_batch_size"] = paper_lissa().batch_size
        return cls(**values)


@dataclass
class Row:
    key: str  # a key of TARGETS, or another name for a row without a target
    name: str
    labelfree_s: float
    lfxai_s: float | None = None
    agreement: str = ""
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        return None if self.lfxai_s is None else self.lfxai_s / self.labelfree_s


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def median_time(fn: Callable[[], Any], repeats: int, fast_repeats: int = 0) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` and the last call's result.

    With ``fast_repeats`` > 0, a piece whose first call takes under :data:`FAST_PIECE_S` is timed like
    ``timeit``: that first call is a discarded warm-up (thread pool, allocator) and the median is over
    ``max(repeats, fast_repeats)`` more calls, since a few milliseconds of scheduler noise would otherwise
    decide the ratio. Both packages' pieces go through the same rule.
    """
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if first >= FAST_PIECE_S or fast_repeats <= 0:
        times = [first]
    else:
        times, repeats = [], max(repeats, fast_repeats) + 1
    for _ in range(repeats - 1):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------ workload
def make_model(seed: int) -> nn.Module:
    """The paper's MNIST autoencoder (reconstruction, ``configs/model/<bench model>.yaml``) with fixed random
    weights, in eval mode."""
    from omegaconf import OmegaConf

    config = OmegaConf.load(ROOT / "configs" / "model" / f"{bench_config()['model']}.yaml")
    torch.manual_seed(seed)
    model = build_autoencoder({key: config[key] for key in ("architecture", "latent_dim", "pretext")})
    # Non-trivial BatchNorm statistics, so eval mode matters.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_checkpoints(model: nn.Module, x: Tensor, n: int, folder: Path, seed: int) -> list[Checkpoint]:
    """``n`` checkpoint files of the workload's model (see :func:`make_checkpoints_for`)."""
    torch.manual_seed(seed)
    return make_checkpoints_for(model, x, n, folder, seed)


class LfxaiAdapter(nn.Module):
    """The same model seen through lfxai's interface: ``.encoder``, ``forward = decoder(encoder(x))`` and
    ``checkpoints_files`` (the state dicts of the wrapped model have the same keys)."""

    def __init__(self, model: nn.Module, checkpoint_files: list[Path]) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.checkpoints_files = [str(p) for p in checkpoint_files]

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def _loader(x: Tensor, labels: Tensor | None = None, batch_size: int = 1, sampler: Any = None) -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    labels = torch.zeros(len(x), dtype=torch.long) if labels is None else labels
    return DataLoader(TensorDataset(x, labels), batch_size=batch_size, shuffle=False, sampler=sampler)


def _lfxai_available() -> bool:
    try:
        import lfxai  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence lfxai's nested progress bars (tqdm writes to stderr)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


# ------------------------------------------------------------------------------------------ checks
def _spearman(a: Tensor, b: Tensor) -> float:
    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def _rowwise_spearman(a: Tensor, b: Tensor) -> float:
    return statistics.fmean(_spearman(a[i], b[i]) for i in range(len(a)))


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ------------------------------------------------------------------------------------------ benchmark
def run_workload(w: Workload, with_lfxai: bool) -> Report:
    """Time every piece on the workload ``w``; compare with lfxai when ``with_lfxai``."""
    report = Report()
    generator = torch.Generator().manual_seed(w.seed)
    model = make_model(w.seed)
    train_x = torch.rand(w.n_train, 1, 28, 28, generator=generator)
    test_x = torch.rand(w.n_test, 1, 28, 28, generator=generator)
    objective = Objective(model)
    loss = nn.MSELoss()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoints = make_checkpoints(model, train_x, w.n_checkpoints, folder, w.seed)
        final_state = {k: v.clone() for k, v in model.state_dict().items()}
        adapter = LfxaiAdapter(model, [c.path for c in checkpoints]).eval()

        # ---- TracIn
        tracin_settings = explainer_settings("tracin")

        def tracin() -> Tensor:
            explainer = build_example_explainer("tracin", model, checkpoints=checkpoints, objective=objective,
                                                **tracin_settings)
            return explainer.fit(train_x).attribute(test_x)

        ours_t, ours = median_time(tracin, w.repeats, w.fast_repeats)
        row = Row("tracin", "TracIn", ours_t)
        if with_lfxai:
            from lfxai.explanations.examples import TracIn as LTracIn

            def lfxai_tracin() -> Tensor:
                with _quiet():
                    out = LTracIn(adapter, loss, folder / "lfxai_tracin").attribute_loader(
                        torch.device("cpu"), _loader(train_x), _loader(test_x))
                model.load_state_dict(final_state)
                return out

            row.lfxai_s, theirs = median_time(lfxai_tracin, w.lfxai_repeats, w.fast_repeats)
            error = _relative_error(ours, theirs)
            row.passed = error <= TRACIN_RTOL
            row.agreement = f"max |diff| / max |score| = {error:.1e} (<= {TRACIN_RTOL:g})"
        report.rows.append(row)

        # ---- Influence functions (LiSSA): the config's, at the workload's depth and batch
        if_settings = explainer_settings("influence_functions")
        lissa = dataclasses.replace(if_settings["solver"], depth=w.depth, batch_size=w.if_batch_size)

        def influence() -> Tensor:
            explainer = build_example_explainer("influence_functions", model, seed=w.seed, objective=objective,
                                                **{**if_settings, "solver": lissa})
            return explainer.fit(train_x).attribute(test_x)

        ours_t, ours = median_time(influence, w.repeats, w.fast_repeats)
        row = Row("influence_functions", "Influence functions (LiSSA)", ours_t)
        if with_lfxai:
            from lfxai.explanations.examples import InfluenceFunctions as LInfluence
            from torch.utils.data import RandomSampler, TensorDataset

            def lfxai_influence() -> Tensor:
                sampler = RandomSampler(TensorDataset(train_x), replacement=True, num_samples=w.depth * w.if_batch_size)
                with _quiet():
                    return LInfluence(adapter, loss, folder / "lfxai_if").attribute_loader(
                        torch.device("cpu"), _loader(train_x), _loader(test_x),
                        _loader(train_x, batch_size=w.if_batch_size, sampler=sampler),
                        recursion_depth=lissa.depth, damp=lissa.damping, scale=lissa.scale)

            row.lfxai_s, theirs = median_time(lfxai_influence, w.lfxai_repeats, w.fast_repeats)
            rho = _spearman(ours, theirs)
            row.passed = rho >= IF_MIN_SPEARMAN
            row.agreement = f"Spearman over all pairs = {rho:.4f} (>= {IF_MIN_SPEARMAN})"
        report.rows.append(row)

        # ---- Influence functions, Arnoldi: the expectation of the same depth-w.depth LiSSA estimate
        # (a different estimator, so no target; compared with lfxai's LiSSA scores like LiSSA itself).
        arnoldi = expected_lissa(lissa, cap=w.n_train)

        def influence_arnoldi() -> Tensor:
            explainer = build_example_explainer("influence_functions", model, seed=w.seed, objective=objective,
                                                **{**if_settings, "solver": arnoldi})
            return explainer.fit(train_x).attribute(test_x)

        arnoldi_t, arnoldi_scores = median_time(influence_arnoldi, w.repeats, w.fast_repeats)
        arnoldi_row = Row("influence_functions_arnoldi", "Influence functions (Arnoldi: E[LiSSA], informative)",
                          arnoldi_t, lfxai_s=row.lfxai_s)
        if with_lfxai:
            rho = _spearman(arnoldi_scores, theirs)
            arnoldi_row.passed = rho >= IF_MIN_SPEARMAN
            arnoldi_row.agreement = f"Spearman with lfxai's LiSSA = {rho:.4f} (>= {IF_MIN_SPEARMAN})"
        report.rows.append(arnoldi_row)

        # ---- SimplEx (the config's steps with lfxai's optimiser settings, see the module docstring)
        simplex_settings = {**explainer_settings("simplex"), "lr": LFXAI_SIMPLEX_LR, "cosine_decay": False}

        def simplex() -> Tensor:
            return build_example_explainer("simplex", model, **simplex_settings).fit(train_x).attribute(test_x)

        ours_t, ours = median_time(simplex, w.repeats, w.fast_repeats)
        row = Row("simplex", "SimplEx", ours_t)
        if with_lfxai:
            from lfxai.explanations.examples import SimplEx as LSimplEx

            def lfxai_simplex() -> Tensor:
                with _quiet():
                    return LSimplEx(adapter, loss).attribute_loader(
                        torch.device("cpu"), _loader(train_x), _loader(test_x), batch_size=min(50, w.n_test))

            row.lfxai_s, theirs = median_time(lfxai_simplex, w.lfxai_repeats, w.fast_repeats)
            rho = _rowwise_spearman(ours, theirs)
            row.passed = rho >= SIMPLEX_MIN_SPEARMAN
            row.agreement = f"mean per-row Spearman = {rho:.4f} (>= {SIMPLEX_MIN_SPEARMAN}); max |diff| {float((ours - theirs).abs().max()):.1e}"
        report.rows.append(row)

        # ---- DKNN
        dknn_settings = explainer_settings("dknn")

        def dknn() -> Tensor:
            return build_example_explainer("dknn", model, **dknn_settings).fit(train_x).attribute(test_x)

        ours_t, ours = median_time(dknn, w.repeats, w.fast_repeats)
        row = Row("dknn", "DKNN", ours_t)
        if with_lfxai:
            from lfxai.explanations.examples import NearestNeighbours

            def lfxai_dknn() -> Tensor:
                with _quiet():
                    return NearestNeighbours(adapter, loss).attribute_loader(
                        torch.device("cpu"), _loader(train_x), _loader(test_x), batch_size=min(50, w.n_test))

            row.lfxai_s, theirs = median_time(lfxai_dknn, w.lfxai_repeats, w.fast_repeats)
            error = _relative_error(ours, theirs)
            row.passed = error <= DKNN_RTOL
            row.agreement = f"max |diff| / max |score| = {error:.1e} (<= {DKNN_RTOL:g})"
        report.rows.append(row)

    # ---- Masks
    attributions = torch.randn(w.mask_images, 1, 28, 28, generator=generator)
    fraction = w.mask_percent / 100
    ours_t, ours = median_time(lambda: top_feature_mask(attributions, fraction), w.repeats, w.fast_repeats)
    row = Row("masks", f"Masks ({w.mask_images} images, top {w.mask_percent:g} %)", ours_t)
    if with_lfxai:
        from lfxai.utils.feature_attribution import generate_masks

        mask_size = round(fraction * 28 * 28)
        row.lfxai_s, theirs = median_time(lambda: generate_masks(attributions.numpy(), mask_size), w.lfxai_repeats,
                                          w.fast_repeats)
        same = bool(torch.equal(ours, theirs == 0))
        row.passed = same
        row.agreement = "identical masks" if same else f"{int((ours != (theirs == 0)).sum())} pixels differ"
    report.rows.append(row)

    # ---- Similarity rates
    n = w.similarity_size
    scores = torch.rand(n, n, generator=generator)
    train_labels = torch.randint(w.n_classes, (n,), generator=generator)
    test_labels = torch.randint(w.n_classes, (n,), generator=generator)
    counts = [percent_to_count(p, n) for p in SIMILARITY_PERCENTS]

    def ours_rates() -> list[tuple[float, float]]:
        most, least = similarity_rate_curves(scores, test_labels, train_labels, counts)  # one sort for every M
        return list(zip(most.mean(dim=1).tolist(), least.mean(dim=1).tolist()))

    ours_t, ours = median_time(ours_rates, w.repeats, w.fast_repeats)
    row = Row("similarity_rates", f"Similarity rates ({n} x {n}, {len(counts)} values of M)", ours_t)
    if with_lfxai:
        from lfxai.utils.metrics import similarity_rates as lfxai_rates

        row.lfxai_s, (most, least) = median_time(lambda: lfxai_rates(scores, train_labels, test_labels, counts),
                                                 w.lfxai_repeats, w.fast_repeats)
        theirs = list(zip(most, least))
        error = max(abs(a - b) for pair_a, pair_b in zip(ours, theirs) for a, b in zip(pair_a, pair_b))
        row.passed = error < 1e-6
        row.agreement = "identical rates" if row.passed else f"max |diff| = {error:.2e}"
    report.rows.append(row)
    return report


# ------------------------------------------------------------------------------------------ paper scale
#: The models of the paper whose loss is per-example (loss-based explainers apply): their model config
#: (configs/model/<file>.yaml with the experiment's overrides) and input shape. SimCLR and beta-TCVAE
#: are left out: their losses couple the examples of a batch, and the library refuses them.
#: The last field names the experiment whose explainer settings (memory bounds) are used.
MEMORY_MODELS: dict[str, tuple[str, dict[str, Any], tuple[int, ...], str]] = {
    "mnist_ae": ("reconstruction_ae", {}, (1, 28, 28), "mnist_consistency"),
    "ecg_lstm_ae": ("lstm_ae", {}, (140, 1), "ecg5000_consistency"),
    "dsprites_beta_vae": ("beta_vae", {"latent_dim": 6, "image_size": 64, "n_channels": 1}, (1, 64, 64),
                          "dsprites_disvae"),
}
#: Explainer settings that bound memory (they do not change the scores).
MEMORY_OPTIONS = ("chunk_size", "vector_chunk_size", "hvp_chunk_size", "test_chunk_size")


def memory_options(model_key: str, explainer: str) -> dict[str, Any]:
    """The memory bounds of ``explainer`` as the model's experiment configures them:
    ``configs/explainer/<explainer>.yaml`` updated by the experiment's ``explainers.<explainer>``."""
    from omegaconf import OmegaConf

    settings = explainer_config(explainer)
    experiment = OmegaConf.load(ROOT / "configs" / "experiment" / f"{MEMORY_MODELS[model_key][3]}.yaml")
    override = OmegaConf.select(experiment, f"explainers.{explainer}", default=None)
    if override is not None:
        settings.update(OmegaConf.to_container(override))
    return {key: settings[key] for key in MEMORY_OPTIONS if key in settings}


def _peak_rss_gib() -> float:
    """Peak resident memory of this process so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _build(model_key: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The model of :data:`MEMORY_MODELS` with random weights (eval mode) and its input shape."""
    from omegaconf import OmegaConf

    from labelfree.models.registry import MODEL_BUILDERS

    file, overrides, shape, _ = MEMORY_MODELS[model_key]
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / f"{file}.yaml"), resolve=False)
    config.update(overrides)
    torch.manual_seed(seed)
    if model_key == "mnist_ae":
        return make_model(seed), shape
    return MODEL_BUILDERS[config["name"]](config).eval(), shape


def _paper_worker(job: dict[str, Any], queue: Any) -> None:
    """One explainer on one model in this (fresh) process: seconds, peak RSS and, if asked, the scores."""
    torch.set_num_threads(job["threads"])
    seed = job["seed"]
    model, shape = _build(job["model"], seed)
    generator = torch.Generator().manual_seed(seed)
    train_x = torch.rand(job["n_train"], *shape, generator=generator)
    test_x = torch.rand(job["n_test"], *shape, generator=generator)
    before = _peak_rss_gib()
    with tempfile.TemporaryDirectory() as tmp:
        name = job["explainer"]
        options = {**explainer_settings(name), **job.get("options", {})}
        checkpoints = []
        if name == "tracin":
            checkpoints = make_checkpoints_for(model, train_x[:64], job["n_checkpoints"], Path(tmp), seed)
        explainer = build_example_explainer(name, model, checkpoints=checkpoints, seed=seed, **options)
        start = time.perf_counter()
        scores = explainer.fit(train_x).attribute(test_x)
        seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_rss_gib": _peak_rss_gib(), "rss_before_gib": before,
               "scores": scores.numpy() if job.get("return_scores") else None})  # numpy: pickled by value


def make_checkpoints_for(model: nn.Module, x: Tensor, n: int, folder: Path, seed: int) -> list[Checkpoint]:
    """``n`` whole-model checkpoints of any model: its weights after 0, 1, ... Adam steps on ``x``."""
    work = copy.deepcopy(model).eval()
    optimizer = torch.optim.Adam(work.parameters(), lr=1e-3)
    checkpoints = []
    for c in range(n):
        path = folder / f"checkpoint_{c}.pt"
        torch.save(work.state_dict(), path)
        checkpoints.append(Checkpoint(path, 1.0))
        optimizer.zero_grad()
        work.pretext_loss(x).mean().backward()
        optimizer.step()
    return checkpoints


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh spawned process, so that its peak memory is its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_paper_worker, args=(job, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"benchmark job {job['model']}/{job['explainer']} died (exit code {process.exitcode})")
    process.join()
    log.info("%-18s %-20s %9.1f s, peak RSS %.2f GiB (%.2f GiB before the explainer)", job["model"],
             job["explainer"], result["seconds"], result["peak_rss_gib"], result["rss_before_gib"])
    return result


def run_paper_scale(threads: int, seed: int, with_memory: bool, size: int | None = None) -> tuple[str, dict[str, Any]]:
    """The paper's MNIST example check (1000 x 1000, TracIn over 10 checkpoints, depth-100 influence
    functions by Arnoldi), LiSSA at depth 100 on a slice of the test set (its time per test example and its
    agreement with Arnoldi), and the peak memory of the loss-based explainers on every applicable model.
    Every explainer has its config's settings (``configs/explainer/<name>.yaml``); the sizes are
    ``paper_scale`` of ``configs/bench/default.yaml`` (``size`` replaces its ``size``)."""
    scale_config = bench_config()["paper_scale"]
    size = scale_config["size"] if size is None else size
    lissa_slice, memory_vectors = scale_config["lissa_slice"], scale_config["lissa_memory_vectors"]
    base = {"threads": threads, "seed": seed, "n_train": size, "n_test": size,
            "n_checkpoints": scale_config["n_checkpoints"]}
    lissa = paper_lissa()  # the paper's: 100 steps, batch 300
    arnoldi = expected_lissa(lissa)
    simplex_steps = explainer_settings("simplex")["steps"]
    jobs = {
        f"TracIn ({base['n_checkpoints']} checkpoints)": {**base, "model": "mnist_ae", "explainer": "tracin"},
        f"Influence functions (Arnoldi, depth-{lissa.depth} LiSSA expectation)": {
            **base, "model": "mnist_ae", "explainer": "influence_functions", "options": {"solver": arnoldi}},
        f"SimplEx ({simplex_steps} steps)": {**base, "model": "mnist_ae", "explainer": "simplex"},
        "DKNN": {**base, "model": "mnist_ae", "explainer": "dknn"},
    }
    rows = {name: run_job(job) for name, job in jobs.items()}
    total = sum(r["seconds"] for r in rows.values())
    lines = [f"| explainer (MNIST AE, {size} x {size}) | seconds | peak RSS (GiB) |", "|---|---|---|"]
    lines += [f"| {name} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} |" for name, r in rows.items()]
    lines += [f"| **all four** | **{total:.1f}** | |", ""]

    # LiSSA at depth 100 on a slice of the test set, and its agreement with Arnoldi there.
    n_slice = min(lissa_slice, size)
    lissa_run = run_job({**base, "n_test": n_slice, "model": "mnist_ae", "explainer": "influence_functions",
                         "options": {"solver": lissa}, "return_scores": True})
    arnoldi_slice = run_job({**base, "n_test": n_slice, "model": "mnist_ae", "explainer": "influence_functions",
                             "options": {"solver": arnoldi}, "return_scores": True})
    a, b = torch.from_numpy(lissa_run["scores"]), torch.from_numpy(arnoldi_slice["scores"])
    rho = _spearman(a, b)
    rows_rho = _rowwise_spearman(a, b)
    rel = float((a - b).norm() / b.norm())
    projected = lissa_run["seconds"] / n_slice * base["n_test"]
    lines += [
        f"LiSSA at the paper's depth ({lissa.depth} steps, batch {lissa.batch_size}) on the first {n_slice} test images x {size} training "
        f"images: {lissa_run['seconds']:.1f} s, so about {projected / 60:.0f} minutes for the {size} test images "
        f"(projected linearly: LiSSA's cost is proportional to the number of test vectors). Arnoldi on the same "
        f"slice: {arnoldi_slice['seconds']:.1f} s. Agreement of Arnoldi with LiSSA: Spearman {rho:.4f} over all "
        f"pairs, {rows_rho:.4f} per test row on average; relative Frobenius difference {rel:.3f} (LiSSA's own "
        f"sampling noise included).",
        "",
    ]
    summary = {"total_seconds": total, "lissa_projected_seconds": projected, "arnoldi_lissa_spearman": rho}
    if with_memory:
        lines += [
            "Peak memory of the loss-based explainers on every model of the paper whose loss is per-example, "
            f"{size} training x {size} test inputs, with the memory bounds each model's experiment configures "
            f"(exact: they do not change the scores). The LiSSA row runs one step (batch {lissa.batch_size}) "
            f"on {memory_vectors} "
            "test vectors: its peak is the Hessian-vector product's, which does not grow with more steps or "
            "(beyond the test chunk) more test vectors.",
            "",
            "| model (P encoder parameters) | explainer | memory bounds | seconds | peak RSS (GiB) |",
            "|---|---|---|---|---|",
        ]
        for model_key in MEMORY_MODELS:
            model, _ = _build(model_key, seed)
            n_params = sum(p.numel() for p in model.encoder.parameters())
            tracin_options = memory_options(model_key, "tracin")
            if_options = memory_options(model_key, "influence_functions")
            steps = scale_config["arnoldi_memory_iterations"]
            for name, options, extra, note in (
                ("tracin", tracin_options, {}, "TracIn, 1 checkpoint"),
                ("influence_functions",
                 {**if_options, "solver": dataclasses.replace(arnoldi, iterations=steps, rank=steps)}, {},
                 f"influence functions (Arnoldi, {steps} steps)"),
                ("influence_functions", {**if_options, "solver": dataclasses.replace(lissa, depth=1)},
                 {"n_test": memory_vectors}, f"influence functions (LiSSA, 1 step, {memory_vectors} test vectors)"),
            ):
                r = run_job({**base, "n_checkpoints": 1, "model": model_key, "explainer": name, "options": options,
                             **extra})
                key = f"peak_{model_key}_{name}" + ("_lissa" if extra else "")
                summary[key] = r["peak_rss_gib"]
                bounds = ", ".join(f"{k}={v}" for k, v in (tracin_options if name == "tracin" else if_options).items())
                lines.append(f"| {model_key} ({n_params:,}) | {note} | {bounds} | {r['seconds']:.1f} | "
                             f"{r['peak_rss_gib']:.2f} |")
        lines.append("")
    return "\n".join(lines), summary


# ------------------------------------------------------------------------------------------ output
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{cpu}; {os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def render(report: Report, w: Workload) -> str:
    lines = [
        "| piece | labelfree (s) | lfxai (s) | lfxai / labelfree | target | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for row in report.rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:,.1f}x"
        lfxai = "-" if row.lfxai_s is None else f"{row.lfxai_s:.4g}"
        target = "(no target)"
        if row.key in TARGETS:
            target = f">= {TARGETS[row.key]:g}x"
            if row.ratio is not None:
                target += " met" if row.ratio >= TARGETS[row.key] else " MISSED"
        check = row.agreement + ("" if row.passed is None else (" - pass" if row.passed else " - FAIL"))
        lines.append(f"| {row.name} | {row.labelfree_s:.4g} | {lfxai} | {ratio} | {target} | {check} |")
    return "\n".join(lines)


BENCHMARKS_INTRO = """# Benchmarks: labelfree against the authors' lfxai

Written by `make bench` (`scripts/bench_explainers.py`; lfxai from the `bench` extra). Every number below
was measured by that command on the machine it names; rerun it to refresh the file.

## Same workload, both packages

{workload}
How each side is run, and why the checks are what they are: see the docstring of
`scripts/bench_explainers.py`. lfxai is timed through `attribute_loader`, the path its experiments use
(one example per step, one file per gradient). labelfree's SimplEx row uses lfxai's optimiser settings
(Adam lr 1e-3, no decay) so that both solve the same problem; the library default (lr 1 with cosine
decay, see `SimplEx`) costs the same per step.

## The paper's MNIST example check, labelfree alone

{paper}
Influence functions at the paper's depth use the `Arnoldi` solver (`solver._target_:
labelfree.attribution.examples.Arnoldi` in `configs/explainer/influence_functions.yaml`): the expectation of the
depth-100 LiSSA estimate,
phi(H) v with phi(mu) = (1/scale) sum_j (1 - damping - mu/scale)^j, from 100 Arnoldi steps on the
Hessian of the mean training loss and its 20 largest Ritz pairs. LiSSA itself stays the default.
Read the agreement for what it is: with the paper's scale of 1000, the filter phi departs from its value
at 0 only for eigenvalues comparable to scale / depth = 10, and on these fixed random weights the largest
Ritz value is about 2e-5, so every consistent estimator agrees here. Where the curvature matters,
`tests/test_examples.py` checks Arnoldi against LiSSA's expectation exactly (a model with a constant
Hessian and a small scale).
Peak memory is the resident set of a fresh process running one explainer (about 0.6 GiB of it is
Python and torch). TracIn holds one `[n_test, P]` test-gradient matrix and computes training gradients
`chunk_size` at a time; influence functions hold the `[n_train, P]` training gradients, invert test
gradients `test_chunk_size` at a time, and build each Hessian-vector-product graph over
`hvp_chunk_size` examples and `vector_chunk_size` vectors. Each model's experiment config sets these
bounds (the LSTM needs the smallest); none of them changes the scores.
Hessian-vector products skip the decoder where the model allows it (`split_hessian`, see `docs/DESIGN.md`):
the MNIST autoencoder's always do here (4-d code); the LSTM's split only when at least 128 columns (twice
its 64-d code) are multiplied, so its 8-vector LiSSA row and 3-step Arnoldi row take the direct product,
whose graph (encoder and decoder) bounds the split one's; the beta-VAE's loss calls `encoder.posterior`,
so it never splits.
"""


def assemble(workload: Path, paper: Path, out: Path) -> None:
    """``results/BENCHMARKS.md`` from the two tables written by the workload and paper-scale runs."""
    text = BENCHMARKS_INTRO.format(workload=workload.read_text(), paper=paper.read_text())
    save_text(text, out)
    log.info("wrote %s", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="Markdown file to write (default: print only)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long workload (for the test)")
    parser.add_argument("--paper-scale", action="store_true",
                        help="labelfree only: 1000 x 1000, 10 checkpoints, depth 100, and peak memory per model")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--lfxai-repeats", type=int, default=None)
    parser.add_argument("--if-batch-size", type=int, default=None)
    parser.add_argument("--paper-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-memory", action="store_true", help="paper scale: skip the per-model peak-memory runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--assemble", nargs=2, metavar=("WORKLOAD_MD", "PAPER_MD"),
                        help="write --out (results/BENCHMARKS.md) from the two tables of earlier runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    if args.assemble:
        assemble(Path(args.assemble[0]), Path(args.assemble[1]), Path(args.out or ROOT / "results" / "BENCHMARKS.md"))
        return

    if args.paper_scale:
        text, summary = run_paper_scale(args.threads, 0, with_memory=not args.no_memory, size=args.paper_size)
        header = f"Machine: {machine()}\n\n"
        print(header + text)
        if args.out:
            save_text(header + text + "\n", Path(args.out))
        log.info("paper scale: %s", summary)
        return

    w = Workload.from_config(tiny=args.tiny)
    if args.repeats:
        w.repeats = args.repeats
    if args.lfxai_repeats:
        w.lfxai_repeats = args.lfxai_repeats
    if args.if_batch_size:
        w.if_batch_size = args.if_batch_size
    with_lfxai = _lfxai_available()
    if not with_lfxai:
        log.warning("lfxai is not installed (pip install -e '.[bench]'): timing labelfree only")
    report = run_workload(w, with_lfxai)
    table = render(report, w)
    lissa = paper_lissa()
    header = (f"Workload: n_train = n_test = {w.n_train}, {w.n_checkpoints} TracIn checkpoints, LiSSA depth {w.depth} "
              f"(batch {w.if_batch_size}, damping {lissa.damping:g}, scale {lissa.scale:g}), masks of "
              f"{w.mask_images} images at {w.mask_percent:g} %, similarity rates of a {w.similarity_size} x "
              f"{w.similarity_size} matrix; median of {w.repeats} (labelfree) and {w.lfxai_repeats} (lfxai) runs"
              + (f"; pieces under {FAST_PIECE_S:g} s: one warm-up call, then the median of {w.fast_repeats} "
                 "(see `median_time`)" if w.fast_repeats > 0 else "") + ".\n"
              f"Machine: {machine()}\n")
    print(header)
    print(table)
    if args.out:
        save_text(header + "\n" + table + "\n", Path(args.out))
    failed = [r.name for r in report.rows if r.passed is False]
    if failed:
        log.error("agreement checks failed: %s", ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
