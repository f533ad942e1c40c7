"""The paper-scale timings of the benchmark, labelfree alone (``scripts/bench_explainers.py --paper-scale``).

The paper's MNIST example check (1000 x 1000, TracIn over 10 checkpoints, depth-100 influence functions by
Arnoldi), LiSSA at depth 100 on a slice of the test set, and the peak memory of the loss-based explainers on
every applicable model of the paper. Each explainer runs in a fresh spawned process, so that its peak resident
memory is its own. The workload comparison with lfxai, and what the two share, is :mod:`experiments.benchmark`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from experiments.benchmark import (
    CONFIGS,
    MEMORY_MODELS,
    bench_config,
    expected_lissa,
    explainer_settings,
    machine,
    make_checkpoints_for,
    make_model,
    memory_options,
    paper_lissa,
    rowwise_spearman,
    run_in_process,
    spearman,
)
from labelfree.attribution.examples import build_example_explainer
from labelfree.io import save_text
from labelfree.runtime import peak_rss_gib
from labelfree.models.registry import MODEL_BUILDERS

log = logging.getLogger("bench")



def _build(model_key: str, seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """The model of :data:`~experiments.benchmark.MEMORY_MODELS` with random weights (eval mode) and its input
    shape."""
    file, overrides, shape, _ = MEMORY_MODELS[model_key]
    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{file}.yaml"), resolve=False)
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
    before = peak_rss_gib()
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
    queue.put({"seconds": seconds, "peak_rss_gib": peak_rss_gib(), "rss_before_gib": before,
               "scores": scores.numpy() if job.get("return_scores") else None})  # numpy: pickled by value


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run ``job`` in a fresh spawned process, so that its peak memory is its own."""
    done = run_in_process(_paper_worker, job)
    if done.result is None:
        raise RuntimeError(f"benchmark job {job['model']}/{job['explainer']} died (exit code {done.exitcode})")
    result = done.result
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
    rho = spearman(a, b)
    rows_rho = rowwise_spearman(a, b)
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


def write_paper_scale(threads: int, seed: int = 0, with_memory: bool = True, size: int | None = None,
                      out: Path | None = None) -> dict[str, Any]:
    """Run :func:`run_paper_scale`, print its text under a line naming the machine and write it to ``out``;
    returns its summary."""
    text, summary = run_paper_scale(threads, seed, with_memory=with_memory, size=size)
    header = f"Machine: {machine()}\n\n"
    print(header + text)
    if out is not None:
        save_text(header + text + "\n", out)
    log.info("paper scale: %s", summary)
    return summary
