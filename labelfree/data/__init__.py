"""Data sets (offline-first loaders) and seeded index subsets."""

from labelfree.data.ag_news import load_ag_news
from labelfree.data.cora import CoraGraph, load_cora
from labelfree.data.errors import DataNotFoundError
from labelfree.data.mnist import load_mnist
from labelfree.data.subsets import balanced_subset, train_val_split

__all__ = [
    "CoraGraph",
    "DataNotFoundError",
    "balanced_subset",
    "load_ag_news",
    "load_cora",
    "load_mnist",
    "train_val_split",
]
