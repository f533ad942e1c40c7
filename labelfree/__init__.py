"""labelfree: label-free explainability for unsupervised models (Crabbe & van der Schaar, ICML 2022)."""

__version__ = "0.1.0"
