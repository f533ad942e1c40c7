"""Finiteness guards: a number that is NaN or infinite by accident stops the run, named, before it is used or written.

:func:`check_finite` checks a tensor, an array, a number, a DataFrame (its numeric columns) or a mapping of
these, and returns its argument unchanged, so it can wrap a value where it is produced. A documented NaN (a
correlation of a constant explanation, the std of a pooled metric) is let through with ``allow_nan``;
infinite values never are.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["NonFiniteError", "check_finite", "nonfinite_entries"]

T = TypeVar("T")

#: How many offending positions / names a message lists.
_SHOWN = 5


class NonFiniteError(ValueError):
    """A tensor, array, number or table holds NaN or infinite values where finite numbers are required."""


def _describe(values: np.ndarray) -> str | None:
    """``None`` when every value is finite, else a short account of the NaN and infinite values of ``values``."""
    nan, inf = np.isnan(values), np.isinf(values)
    if not nan.any() and not inf.any():
        return None
    bad = np.flatnonzero((nan | inf).reshape(-1))
    where = [tuple(int(i) for i in np.unravel_index(k, values.shape)) for k in bad[:_SHOWN]]
    where_text = ", ".join(str(w[0]) if len(w) == 1 else str(w) for w in where)
    return (f"{int(nan.sum())} NaN and {int(inf.sum())} infinite of {values.size} values "
            f"(first at {where_text}{', ...' if len(bad) > _SHOWN else ''})")


def _as_array(values: Tensor | np.ndarray | float) -> np.ndarray | None:
    """A float NumPy view of ``values``; None for integer and boolean data (always finite)."""
    if isinstance(values, Tensor):
        if not (values.is_floating_point() or values.is_complex()):
            return None
        values = values.detach()
        if values.is_complex():
            values = torch.view_as_real(values)
        return values.to("cpu", torch.float64).numpy()
    array = np.asarray(values)
    if array.dtype.kind == "c":
        array = np.stack([array.real, array.imag], axis=-1)
    return array if array.dtype.kind == "f" else None


def _frame_problems(frame: pd.DataFrame, allow_nan: bool | Collection[str]) -> list[str]:
    problems = []
    for column in frame.columns:
        series = frame[column]
        if series.dtype.kind not in "fc":
            continue
        values = series.to_numpy(dtype=np.float64 if series.dtype.kind == "f" else np.complex128)
        if values.dtype.kind == "c":
            values = np.abs(values)
        nan_ok = allow_nan is True or (not isinstance(allow_nan, bool) and column in allow_nan)
        bad = np.isinf(values) | (np.zeros_like(values, dtype=bool) if nan_ok else np.isnan(values))
        if bad.any():
            rows = [frame.index[i] for i in np.flatnonzero(bad)[:_SHOWN]]
            kinds = [kind for kind, mask in (("NaN", np.isnan(values)), ("infinite", np.isinf(values)))
                     if (mask & bad).any()]
            problems.append(f"column {column!r}: {int(bad.sum())} {' / '.join(kinds)} value(s) "
                            f"(rows {rows}{', ...' if bad.sum() > _SHOWN else ''})")
    return problems


def check_finite(name: str, values: T, *, allow_nan: bool | Collection[str] = False) -> T:
    """Return ``values`` unchanged if it holds only finite numbers; else raise :class:`NonFiniteError` naming ``name``.

    Args:
        name: what is checked, as the message should name it (e.g. ``"attributions of saliency"``,
            ``"consistency_features.csv"``).
        values: a tensor, a NumPy array, a number, a DataFrame (every float column; integer, boolean and text
            columns are always fine) or a mapping of any of these (checked entry by entry, named ``name[key]``).
        allow_nan: ``True`` lets NaN through everywhere, a collection of column names lets it through in those
            columns of a DataFrame (a documented "not defined", e.g. the ``std`` of a pooled metric). Infinite
            values are always refused.

    Raises:
        NonFiniteError: NaN (where not allowed) or +-inf; the message names ``name``, counts them and gives
            the first positions (or DataFrame columns and rows).
    """
    if isinstance(values, Mapping):
        for key, value in values.items():
            check_finite(f"{name}[{key!r}]", value, allow_nan=allow_nan)
        return values
    if isinstance(values, pd.Series):
        check_finite(name, values.to_frame(name=values.name if values.name is not None else "value"), allow_nan=allow_nan)
        return values
    if isinstance(values, pd.DataFrame):
        problems = _frame_problems(values, allow_nan)
        if problems:
            raise NonFiniteError(f"{name} holds non-finite numbers: " + "; ".join(problems))
        return values
    if isinstance(values, Tensor) and values.is_floating_point():  # fast path on the tensor's device
        fine = ~torch.isinf(values) if allow_nan is True else torch.isfinite(values)
        if bool(fine.all()):
            return values
    array = _as_array(values)  # type: ignore[arg-type]
    if array is None:
        return values
    if allow_nan is True:
        array = np.where(np.isnan(array), 0.0, array)
    problem = _describe(array)
    if problem is not None:
        raise NonFiniteError(f"{name} holds non-finite numbers: {problem}")
    return values


def nonfinite_entries(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` (e.g. a ``state_dict``) that hold a NaN or an inf.

    One device synchronisation per device when every tensor is finite (the usual case).
    """
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and v.numel()}
    by_device: dict[torch.device, list[str]] = {}
    for key, tensor in tensors.items():
        by_device.setdefault(tensor.device, []).append(key)
    bad: set[str] = set()
    for keys in by_device.values():
        flags = torch.stack([torch.isfinite(tensors[k]).all() for k in keys])
        if not bool(flags.all()):
            bad.update(k for k, ok in zip(keys, flags.tolist()) if not ok)
    return [k for k in tensors if k in bad]
