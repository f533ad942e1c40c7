"""Huge-page CPU tensors (labelfree/runtime.py): on by default, the environment decides, and run.py turns it on
early enough for torch to use it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labelfree.runtime import HUGE_PAGES_VARIABLE, use_huge_page_allocations

ROOT = Path(__file__).resolve().parents[2]
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
SMAPS = Path("/proc/self/smaps_rollup")


def _child(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def _environment(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != HUGE_PAGES_VARIABLE}, **extra}


def test_huge_pages_default_on_and_the_environment_decides():
    code = ("import os; from labelfree.runtime import use_huge_page_allocations as use; "
            "print(use(), os.environ['THP_MEM_ALLOC_ENABLE'])")
    assert _child(code, _environment()) == "True 1"
    assert _child(code, _environment(**{HUGE_PAGES_VARIABLE: "0"})) == "False 0"
    assert use_huge_page_allocations() == (os.environ[HUGE_PAGES_VARIABLE] == "1")


@pytest.mark.skipif(not THP.exists() or not SMAPS.exists() or "[never]" in THP.read_text(),
                    reason="no transparent huge pages on this machine")
def test_run_py_enables_them_before_torch_reads_the_switch():
    """After ``import run`` (which imports the studies, torch included), a large tensor is huge-page backed."""
    code = ("import re, sys; sys.argv = ['run.py']; import run, torch\n"
            "x = torch.ones(64 << 20)  # 256 MiB, touched\n"
            "print(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1))")
    on = int(_child(code, _environment()))
    off = int(_child(code, _environment(**{HUGE_PAGES_VARIABLE: "0"})))
    assert on >= 128 << 10 and on > off  # kB: at least half of the tensor
