"""The paper's ECG5000 LSTM autoencoder: per-example gradients by one batched backward ("probes") against ``vmap``,
and Hessian-vector products written out (:mod:`labelfree.models.lstm_hessian`) against autograd's.

The command is ``scripts/bench_explainers.py --recurrent`` (``make bench``). Workload (``recurrent:`` in
``configs/bench/default.yaml``): the paper's LSTM autoencoder (hidden sizes 128 and 64) with fixed random weights,
``n`` random ECG-shaped beats ``[n, 140, 1]``, the gradients of the per-example pretext loss with respect to the
encoder's 116,736 parameters (the explainers' default ``wrt``), and TracIn with one checkpoint on ``n`` x ``n``
beats. Each path runs at its best chunk size (``vmap``: 32, the LSTM experiment's configured size; probes: 128,
docs/NOTEBOOK.md). The variants run in turn for ``repeats`` rounds, so that a background load affects them alike;
the table gives the median wall times.

Agreement: every path against a per-example loop of plain autograd on ``check_examples`` beats (one backward per
beat, no batching at all), max over beats of ``|g - g_loop| / |g_loop|``, at most :data:`GRAD_RTOL` (float32
rounding through 140 recurrent steps).

Hessian-vector products: the Hessian of the mean loss of the ``n`` beats in the encoder's parameters, built once
and applied to one vector (what each Arnoldi step does); autograd's
reverse-over-reverse product (``written=False``, the explainer's configured ``vector_chunk_size``) against the
written-out one, each in pieces of its best size (``hvp_autograd_chunk``, ``hvp_chunk``). Agreement: relative difference of the two products (float32 rounding, at most :data:`HVP_RTOL`).
The section projects the paper's Arnoldi (:func:`paper_arnoldi_workload`) from the
written-out rows: build and product are linear in the beats.

Target (issue 18): probes at least 10x faster than ``vmap``. Where it is not met, the section says so and gives a
profile of the probes path (``torch.profiler``: the operators with the most self CPU time), which is where the
time goes.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from experiments.benchmark import CONFIGS, bench_section, explainer_settings, machine
from labelfree.attribution.examples import Objective, TracIn
from labelfree.io import save_text
from labelfree.models.lstm import LSTMAutoEncoder

log = logging.getLogger("bench")

#: float32 gradients through 140 recurrent steps, batched against one example at a time (measured: 2e-5)
GRAD_RTOL = 1e-4
#: float32 Hessian-vector products through 140 recurrent steps, written out against autograd (measured: 1.6e-7)
HVP_RTOL = 1e-4
SPEED_TARGET = 10.0
PROFILE_ROWS = 10


@dataclasses.dataclass(frozen=True)
class RecurrentWorkload:
    """The ``recurrent`` section of ``configs/bench/default.yaml`` (``tiny``: with ``recurrent_tiny``'s values)."""

    n: int
    sequence_length: int
    vmap_chunk: int
    probe_chunk: int
    check_examples: int
    repeats: int
    seed: int
    hvp_n: int
    hvp_chunk: int
    hvp_autograd_chunk: int
    hvp_vector_chunk: int

    @classmethod
    def from_config(cls, tiny: bool = False, **overrides: Any) -> RecurrentWorkload:
        return cls(**bench_section("recurrent", tiny, **overrides))


def paper_arnoldi_workload() -> tuple[int, int]:
    """The paper-scale ECG5000 example check's Arnoldi: its steps (``configs/explainer/
    influence_functions_arnoldi.yaml``) and its training beats (``configs/experiment/ecg5000_consistency.yaml``:
    ``train_per_class`` for each of the two labels)."""
    experiment = OmegaConf.load(CONFIGS / "experiment" / "ecg5000_consistency.yaml")
    per_class = int(OmegaConf.select(experiment, "protocol.examples.train_per_class"))
    return explainer_settings("influence_functions_arnoldi")["solver"].iterations, 2 * per_class


def loop_grads(objective: Objective, x: Tensor) -> Tensor:
    """``[n, P]``: one plain autograd backward per example (the ground truth of the batched paths)."""
    params = list(objective._named_parameters().values())
    rows = []
    for example in x:
        loss = objective.model.pretext_loss(example[None], None, perturb=False)
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.sum(), params)]))
    return torch.stack(rows)


