# Rebuild the paper's experiments. Point LABELFREE_DATA_DIR at the data (e.g. ../shared/data).
PYTHON ?= python
SEEDS ?= 1

.PHONY: help install test consistency consistency-quick consistency-smoke results

help:
	@echo "make install            pip install -e '.[dev]'"
	@echo "make test               the test suite (CPU, no network)"
	@echo "make consistency        MNIST consistency checks at paper scale (SEEDS=1,2,3 for a sweep)"
	@echo "make consistency-quick  the same at quick scale (minutes on a 2-core CPU)"
	@echo "make consistency-smoke  the same at smoke scale (seconds)"
	@echo "make results            rebuild the committed quick-scale results under results/"

install:
	$(PYTHON) -m pip install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q

consistency:
	$(PYTHON) run.py -m experiment=mnist_consistency scale=paper seed=$(SEEDS)

consistency-quick:
	$(PYTHON) run.py -m experiment=mnist_consistency scale=quick seed=$(SEEDS)

consistency-smoke:
	$(PYTHON) run.py -m experiment=mnist_consistency scale=smoke seed=$(SEEDS)

# The committed quick-scale results shown in the README (reuses the cached model when present).
results/mnist_consistency/quick/summary.json:
	$(PYTHON) run.py experiment=mnist_consistency scale=quick seed=1 hydra.run.dir=results/mnist_consistency/quick

.PHONY: results
results: results/mnist_consistency/quick/summary.json
