"""Time labelfree's example explainers and metrics against the authors' package ``lfxai`` on identical inputs.

The command is ``scripts/bench_explainers.py`` (``make bench``); the paper-scale timings (labelfree alone, peak
memory per model) are :mod:`experiments.benchmark_paper`.

Workload (``configs/bench/default.yaml``): the paper's MNIST autoencoder (d = 4) with fixed weights, MNIST-shaped
inputs in [0, 1], n_train = n_test = 200, two TracIn checkpoints, LiSSA depth 5 with the paper's damping (1e-3) and
scale (1000), top-20 % masks of 1000 images, similarity rates of a 1000 x 1000 score matrix at M = 5, 10, 20, 50,
70, 100 %. Every explainer is built by ``build_example_explainer`` with the settings of its
``configs/explainer/<name>.yaml`` (the library defaults); the workload only changes what it names.
Both packages see the same model (eval mode: BatchNorm uses its running statistics), the same inputs, the same
checkpoint files and the same per-example loss (mean squared reconstruction error of one image). lfxai runs
the code paths its experiments use (``attribute_loader``: one example per step, one file per gradient).

Agreement checks (each must pass, or the command exits with status 1):

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
times are reported. Nothing here installs anything.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import torch
from omegaconf import OmegaConf
from scipy.stats import spearmanr
from torch import Tensor, nn

from labelfree.attribution.examples import Arnoldi, LiSSA, Objective, build_example_explainer
from labelfree.io import save_text
from labelfree.metrics import percent_to_count, similarity_rate_curves, top_feature_mask
from labelfree.models.registry import build_autoencoder
from labelfree.training import Checkpoint

log = logging.getLogger("bench")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIMILARITY_PERCENTS = (5, 10, 20, 50, 70, 100)
TARGETS = {"tracin": 50.0, "influence_functions": 10.0, "masks": 100.0, "similarity_rates": 20.0,
           "simplex": 2.0, "dknn": 1.0}
SIMPLEX_MIN_SPEARMAN = 0.99
IF_MIN_SPEARMAN = 0.95
TRACIN_RTOL = 1e-3
DKNN_RTOL = 1e-4
LFXAI_SIMPLEX_LR = 1e-3  # lfxai: torch.optim.Adam default learning rate
LFXAI_BATCH = 50  # the test batch of lfxai's SimplEx and nearest neighbours
FAST_PIECE_S = 1.0  # pieces faster than this get a warm-up call and Workload.fast_repeats timed calls


# ------------------------------------------------------------------------------------------ settings
def explainer_config(name: str) -> dict[str, Any]:
    """The library's settings of one explainer, ``configs/explainer/<name>.yaml`` (the single source of its numbers)."""
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "explainer" / f"{name}.yaml"))


def explainer_settings(name: str) -> dict[str, Any]:
    """``configs/explainer/<name>.yaml`` as :func:`build_example_explainer` takes it: the node instantiated (the
    solver becomes an object), without ``kind`` and ``method``."""
    from hydra.utils import instantiate

    settings = dict(instantiate(OmegaConf.load(CONFIGS / "explainer" / f"{name}.yaml"), _convert_="all"))
    settings.pop("kind")
    settings.pop("method")
    return settings


def bench_config() -> dict[str, Any]:
    """The benchmark's workloads, ``configs/bench/default.yaml``."""
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "bench" / "default.yaml"))


def bench_section(name: str, tiny: bool = False, **overrides: Any) -> dict[str, Any]:
    """Section ``name`` of ``configs/bench/default.yaml`` (``tiny``: with ``<name>_tiny``'s values), then the
    overrides that are not ``None``."""
    config = bench_config()
    values = {**config[name], **(config[f"{name}_tiny"] if tiny else {})}
    values.update({key: value for key, value in overrides.items() if value is not None})
    return values


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
    settings = explainer_config(explainer)
    experiment = OmegaConf.load(CONFIGS / "experiment" / f"{MEMORY_MODELS[model_key][3]}.yaml")
    override = OmegaConf.select(experiment, f"explainers.{explainer}", default=None)
    if override is not None:
        settings.update(OmegaConf.to_container(override))
    return {key: settings[key] for key in MEMORY_OPTIONS if key in settings}


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
    def from_config(cls, tiny: bool = False, **overrides: int | None) -> Workload:
        """The workload (``tiny``: with the tiny one's values) of ``configs/bench/default.yaml``, with the
        ``overrides`` that are not None; a null ``if_batch_size`` is the paper's LiSSA batch."""
        config = bench_config()
        values = {**config["workload"], **(config["tiny"] if tiny else {})}
        values.update({key: value for key, value in overrides.items() if value is not None})
        if values["if_batch_size"] is None:
            values["if_batch_size"] = paper_lissa().batch_size
        return cls(**values)


