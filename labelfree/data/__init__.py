"""Data sets (offline-first loaders) and seeded index subsets."""

from labelfree.data.errors import DataNotFoundError
from labelfree.data.mnist import load_mnist
from labelfree.data.subsets import balanced_subset, train_val_split

__all__ = ["DataNotFoundError", "balanced_subset", "load_mnist", "train_val_split"]
