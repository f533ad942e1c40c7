"""Row-wise numpy helpers shared by the metrics: thread-parallel blocks of rows, and whether a tensor can
take numpy's SIMD selection/sort."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

_POOL: ThreadPoolExecutor | None = None
_MIN_ROWS_PER_THREAD = 64  # below this, a thread costs more than it saves


def _by_rows(function: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
    """``function(*blocks)`` on blocks of rows of ``arrays`` (split alike) on ``torch.get_num_threads()`` threads.

    numpy's sort and selection release the GIL, so the blocks run in parallel; ``function`` must act on
    each row independently (the result equals ``function(*arrays)``).
    """
    global _POOL
    threads = min(torch.get_num_threads(), len(arrays[0]) // _MIN_ROWS_PER_THREAD)
    if threads <= 1:
        return function(*arrays)
    if _POOL is None or _POOL._max_workers < threads:  # noqa: SLF001
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="labelfree-metrics")
    blocks = [np.array_split(array, threads) for array in arrays]
    return np.concatenate(list(_POOL.map(function, *blocks)))


def _numpy_friendly(tensor: Tensor) -> bool:
    """Whether ``tensor`` can take numpy's SIMD selection/sort: on the CPU, a float or integer dtype numpy has."""
    return tensor.device.type == "cpu" and tensor.dtype in _NUMPY_DTYPES


_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int32, torch.int64})