def _relative_error(ours: Tensor, reference: Tensor) -> float:
    return float(((ours - reference).norm(dim=1) / reference.norm(dim=1)).max())


@dataclasses.dataclass
class RecurrentResult:
    piece: str
    path: str
    chunk: int
    seconds: float
    error: float | None = None


def run_recurrent(w: RecurrentWorkload) -> tuple[list[RecurrentResult], str]:
    """The timed rows and the profile of the probes path (a table in Markdown)."""
    torch.manual_seed(w.seed)
    model = LSTMAutoEncoder(sequence_length=w.sequence_length).eval()  # the paper's sizes; eval: deterministic
    x = torch.randn(w.n, w.sequence_length, 1)
    test = torch.randn(w.n, w.sequence_length, 1)
    variants = [("vmap", w.vmap_chunk), ("probes", w.probe_chunk)]
    reference = loop_grads(Objective(model), x[: w.check_examples])
    pieces: dict[str, Callable[[str, int], Tensor]] = {
        "per-example gradients": lambda method, chunk: Objective(model, per_example=method).per_example_grads(
            x, chunk_size=chunk),
        "TracIn, 1 checkpoint": lambda method, chunk: TracIn(
            Objective(model, per_example=method), [model.state_dict()], chunk_size=chunk).fit(x).attribute(test),
    }
    results: list[RecurrentResult] = []
    for piece, fn in pieces.items():
        times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        errors: dict[tuple[str, int], float] = {}
        for _ in range(w.repeats):
            for method, chunk in variants:
                start = time.perf_counter()
                out = fn(method, chunk)
                times[(method, chunk)].append(time.perf_counter() - start)
                if piece == "per-example gradients":
                    errors[(method, chunk)] = _relative_error(out[: w.check_examples], reference)
        for (method, chunk), values in times.items():
            results.append(RecurrentResult(piece, method, chunk, statistics.median(values), errors.get((method, chunk))))
            log.info("%s %s chunk %d: %.2f s", piece, method, chunk, results[-1].seconds)
    results += _hessian_rows(model, w)
    return results, _profile(model, x, w.probe_chunk)


def _hessian_rows(model: LSTMAutoEncoder, w: RecurrentWorkload) -> list[RecurrentResult]:
    """Build and one product of the Hessian of ``w.hvp_n`` beats, autograd's and written out, in turn."""
    x = torch.randn(w.hvp_n, w.sequence_length, 1)
    objective = Objective(model)
    vector = torch.randn(objective.n_params, 1, generator=torch.Generator().manual_seed(w.seed))
    chunks = {False: w.hvp_autograd_chunk, True: w.hvp_chunk}
    objective.hessian(x[:2], written=True)  # the one-off check against autograd, outside the timings
    times: dict[tuple[str, bool], list[float]] = {(part, written): [] for part in ("build", "product")
                                                  for written in (False, True)}
    products: dict[bool, Tensor] = {}
    for _ in range(w.repeats):
        for written in (False, True):
            start = time.perf_counter()
            operator = objective.hessian(x, written=written, split=False, example_chunk_size=chunks[written],
                                         vector_chunk_size=w.hvp_vector_chunk)
            built = time.perf_counter()
            products[written] = operator.matmul(vector)
            times[("build", written)].append(built - start)
            times[("product", written)].append(time.perf_counter() - built)
    error = float((products[True] - products[False]).norm() / products[False].norm())
    rows = []
    for (part, written), values in times.items():
        path = "written out" if written else "autograd"
        rows.append(RecurrentResult(f"Hessian, {w.hvp_n} beats: {part}", path, chunks[written],
                                    statistics.median(values), error if part == "product" and written else None))
        log.info("%s %s: %.2f s", rows[-1].piece, path, rows[-1].seconds)
    return rows


