"""The Makefile: every target is described (``make help`` lists it) and the paper defaults are the paper's seeds."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests import ROOT

MAKEFILE = (ROOT / "Makefile").read_text()
TARGETS = re.findall(r"^([a-z][a-zA-Z_-]*):(?!=)(.*)$", MAKEFILE, flags=re.MULTILINE)


def test_every_target_has_a_description_for_make_help():
    undescribed = [name for name, rest in TARGETS if "## " not in rest]
    assert TARGETS and not undescribed, f"targets without '## description': {undescribed}"


def _make_value(variable: str, scale: str) -> str:
    out = subprocess.run(["make", "-s", "-n", "-p", f"SCALE={scale}", "help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    values = dict(re.findall(r"^(\w+) :?= (.*)$", out, flags=re.MULTILINE))
    value = values[variable]
    while "$(" in value:  # expand one level of $(NAME_$(SCALE)) references
        value = re.sub(r"\$\((\w+)_\$\(SCALE\)\)", lambda m: values[f"{m.group(1)}_{scale}"], value)
        value = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), scale), value)
    return value


@pytest.mark.parametrize(("variable", "seeds"), [("MNIST_SEEDS", "1,2,3"), ("ECG_SEEDS", "42"), ("ROAR_SEEDS", "1"),
                                                 ("PRETEXT_SEEDS", "1,2,3,4,5"), ("DISVAE_SEEDS", "1,2,3,4,5"),
                                                 ("CORA_SEEDS", "1,2,3")])
def test_paper_scale_seeds(variable, seeds):
    assert _make_value(variable, "paper") == seeds


def test_the_reports_planned_seeds_are_the_makefiles_defaults():
    from experiments.report import report_rules

    for scale, plans in report_rules()["planned_seeds"].items():
        for claim, plan in plans.items():
            assert _make_value(plan["make"], scale) == ",".join(map(str, plan["seeds"])), (scale, claim)


def test_the_gpu_check_refuses_to_run_without_cuda():
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the check would run")
    done = subprocess.run([sys.executable, "-m", "experiments.devices", "--out", "/dev/null"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "no CUDA device" in done.stderr


def test_one_run_of_one_experiment_with_extra_overrides():
    arnoldi = "protocol.examples.explainers=[influence_functions_arnoldi,tracin,simplex,dknn]"
    out = subprocess.run(["make", "-s", "-n", "SCALE=paper", "consistency-examples",
                          "CONSISTENCY=ecg5000_consistency:42", f"OVERRIDES={arnoldi}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    runs = [line for line in out.splitlines() if "run.py" in line]
    assert len(runs) == 1 and "experiment=ecg5000_consistency" in runs[0] and "seed=42" in runs[0]
    assert f" {arnoldi} " in f"{runs[0]} "
    out = subprocess.run(["make", "-s", "-n", "SCALE=paper", "disvae", "DISVAE_EXPERIMENTS=mnist_disvae",
                          "DISVAE_MODELS=tc_vae", "DISVAE_BETAS=5", "DISVAE_SEEDS=2"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    runs = [line for line in out.splitlines() if "run.py" in line]
    assert len(runs) == 1 and "model=tc_vae model.beta=5" in runs[0] and "seed=2" in runs[0]


def test_the_paper_queue_lists_the_cpu_runs_and_keeps_each():
    out = subprocess.run(["bash", "scripts/paper_queue.sh"], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "MAKE_CMD": "echo make", "HOME": str(ROOT)}).stdout
    started = [line.split("start: ", 1)[1] for line in out.splitlines() if "start: " in line]
    assert len(started) == 6 + 2 + 5 + 1 + 30  # MNIST 3 seeds x 2 checks, ECG 2, pretext 5, ROAR 1, MNIST VAEs 30
    assert not any("cifar10" in s or "dsprites" in s for s in started)
    assert out.count("make keep SCALE=paper") == len(started)


def test_paper_queue_lanes_split_the_matching_units_and_bad_lanes_are_refused():
    def started(lane: str) -> list[str]:
        out = subprocess.run(["bash", "scripts/paper_queue.sh"], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={"PATH": "/usr/bin:/bin", "MAKE_CMD": "echo make", "HOME": str(ROOT),
                                  "ONLY": "mnist_pretext|mnist_roar", "LANE": lane}).stdout
        return [line.split("start: ", 1)[1] for line in out.splitlines() if "start: " in line]

    every = started("0/1")
    lanes = [started("0/2"), started("1/2")]
    assert len(every) == 6 and sorted(lanes[0] + lanes[1]) == sorted(every)
    assert lanes[0] == every[0::2] and lanes[1] == every[1::2]
    for bad in ("2/2", "1", "0/0", "a/b"):
        refused = subprocess.run(["bash", "scripts/paper_queue.sh"], cwd=ROOT, capture_output=True, text=True,
                                 env={"PATH": "/usr/bin:/bin", "MAKE_CMD": "echo make", "LANE": bad})
        assert refused.returncode == 2 and "LANE must be k/N" in refused.stderr