# ------------------------------------------------------------------------------------------ timing
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


@dataclass(frozen=True)
class Isolated:
    """What a job run in its own process gave: its ``result``, or None with the process's ``exitcode`` (it died:
    -9 is the kernel's out-of-memory killer) or ``timed_out`` (killed after the timeout)."""

    result: Any = None
    exitcode: int | None = None
    timed_out: bool = False


def run_in_process(target: Callable[[Any, Any], None], job: Any, timeout_s: float | None = None) -> Isolated:
    """``target(job, queue)`` in a fresh spawned process, so that its peak memory is its own; ``target`` puts one
    result on ``queue``. A process still running after ``timeout_s`` seconds is killed."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(job, queue))
    process.start()
    started = time.monotonic()
    while True:
        try:
            result = queue.get(timeout=1.0)
            break
        except Empty:
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                process.kill()
                process.join()
                return Isolated(timed_out=True, exitcode=process.exitcode)
            if not process.is_alive():
                return Isolated(exitcode=process.exitcode)
    process.join()
    return Isolated(result=result)


def median_time(fn: Callable[[], Any], repeats: int, fast_repeats: int = 0,
                slow_piece_s: float | None = None) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` and the last call's result.

    With ``fast_repeats`` > 0, a piece whose first call takes under :data:`FAST_PIECE_S` is timed like
    ``timeit``: that first call is a discarded warm-up (thread pool, allocator) and the median is over
    ``max(repeats, fast_repeats)`` more calls, since a few milliseconds of scheduler noise would otherwise
    decide the ratio. With ``slow_piece_s``, a piece whose first call takes at least that long is timed by that
    call alone (minutes of a slow peer, where scheduler noise is negligible). Every package's pieces go through the
    same rules.
    """
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    if slow_piece_s is not None and first >= slow_piece_s:
        return first, result
    if first >= FAST_PIECE_S or fast_repeats <= 0:
        times = [first]
    else:
        times, repeats = [], max(repeats, fast_repeats) + 1
    for _ in range(repeats - 1):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------ models
def make_model(seed: int) -> nn.Module:
    """The paper's MNIST autoencoder (reconstruction, ``configs/model/<bench model>.yaml``) with fixed random
    weights, in eval mode."""
    config = OmegaConf.load(CONFIGS / "model" / f"{bench_config()['model']}.yaml")
    torch.manual_seed(seed)
    model = build_autoencoder({key: config[key] for key in ("architecture", "latent_dim", "pretext")})
    # Non-trivial BatchNorm statistics, so eval mode matters.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


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


def make_checkpoints(model: nn.Module, x: Tensor, n: int, folder: Path, seed: int) -> list[Checkpoint]:
    """``n`` checkpoint files of the workload's model (see :func:`make_checkpoints_for`)."""
    torch.manual_seed(seed)
    return make_checkpoints_for(model, x, n, folder, seed)


# ------------------------------------------------------------------------------------------ lfxai's side
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


def lfxai_available() -> bool:
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


def _lfxai_batched(explainer: Callable[..., Any], adapter: nn.Module, loss: nn.Module, train_x: Tensor,
                   test_x: Tensor) -> Callable[[], Tensor]:
    """lfxai's SimplEx or nearest neighbours (``explainer(model, loss)``) through ``attribute_loader``, test
    examples in batches of :data:`LFXAI_BATCH`."""

    def attribute() -> Tensor:
        with _quiet():
            return explainer(adapter, loss).attribute_loader(
                torch.device("cpu"), _loader(train_x), _loader(test_x), batch_size=min(LFXAI_BATCH, len(test_x)))

    return attribute


# ------------------------------------------------------------------------------------------ checks
#: an agreement check: (labelfree's result, lfxai's result) -> (passed, what was measured)
Check = Callable[[Any, Any], tuple[bool, str]]


