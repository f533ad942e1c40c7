"""The peer comparison (experiments.benchmark_peers) on a tiny model: labelfree agrees with Captum and dattri where
the estimator is the same (needs the bench extra's dattri: skipped otherwise; Captum is a core dependency)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("dattri", reason="dattri (the bench extra) is not installed")

from experiments import benchmark_peers  # noqa: E402
from labelfree.attribution.examples import Objective  # noqa: E402


@pytest.fixture()
def one_thread() -> None:  # noqa: PT004
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(piece: str, package: str, workload: benchmark_peers.PeerWorkload) -> torch.Tensor:
    job = {"piece": piece, "package": package, "threads": 1, "workload": vars(workload)}
    return torch.from_numpy(benchmark_peers.run_piece(job)["scores"])


@pytest.mark.slow  # about 40 s on one idle core (dattri's and Captum's per-example paths); 265 s at load 9
def test_tracin_exact_and_arnoldi_influence_agree_with_the_peers(one_thread) -> None:  # noqa: ANN001
    workload = benchmark_peers.PeerWorkload.from_config(tiny=True, n_train=8, n_test=4)
    # TracIn: the same sum over checkpoints (learning rates 1 and 1/2) of gradient dot products
    ours = _run("tracin", "labelfree", workload)
    assert ours.shape == (4, 8) and ours.abs().max() > 0
    for peer in ("captum", "dattri"):
        passed, text = benchmark_peers.close_scores(benchmark_peers.TRACIN_RTOL)(ours, _run("tracin", peer, workload))
        assert passed, f"TracIn {peer}: {text}"
    # exact (H + lambda I)^-1 on the encoder's last layer; lambda comparable to H's eigenvalues
    workload = benchmark_peers.exact_series(workload)
    exact = _run("exact", "labelfree", workload)
    for peer in ("captum", "dattri"):
        passed, text = benchmark_peers.close_scores(benchmark_peers.EXACT_RTOL)(exact, _run("exact", peer, workload))
        assert passed, f"exact {peer}: {text}"
    # Arnoldi's truncated inverse on the same small model, Krylov space of every dimension: the same estimand
    arnoldi = _run("arnoldi_exact", "labelfree", workload)
    for peer in ("captum", "dattri"):
        passed, text = benchmark_peers.close_scores(benchmark_peers.EXACT_RTOL)(arnoldi,
                                                                               _run("arnoldi_exact", peer, workload))
        assert passed, f"Arnoldi {peer}: {text}"
    # and the truncation matters: the top-k inverse is not the full one
    assert not benchmark_peers.close_scores(benchmark_peers.EXACT_RTOL)(exact, arnoldi)[0]
    # the check can fail: ignoring the Hessian (scores g_t . g_i / lambda) is far outside its tolerance
    setup = benchmark_peers.make_setup(workload, "exact")
    objective = Objective(setup.model, wrt=setup.wrt)
    flat = objective.per_example_grads(setup.test_x) @ objective.per_example_grads(setup.train_x).T
    benchmark_peers._remove_checkpoints(setup)
    passed, text = benchmark_peers.close_scores(benchmark_peers.EXACT_RTOL)(exact, flat / workload.exact_lambda)
    assert not passed, f"the curvature does not change the scores on this workload ({text}): the check is vacuous"


def test_targets_compare_with_the_fastest_peer_that_agreed() -> None:
    label = benchmark_peers.PIECES["tracin"][1]
    rows = [benchmark_peers.PeerRow(label, "labelfree", 2.0, 1.0),
            benchmark_peers.PeerRow(label, "captum", 2.5, 0.9, passed=True),
            benchmark_peers.PeerRow(label, "dattri", 1.0, 2.0, passed=False)]  # faster, but disagreed: not a peer
    (line,) = [line for line in benchmark_peers.render_targets(rows) if line.startswith(f"- {label}:")]
    assert "fastest peer captum, 1.25x" in line and "speed NOT met" in line and "0.90 GiB: NOT met" in line
    rows[1] = benchmark_peers.PeerRow(label, "captum", 4.0, 1.5, passed=True)
    (line,) = [line for line in benchmark_peers.render_targets(rows) if line.startswith(f"- {label}:")]
    assert "2.00x slower than labelfree: speed met" in line and "1.50 GiB: met" in line
