"""The benchmark (experiments.benchmark): the memory bounds each model's experiment configures, the agreement
checks on hand-built results, and the tiny workload without lfxai (no lfxai needed; the comparison with lfxai
is tests/e2e/test_bench_script.py)."""

from __future__ import annotations

import pytest
import torch

from experiments import benchmark


def test_memory_options_follow_the_experiment_configs() -> None:
    lstm = benchmark.memory_options("ecg_lstm_ae", "influence_functions")
    assert lstm == {"chunk_size": 128, "vector_chunk_size": 4, "hvp_chunk_size": 100, "test_chunk_size": 256}
    assert benchmark.memory_options("ecg_lstm_ae", "tracin") == {"chunk_size": 128}
    mnist = benchmark.memory_options("mnist_ae", "influence_functions")
    assert mnist["chunk_size"] == 256 and mnist["hvp_chunk_size"] is None
    assert set(benchmark.MEMORY_MODELS) == {"mnist_ae", "ecg_lstm_ae", "dsprites_beta_vae"}


def test_agreement_checks_on_hand_built_results() -> None:
    scores = torch.arange(12.0).reshape(3, 4)
    assert benchmark.close_scores(1e-3)(scores, scores + 1e-3)[0]
    passed, text = benchmark.close_scores(1e-3)(scores, scores + 0.1)
    assert not passed and text == "max |diff| / max |score| = 9.0e-03 (<= 0.001)"
    assert benchmark.ranked_alike(0.95)(scores, scores**3) == (True, "Spearman over all pairs = 1.0000 (>= 0.95)")
    assert not benchmark.ranked_alike(0.95)(scores, -scores)[0]
    assert benchmark.rows_ranked_alike(scores, 2 * scores)[0] and not benchmark.rows_ranked_alike(scores, -scores)[0]
    mask = torch.tensor([[True, False], [False, True]])
    assert benchmark.same_masks(mask, (~mask).float()) == (True, "identical masks")  # lfxai: 0 where masked
    assert benchmark.same_masks(mask, mask.float()) == (False, "4 pixels differ")
    rates = [(0.5, 0.1), (0.7, 0.2)]
    assert benchmark.same_rates(rates, ([0.5, 0.7], [0.1, 0.2])) == (True, "identical rates")
    assert benchmark.same_rates(rates, ([0.5, 0.7], [0.1, 0.3]))[0] is False


def test_the_tiny_workload_times_every_piece_without_lfxai(tmp_path) -> None:  # noqa: ANN001
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workload = benchmark.Workload.from_config(tiny=True, repeats=1)
        report = benchmark.run_workload(workload, with_lfxai=False)
    finally:
        torch.set_num_threads(threads)
    assert [row.key for row in report.rows] == ["tracin", "influence_functions", "influence_functions_arnoldi",
                                                "simplex", "dknn", "masks", "similarity_rates"]
    assert all(row.labelfree_s > 0 and row.lfxai_s is None and row.passed is None for row in report.rows)
    table = benchmark.render(report, workload)
    assert table.count("\n") == 2 + len(report.rows) - 1 and "| DKNN |" in table
    (tmp_path / "workload.md").write_text(table + "\n")
    (tmp_path / "paper.md").write_text("| paper table |\n")
    benchmark.assemble(tmp_path / "workload.md", tmp_path / "paper.md", tmp_path / "BENCHMARKS.md")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert text.startswith("# Benchmarks") and table in text and "| paper table |" in text


def test_the_tiny_recurrent_benchmark_checks_both_paths_against_a_loop(tmp_path) -> None:  # noqa: ANN001
    from experiments import benchmark_recurrent as recurrent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workload = recurrent.RecurrentWorkload.from_config(tiny=True)
        assert recurrent.write_recurrent(workload, 1, out=tmp_path / "recurrent.md")
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "recurrent.md").read_text()
    assert text.count(" - pass |") == 3 and "| TracIn, 1 checkpoint | probes (4) |" in text
    assert text.count("against a per-example loop - pass |") == 2 and text.count("against autograd's product - pass |") == 1
    assert "| Hessian, 4 beats: build | written out (2) |" in text
    assert "Target: probes >= 10x" in text and "| (all operators) |" in text and "projected from the" in text
    # the check can fail: a gradient of another model is far outside the tolerance
    model = recurrent.LSTMAutoEncoder(sequence_length=workload.sequence_length).eval()
    x = torch.randn(2, workload.sequence_length, 1)
    other = recurrent.LSTMAutoEncoder(sequence_length=workload.sequence_length).eval()
    error = recurrent._relative_error(recurrent.loop_grads(recurrent.Objective(other), x),
                                      recurrent.loop_grads(recurrent.Objective(model), x))
    assert error > recurrent.GRAD_RTOL
    (tmp_path / "workload.md").write_text("| workload table |\n")
    (tmp_path / "paper.md").write_text("| paper table |\n")
    (tmp_path / "peers.md").write_text("| peers table |\n")
    benchmark.assemble(tmp_path / "workload.md", tmp_path / "paper.md", tmp_path / "BENCHMARKS.md",
                       peers=tmp_path / "peers.md", recurrent=tmp_path / "recurrent.md")
    assembled = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Recurrent models" in assembled and "| peers table |" in assembled and text.strip() in assembled
    # a stopped peer run's partial table is refused
    (tmp_path / "peers.md").write_text("**Partial table: ...**\n\n| peers table |\n")
    with pytest.raises(ValueError, match="partial table"):
        benchmark.assemble(tmp_path / "workload.md", tmp_path / "paper.md", tmp_path / "BENCHMARKS.md",
                           peers=tmp_path / "peers.md")


def test_median_time_takes_one_run_of_a_slow_piece_and_the_median_otherwise() -> None:
    calls: list[int] = []

    def piece() -> int:
        calls.append(1)
        return len(calls)

    seconds, result = benchmark.median_time(piece, repeats=3, slow_piece_s=0.0)  # every piece counts as slow
    assert result == 1 and len(calls) == 1 and seconds >= 0.0
    calls.clear()
    _, result = benchmark.median_time(piece, repeats=3, slow_piece_s=60.0)
    assert result == 3 and len(calls) == 3