def spearman(a: Tensor, b: Tensor) -> float:
    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def rowwise_spearman(a: Tensor, b: Tensor) -> float:
    return statistics.fmean(spearman(a[i], b[i]) for i in range(len(a)))


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def close_scores(rtol: float) -> Check:
    """The same scores up to ``rtol`` times the largest score."""

    def check(ours: Tensor, theirs: Tensor) -> tuple[bool, str]:
        error = _relative_error(ours, theirs)
        return error <= rtol, f"max |diff| / max |score| = {error:.1e} (<= {rtol:g})"

    return check


def ranked_alike(minimum: float, label: str = "Spearman over all pairs") -> Check:
    """A Spearman correlation of at least ``minimum`` over all (test, train) pairs."""

    def check(ours: Tensor, theirs: Tensor) -> tuple[bool, str]:
        rho = spearman(ours, theirs)
        return rho >= minimum, f"{label} = {rho:.4f} (>= {minimum})"

    return check


def rows_ranked_alike(ours: Tensor, theirs: Tensor) -> tuple[bool, str]:
    """SimplEx's weights: a mean per-row Spearman correlation of at least :data:`SIMPLEX_MIN_SPEARMAN`."""
    rho = rowwise_spearman(ours, theirs)
    return rho >= SIMPLEX_MIN_SPEARMAN, (f"mean per-row Spearman = {rho:.4f} (>= {SIMPLEX_MIN_SPEARMAN}); "
                                         f"max |diff| {float((ours - theirs).abs().max()):.1e}")


def same_masks(ours: Tensor, theirs: Any) -> tuple[bool, str]:
    """lfxai's masks are 0 where a feature is masked."""
    same = bool(torch.equal(ours, theirs == 0))
    return same, "identical masks" if same else f"{int((ours != (theirs == 0)).sum())} pixels differ"


def same_rates(ours: list[tuple[float, float]], theirs: tuple[list[float], list[float]]) -> tuple[bool, str]:
    """lfxai returns the most- and least-similar rates as two lists."""
    error = max(abs(a - b) for pair_a, pair_b in zip(ours, zip(*theirs)) for a, b in zip(pair_a, pair_b))
    return error < 1e-6, "identical rates" if error < 1e-6 else f"max |diff| = {error:.2e}"


# ------------------------------------------------------------------------------------------ benchmark
def _compare(report: Report, w: Workload, key: str, name: str, ours: Callable[[], Any],
             theirs: Callable[[], Any] | None = None, check: Check | None = None) -> tuple[Row, Any]:
    """Time labelfree's ``ours`` and, when given, lfxai's ``theirs``; ``check`` their results. Appends the row;
    returns it with lfxai's result (None without lfxai)."""
    labelfree_s, result = median_time(ours, w.repeats, w.fast_repeats)
    row, other = Row(key, name, labelfree_s), None
    if theirs is not None:
        row.lfxai_s, other = median_time(theirs, w.lfxai_repeats, w.fast_repeats)
        row.passed, row.agreement = check(result, other)
    report.rows.append(row)
    return row, other


