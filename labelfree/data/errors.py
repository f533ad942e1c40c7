"""Errors shared by the dataset loaders of :mod:`labelfree.data`."""

from __future__ import annotations

__all__ = ["DataNotFoundError", "DATA_FIX_HINT"]

#: How to point the project at its data; appended to every :class:`DataNotFoundError` message.
DATA_FIX_HINT = (
    "To fix: point the data directory at a folder that holds the files (set the environment "
    "variable LABELFREE_DATA_DIR=/path/to/data or pass the Hydra override paths.data_dir=/path/to/data), "
    "or allow downloading with dataset.download=true on a machine with network access."
)


class DataNotFoundError(FileNotFoundError):
    """A data set's files are absent from the data directory (and could not be downloaded).

    Subclasses :class:`FileNotFoundError`, so ``except FileNotFoundError`` also catches it.
    """
