"""Process-wide CPU settings that change speed, never numbers.

:func:`use_huge_page_allocations` asks torch's CPU allocator to back every tensor of 2 MiB or more with
transparent huge pages (torch's ``THP_MEM_ALLOC_ENABLE``). glibc hands such tensors out as fresh ``mmap``
regions, so every large temporary is page-faulted and zeroed by the kernel 4 KiB at a time on first touch; with
huge pages that cost falls 512-fold. Measured on the 2-core CPU of this project (docs/NOTEBOOK.md): a
``[3200, 128] x [128, 10000]`` linear layer ran at 58 GFLOP/s without and 89 GFLOP/s with it, a
``[3200, 10000]`` log-softmax in 0.10 s without and 0.05 s with it, and an AG News GRU training step (10,000-way
output at every token) 1.05 s without and 0.79 s with it.

torch reads the variable once, at the process's first allocation of 2 MiB or more, and importing the studies
makes such allocations, so entry points (``run.py``, ``scripts/bench_explainers.py``) call this before anything
imports torch (this module does not); a value already in the environment is respected
(``THP_MEM_ALLOC_ENABLE=0`` turns it off).
"""

from __future__ import annotations

import os
import resource
import sys

__all__ = ["HUGE_PAGES_VARIABLE", "peak_rss_gib", "use_huge_page_allocations"]

#: torch's switch for transparent huge pages in its CPU allocator (c10/core/alloc_cpu.cpp).
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_page_allocations() -> bool:
    """Enable huge-page-backed CPU tensors for this process unless the environment decides; return whether on."""
    os.environ.setdefault(HUGE_PAGES_VARIABLE, "1")
    return os.environ[HUGE_PAGES_VARIABLE] == "1"


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far, in GiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20