def run_workload(w: Workload, with_lfxai: bool) -> Report:
    """Time every piece on the workload ``w``; compare with lfxai when ``with_lfxai``."""
    report = Report()
    generator = torch.Generator().manual_seed(w.seed)
    model = make_model(w.seed)
    train_x = torch.rand(w.n_train, 1, 28, 28, generator=generator)
    test_x = torch.rand(w.n_test, 1, 28, 28, generator=generator)
    objective = Objective(model)
    loss = nn.MSELoss()
    if with_lfxai:
        from lfxai.explanations.examples import InfluenceFunctions as LfxaiInfluenceFunctions
        from lfxai.explanations.examples import NearestNeighbours as LfxaiNearestNeighbours
        from lfxai.explanations.examples import SimplEx as LfxaiSimplEx
        from lfxai.explanations.examples import TracIn as LfxaiTracIn
        from lfxai.utils.feature_attribution import generate_masks
        from lfxai.utils.metrics import similarity_rates
        from torch.utils.data import RandomSampler, TensorDataset

    def ours(name: str, **settings: Any) -> Callable[[], Tensor]:
        return lambda: build_example_explainer(name, model, **settings).fit(train_x).attribute(test_x)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        checkpoints = make_checkpoints(model, train_x, w.n_checkpoints, folder, w.seed)
        final_state = {k: v.clone() for k, v in model.state_dict().items()}
        adapter = LfxaiAdapter(model, [c.path for c in checkpoints]).eval()

        # ---- TracIn
        def lfxai_tracin() -> Tensor:
            with _quiet():
                out = LfxaiTracIn(adapter, loss, folder / "lfxai_tracin").attribute_loader(
                    torch.device("cpu"), _loader(train_x), _loader(test_x))
            model.load_state_dict(final_state)
            return out

        _compare(report, w, "tracin", "TracIn",
                 ours("tracin", checkpoints=checkpoints, objective=objective, **explainer_settings("tracin")),
                 lfxai_tracin if with_lfxai else None, close_scores(TRACIN_RTOL))

        # ---- Influence functions (LiSSA): the config's, at the workload's depth and batch
        if_settings = explainer_settings("influence_functions")
        lissa = dataclasses.replace(if_settings["solver"], depth=w.depth, batch_size=w.if_batch_size)

        def lfxai_influence() -> Tensor:
            sampler = RandomSampler(TensorDataset(train_x), replacement=True, num_samples=w.depth * w.if_batch_size)
            with _quiet():
                return LfxaiInfluenceFunctions(adapter, loss, folder / "lfxai_if").attribute_loader(
                    torch.device("cpu"), _loader(train_x), _loader(test_x),
                    _loader(train_x, batch_size=w.if_batch_size, sampler=sampler),
                    recursion_depth=lissa.depth, damp=lissa.damping, scale=lissa.scale)

        lissa_row, lfxai_lissa = _compare(
            report, w, "influence_functions", "Influence functions (LiSSA)",
            ours("influence_functions", seed=w.seed, objective=objective, **{**if_settings, "solver": lissa}),
            lfxai_influence if with_lfxai else None, ranked_alike(IF_MIN_SPEARMAN))

        # ---- Influence functions, Arnoldi: the expectation of the same depth-w.depth LiSSA estimate
        # (a different estimator, so no target; compared with lfxai's LiSSA scores like LiSSA itself).
        arnoldi = expected_lissa(lissa, cap=w.n_train)
        arnoldi_s, arnoldi_scores = median_time(
            ours("influence_functions", seed=w.seed, objective=objective, **{**if_settings, "solver": arnoldi}),
            w.repeats, w.fast_repeats)
        arnoldi_row = Row("influence_functions_arnoldi", "Influence functions (Arnoldi: E[LiSSA], informative)",
                          arnoldi_s, lfxai_s=lissa_row.lfxai_s)
        if with_lfxai:
            check = ranked_alike(IF_MIN_SPEARMAN, "Spearman with lfxai's LiSSA")
            arnoldi_row.passed, arnoldi_row.agreement = check(arnoldi_scores, lfxai_lissa)
        report.rows.append(arnoldi_row)

        # ---- SimplEx (the config's steps with lfxai's optimiser settings, see the module docstring) and DKNN
        simplex_settings = {**explainer_settings("simplex"), "lr": LFXAI_SIMPLEX_LR, "cosine_decay": False}
        _compare(report, w, "simplex", "SimplEx", ours("simplex", **simplex_settings),
                 _lfxai_batched(LfxaiSimplEx, adapter, loss, train_x, test_x) if with_lfxai else None, rows_ranked_alike)
        _compare(report, w, "dknn", "DKNN", ours("dknn", **explainer_settings("dknn")),
                 _lfxai_batched(LfxaiNearestNeighbours, adapter, loss, train_x, test_x) if with_lfxai else None,
                 close_scores(DKNN_RTOL))

    # ---- Masks
    attributions = torch.randn(w.mask_images, 1, 28, 28, generator=generator)
    fraction = w.mask_percent / 100
    mask_size = round(fraction * 28 * 28)
    _compare(report, w, "masks", f"Masks ({w.mask_images} images, top {w.mask_percent:g} %)",
             lambda: top_feature_mask(attributions, fraction),
             (lambda: generate_masks(attributions.numpy(), mask_size)) if with_lfxai else None, same_masks)

    # ---- Similarity rates
    n = w.similarity_size
    scores = torch.rand(n, n, generator=generator)
    train_labels = torch.randint(w.n_classes, (n,), generator=generator)
    test_labels = torch.randint(w.n_classes, (n,), generator=generator)
    counts = [percent_to_count(p, n) for p in SIMILARITY_PERCENTS]

    def ours_rates() -> list[tuple[float, float]]:
        most, least = similarity_rate_curves(scores, test_labels, train_labels, counts)  # one sort for every M
        return list(zip(most.mean(dim=1).tolist(), least.mean(dim=1).tolist()))

    _compare(report, w, "similarity_rates", f"Similarity rates ({n} x {n}, {len(counts)} values of M)", ours_rates,
             (lambda: similarity_rates(scores, train_labels, test_labels, counts)) if with_lfxai else None,
             same_rates)
    return report


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


