"""The top floor of `labelfree`: the studies of the paper and the glue that runs them from Hydra configs.

Not installed with the library: it is this repository's reproduction harness, used from the repository
root (``python run.py ...``, ``python -m experiments.aggregate``, ``python -m experiments.report``).
"""