def _profile(model: torch.nn.Module, x: Tensor, chunk: int) -> str:
    """The operators of the probes path with the most self CPU time (one call, after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    objective = Objective(model, per_example="probes")
    objective.per_example_grads(x[:chunk], chunk_size=chunk)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        objective.per_example_grads(x, chunk_size=chunk)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = ["| operator | calls | self CPU (s) | share |", "|---|---|---|---|"]
    for event in events[:PROFILE_ROWS]:
        lines.append(f"| `{event.key}` | {event.count} | {event.self_cpu_time_total / 1e6:.3f} | "
                     f"{event.self_cpu_time_total / total:.0%} |")
    lines.append(f"| (all operators) | | {total / 1e6:.3f} | 100% |")
    return "\n".join(lines)


def render_recurrent(results: list[RecurrentResult], profile_table: str, w: RecurrentWorkload) -> tuple[str, bool]:
    """The Markdown section and whether every agreement check passed."""
    lines = [
        f"Workload: the paper's LSTM autoencoder (128/64, fixed random weights), {w.n} random beats of "
        f"{w.sequence_length} steps, the encoder's gradients (P = {Objective(LSTMAutoEncoder()).n_params:,}); "
        f"median of {w.repeats} rounds, variants in turn. Agreement: max over the first {w.check_examples} beats of "
        f"the relative difference to a per-example autograd loop (<= {GRAD_RTOL:g}).",
        f"Machine: {machine()}",
        "",
        "| piece | path (chunk) | seconds | speed-up | agreement |",
        "|---|---|---|---|---|",
    ]
    passed = True
    base = {r.piece: r.seconds for r in results if r.path in ("vmap", "autograd")}
    ratios = {}
    for r in results:
        ratio = base[r.piece] / r.seconds
        if r.path in ("probes", "written out"):
            ratios[r.piece] = ratio
        check = "-"
        if r.error is not None:
            hessian = r.path == "written out"
            ok = r.error <= (HVP_RTOL if hessian else GRAD_RTOL)
            passed &= ok
            reference = "autograd's product" if hessian else "a per-example loop"
            check = f"{r.error:.1e} against {reference} - {'pass' if ok else 'FAIL'}"
        # building is what the written-out product pays once per batch (autograd's has nothing to build)
        speed = "-" if r.piece.endswith(": build") else f"{ratio:.1f}x"
        lines.append(f"| {r.piece} | {r.path} ({r.chunk}) | {r.seconds:.3g} | {speed} | {check} |")
    gradient_ratio = ratios["per-example gradients"]
    verdict = "met" if gradient_ratio >= SPEED_TARGET else "not met"
    seconds = {(r.piece.split(": ")[-1], r.path): r.seconds for r in results if r.piece.startswith("Hessian")}
    steps, beats = paper_arnoldi_workload()
    scale = beats / w.hvp_n
    projected = {path: scale * (seconds[("build", path)] + steps * seconds[("product", path)])
                 for path in ("autograd", "written out")}
    lines += ["", f"Target: probes >= {SPEED_TARGET:g}x faster than vmap for the per-example gradients: "
              f"{gradient_ratio:.1f}x, {verdict}.", "",
              f"Arnoldi at the paper's scale ({steps} products over {beats} beats), projected from the "
              f"Hessian rows (build and product are linear in the beats): written out {projected['written out'] / 60:.1f} "
              f"min, autograd {projected['autograd'] / 60:.1f} min.", "",
              f"Profile of the probes path ({w.n} beats, chunk {w.probe_chunk}; `torch.profiler`, self CPU time, "
              f"the {PROFILE_ROWS} largest operators):", "", profile_table]
    return "\n".join(lines), passed


def write_recurrent(w: RecurrentWorkload, threads: int, out: Path | None = None) -> bool:
    """Run, print and write (to ``out``) the section; whether every agreement check passed."""
    torch.set_num_threads(threads)
    results, profile_table = run_recurrent(w)
    text, passed = render_recurrent(results, profile_table, w)
    print(text)
    if out is not None:
        save_text(text + "\n", out)
    return passed