def describe(w: Workload) -> str:
    """The workload and the machine, the lines above the table."""
    lissa = paper_lissa()
    return (f"Workload: n_train = n_test = {w.n_train}, {w.n_checkpoints} TracIn checkpoints, LiSSA depth {w.depth} "
            f"(batch {w.if_batch_size}, damping {lissa.damping:g}, scale {lissa.scale:g}), masks of "
            f"{w.mask_images} images at {w.mask_percent:g} %, similarity rates of a {w.similarity_size} x "
            f"{w.similarity_size} matrix; median of {w.repeats} (labelfree) and {w.lfxai_repeats} (lfxai) runs"
            + (f"; pieces under {FAST_PIECE_S:g} s: one warm-up call, then the median of {w.fast_repeats} "
               "(see `median_time`)" if w.fast_repeats > 0 else "") + ".\n"
            f"Machine: {machine()}\n")


def write_workload(w: Workload, out: Path | None = None) -> list[str]:
    """Run the workload ``w`` (against lfxai when it is installed), print its table and write it to ``out``;
    returns the names of the pieces whose agreement check failed."""
    with_lfxai = lfxai_available()
    if not with_lfxai:
        log.warning("lfxai is not installed (pip install -e '.[bench]'): timing labelfree only")
    report = run_workload(w, with_lfxai)
    header, table = describe(w), render(report, w)
    print(header)
    print(table)
    if out is not None:
        save_text(header + "\n" + table + "\n", out)
    failed = [r.name for r in report.rows if r.passed is False]
    if failed:
        log.error("agreement checks failed: %s", ", ".join(failed))
    return failed


BENCHMARKS_INTRO = """# Benchmarks: labelfree against the authors' lfxai

Written by `make bench` (`scripts/bench_explainers.py`; lfxai from the `bench` extra). Every number below
was measured by that command on the machine it names; rerun it to refresh the file.

## Same workload, both packages

{workload}
How each side is run, and why the checks are what they are: see the docstring of
`experiments/benchmark.py`. lfxai is timed through `attribute_loader`, the path its experiments use
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
`tests/library/test_examples.py` checks Arnoldi against LiSSA's expectation exactly (a model with a constant
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


PEERS_SECTION = """
## The data-attribution libraries, same label-free task

{peers}
What each package is given, the settings that make the estimators the same, and why each check is what it is:
see the docstring of `experiments/benchmark_peers.py`. Every package differentiates the per-example pretext
loss with respect to the encoder's parameters only (Captum `layers=`, dattri `layer_name=`). Peak RSS is that
of a fresh process running one piece (about 0.6 GiB of it is Python and torch). A row without a time says why
(not offered, opt-in, or its process died or ran past `peers.piece_timeout_s`); `docs/bench_peers.md` has the
history of these runs and what each found.
"""


RECURRENT_SECTION = """
## Recurrent models: the ECG5000 LSTM autoencoder's per-example gradients and Hessian-vector products

{recurrent}
How the paths work and what was tried: `experiments/benchmark_recurrent.py`, `labelfree/models/lstm_hessian.py` and
`docs/NOTEBOOK.md` ("Per-example gradients of the LSTM autoencoder by probes", "The ECG5000 example check at paper
scale").
"""


def assemble(workload: Path, paper: Path, out: Path, peers: Path | None = None,
             recurrent: Path | None = None) -> None:
    """``results/BENCHMARKS.md`` from the tables written by the workload, paper-scale and (optional) peer and
    recurrent runs."""
    text = BENCHMARKS_INTRO.format(workload=workload.read_text(), paper=paper.read_text())
    if peers is not None:
        peer_table = peers.read_text()
        if peer_table.startswith("**Partial"):
            raise ValueError(f"{peers} is the partial table of a peer run that stopped: finish it first "
                             "(scripts/bench_explainers.py --peers --out <it> --resume)")
        text += PEERS_SECTION.format(peers=peer_table)
    if recurrent is not None:
        text += RECURRENT_SECTION.format(recurrent=recurrent.read_text())
    save_text(text, out)
    log.info("wrote %s", out)
