"""The test suite, laid out like the project's floors.

* ``tests/library``: unit tests of the library ``labelfree`` (no ``experiments``, no ``scripts``);
* ``tests/studies``: tests of the top floor ``experiments`` (runner, studies, aggregation, report, benchmark);
* ``tests/e2e``: end-to-end runs through Hydra and the entry points (``run.py``, ``scripts/``);
* ``tests/fixtures``: writers of tiny data sets in the real on-disk formats;
* ``tests/reference``: the smoke-scale reference tables and the script that writes them.

A package, so that tests import their helpers by absolute name (``from tests.fixtures.mnist import
write_mnist_idx``); pytest puts the repository root on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""

from pathlib import Path

#: the repository root (configs/, run.py, scripts/)
ROOT = Path(__file__).resolve().parents[1]
