# Rebuild the paper's experiments. Point LABELFREE_DATA_DIR at the data (e.g. ../shared/data).
# Every experiment runs as a Hydra multirun over seeds into a fixed sweep folder under $(RUNS);
# a target run again skips finished runs (skip_finished=true) and reuses cached models, so a killed
# `make quick` resumes where it stopped.
PYTHON ?= python
SCALE ?= quick
RUNS ?= outputs
RESULTS ?= results
# the paper-scale seeds: MNIST consistency 1, 2, 3; ECG5000 and CIFAR-10 42; ROAR 1 (quick and smoke: one seed)
MNIST_SEEDS_paper ?= 1,2,3
MNIST_SEEDS_quick ?= 1
MNIST_SEEDS_smoke ?= 1
MNIST_SEEDS ?= $(MNIST_SEEDS_$(SCALE))
ECG_SEEDS ?= 42
CIFAR_SEEDS ?= 42
ROAR_SEEDS ?= 1
CONSISTENCY := mnist_consistency:$(MNIST_SEEDS) ecg5000_consistency:$(ECG_SEEDS) cifar10_consistency:$(CIFAR_SEEDS)

# every registered study's aggregation (experiments/studies), or one: $(AGGREGATE) --study NAME
# the runs read: this machine's (RUNS) and those kept in the repository (KEPT_RUNS, `make keep`)
KEPT_RUNS ?= $(RESULTS)/runs
AGGREGATE = $(PYTHON) -m experiments.aggregate --runs $(RUNS) $(KEPT_RUNS) --results $(RESULTS) --scale $(SCALE)

# $(call sweep,experiment,seeds,subfolder,extra overrides); OVERRIDES (command line) reach every sweep, e.g.
# make consistency-examples SCALE=paper CONSISTENCY=ecg5000_consistency:42 OVERRIDES='protocol.examples.explainers=[influence_functions_arnoldi,tracin,simplex,dknn]'
OVERRIDES ?=
sweep = $(PYTHON) run.py -m experiment=$(1) scale=$(SCALE) seed=$(2) skip_finished=true \
	hydra.sweep.dir=$(RUNS)/$(1)/$(SCALE)/$(3) 'hydra.sweep.subdir="seed=$${seed}"' $(4) $(OVERRIDES)

.PHONY: help install test test-all keep quick paper figures report consistency-features consistency-examples examples-full roar bench

help:  ## this list (every target with its one-line description)
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F '\t' '{printf "make %-24s %s\n", $$1, $$2}'
	@echo "Variables: SCALE=$(SCALE) RUNS=$(RUNS) RESULTS=$(RESULTS); seeds MNIST_SEEDS=$(MNIST_SEEDS) ECG_SEEDS=$(ECG_SEEDS) CIFAR_SEEDS=$(CIFAR_SEEDS) ROAR_SEEDS=$(ROAR_SEEDS) (comma lists)"

install:  ## pip install -e '.[dev]'
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the fast tests: library and studies (no end-to-end runs; about a minute)
	$(PYTHON) -m pytest -q tests/library tests/studies tests/test_architecture.py

test-all:  ## every test, end-to-end smoke runs included (what CI runs; a few minutes)
	$(PYTHON) -m pytest -q

consistency-features:  ## feature consistency on MNIST, ECG5000, CIFAR-10 (SCALE)
	$(foreach pair,$(CONSISTENCY),$(call sweep,$(word 1,$(subst :, ,$(pair))),$(word 2,$(subst :, ,$(pair))),features,protocol.examples.enabled=false) &&) true
	$(AGGREGATE) --study consistency

consistency-examples:  ## example consistency on MNIST, ECG5000, CIFAR-10 (SCALE)
	$(foreach pair,$(CONSISTENCY),$(call sweep,$(word 1,$(subst :, ,$(pair))),$(word 2,$(subst :, ,$(pair))),examples,protocol.features.enabled=false) &&) true
	$(AGGREGATE) --study consistency

# The MNIST example check with every image of the training split competing (issue 18; docs/full_training_set.md):
# mnist_consistency's model (cached once for both) and 1000 test images, 54,000 candidates instead of 1000.
EXAMPLES_FULL_SEEDS ?= 1
examples-full:  ## MNIST example consistency over the whole training split (EXAMPLES_FULL_SEEDS)
	$(call sweep,mnist_examples_full,$(EXAMPLES_FULL_SEEDS),sweep)
	$(AGGREGATE) --study consistency

roar:  ## ROAR on MNIST (SCALE)
	$(call sweep,mnist_roar,$(ROAR_SEEDS),sweep)
	$(AGGREGATE) --study roar

keep:  ## copy every finished run's small outputs (tables, config, summary, figures; no weights) from RUNS to KEPT_RUNS
	$(PYTHON) -m experiments.keep --runs $(RUNS) --to $(KEPT_RUNS)

figures:  ## every study's aggregation of the runs under RUNS into RESULTS (SCALE)
	$(AGGREGATE)

report:  ## the claim report of SCALE (RESULTS/REPORT-<scale>.md), its wall times (RESULTS/TIMES-<scale>.md; SYNC_README=README.md copies them there)
	$(PYTHON) -m experiments.report --results $(RESULTS) --scale $(SCALE)
	$(PYTHON) -m experiments.timings --runs $(RUNS) $(KEPT_RUNS) --scale $(SCALE) --out $(RESULTS)/TIMES-$(SCALE).md \
		$(if $(SYNC_README),--readme $(SYNC_README))

# Every experiment, then every figure, table and the claim report. Restartable: finished runs are
# skipped and trained models come from the cache.
quick:  ## every experiment at quick scale on a CPU, then every figure, table and the report
	$(MAKE) consistency-features consistency-examples roar pretext disvae SCALE=quick
	$(MAKE) figures report SCALE=quick

paper:  ## every experiment at paper scale (a GPU is recommended; see README), then figures and report
	$(MAKE) consistency-features consistency-examples roar pretext disvae SCALE=paper
	$(MAKE) figures report SCALE=paper

# Pretext-task sensitivity on MNIST (Crabbé & van der Schaar, 2022, "Pretext"): the four models per seed, then the
# mean +/- std correlation tables and heatmaps under $(RESULTS)/mnist_pretext/$(SCALE).
# pretext-smoke: the same at smoke scale (seconds), its tables under $(RUNS)/results instead of results/.
PRETEXT_SEEDS ?= 1,2,3,4,5
.PHONY: pretext pretext-smoke

pretext:  ## pretext-task sensitivity on MNIST (PRETEXT_SEEDS)
	$(call sweep,mnist_pretext,$(PRETEXT_SEEDS),sweep)
	$(AGGREGATE) --study pretext

pretext-smoke:  ## the same at smoke scale, tables under RUNS/results
	$(MAKE) pretext SCALE=smoke RESULTS=$(RUNS)/results

# Disentangled VAEs on MNIST (32x32) and dSprites (Crabbé & van der Schaar, 2022, "VAEs"): beta-VAE and beta-TCVAE for
# every beta and seed, then box plots of each metric against beta and the mean +/- std tables under
# $(RESULTS)/disvae/$(SCALE). Runs go to $(RUNS)/<experiment>/$(SCALE)/sweep/<loss>/beta=<b>/seed=<s>.
# Seeds: 5 at paper scale (the paper: at least 5 runs per (loss, beta)); 3 at quick scale (the 2-core CPU budget,
# configs/preset/*_disvae/quick.yaml). disvae-smoke: the same at smoke scale, tables under $(RUNS)/results.
DISVAE_MODELS ?= beta_vae,tc_vae
DISVAE_BETAS ?= 1,5,10
DISVAE_SEEDS_paper ?= 1,2,3,4,5
DISVAE_SEEDS_quick ?= 1,2,3
DISVAE_SEEDS_smoke ?= 1,2
DISVAE_SEEDS ?= $(DISVAE_SEEDS_$(SCALE))
DISVAE_EXPERIMENTS ?= mnist_disvae dsprites_disvae
.PHONY: disvae disvae-smoke

# $(call disvae_sweep,experiment)
disvae_sweep = $(PYTHON) run.py -m experiment=$(1) model=$(DISVAE_MODELS) model.beta=$(DISVAE_BETAS) scale=$(SCALE) \
	seed=$(DISVAE_SEEDS) skip_finished=true hydra.sweep.dir=$(RUNS)/$(1)/$(SCALE)/sweep \
	'hydra.sweep.subdir="$${model.pretext}/beta=$${model.beta}/seed=$${seed}"' $(OVERRIDES)

disvae:  ## disentangled VAEs on MNIST and dSprites (DISVAE_MODELS x DISVAE_BETAS x DISVAE_SEEDS)
	$(foreach experiment,$(DISVAE_EXPERIMENTS),$(call disvae_sweep,$(experiment)) &&) true
	$(AGGREGATE) --study disvae

disvae-smoke:  ## the same at smoke scale, tables under RUNS/results
	$(MAKE) disvae SCALE=smoke RESULTS=$(RUNS)/results

# Explainers and metrics timed against the authors' lfxai on one workload (agreement checked), then the
# paper-scale MNIST example check and the peak memory per model, then labelfree against Captum and dattri on the
# same label-free task (experiments/benchmark_peers.py); the tables go to results/BENCHMARKS.md. Last, the paper-scale
# ECG5000 example check's attribution (10 min; results/ECG_CHECK.md).
# Needs the bench extra: pip install -e ".[bench]". About 1 h 45 min on a 2-core CPU (the peers about 70 min: dattri's
# LiSSA 15, its Arnoldi 30 until peers.piece_timeout_s stops it; its CG, opt-in, another 62), so run it on an idle
# machine. A stopped peer run continues with: scripts/bench_explainers.py --peers --out $(BENCH_DIR)/peers.md --resume
BENCH_DIR ?= $(RUNS)/bench
bench:  ## explainers and metrics against lfxai, the paper-scale timings, then Captum and dattri (the bench extra)
	mkdir -p $(BENCH_DIR)
	$(PYTHON) scripts/bench_explainers.py --out $(BENCH_DIR)/workload.md
	$(PYTHON) scripts/bench_explainers.py --paper-scale --out $(BENCH_DIR)/paper_scale.md
	$(PYTHON) scripts/bench_explainers.py --peers --out $(BENCH_DIR)/peers.md
	$(PYTHON) scripts/bench_explainers.py --recurrent --out $(BENCH_DIR)/recurrent.md
	$(PYTHON) scripts/bench_ecg_check.py --out $(RESULTS)/ECG_CHECK.md
	$(PYTHON) scripts/bench_explainers.py --assemble $(BENCH_DIR)/workload.md $(BENCH_DIR)/paper_scale.md \
		$(BENCH_DIR)/peers.md $(BENCH_DIR)/recurrent.md --out $(RESULTS)/BENCHMARKS.md

# VAEs trained with a penalty on their label-free attributions (issue 21, docs/disvae_prior.md): beta-VAE and
# beta-TCVAE x beta x lambda x seeds on MNIST 32x32, then the table, figure and claim rows under
# $(RESULTS)/disvae_prior/$(SCALE). Paper scale: about 5x a plain step per training step (a GPU job).
PRIOR_WEIGHTS ?= 0,0.001,0.005,0.01,0.1
PRIOR_SEEDS_paper ?= 1,2,3,4,5
PRIOR_SEEDS_quick ?= 1,2,3
PRIOR_SEEDS_smoke ?= 1
PRIOR_SEEDS ?= $(PRIOR_SEEDS_$(SCALE))
.PHONY: disvae-prior

disvae-prior:  ## VAEs trained with an attribution prior: losses x beta x lambda (PRIOR_WEIGHTS) x PRIOR_SEEDS
	$(PYTHON) run.py -m experiment=mnist_disvae_prior scale=$(SCALE) model=$(DISVAE_MODELS) model.beta=$(DISVAE_BETAS) \
		model.prior.weight=$(PRIOR_WEIGHTS) seed=$(PRIOR_SEEDS) skip_finished=true \
		hydra.sweep.dir=$(RUNS)/mnist_disvae_prior/$(SCALE)/sweep \
		'hydra.sweep.subdir="$${model.pretext}/beta=$${model.beta}/lambda=$${model.prior.weight}/seed=$${seed}"'
	$(AGGREGATE) --study disvae_prior

.PHONY: gpu-check
gpu-check:  ## on a CUDA machine: every experiment at smoke scale on the GPU and the paper-scale timings (results/DEVICES.md)
	bash scripts/gpu_check.sh

# Consistency of token and example importance on AG News (issue 20, docs/agnews.md): a GRU autoencoder of WordPiece
# token ids, tokens explained through its embeddings, examples scored by topic; tables and figures under
# $(RESULTS)/agnews_consistency/$(SCALE). Paper scale: 24-28 minutes per seed on a 2-core CPU (measured).
AGNEWS_SEEDS_paper ?= 1,2,3
AGNEWS_SEEDS_quick ?= 1
AGNEWS_SEEDS_smoke ?= 1
AGNEWS_SEEDS ?= $(AGNEWS_SEEDS_$(SCALE))
.PHONY: agnews

agnews:  ## consistency of token and example importance on AG News (AGNEWS_SEEDS)
	$(call sweep,agnews_consistency,$(AGNEWS_SEEDS),sweep)
	$(AGGREGATE) --study text

# Label-free explanations on a graph (issue 20, docs/cora.md): the VGAE on Cora, feature consistency over node
# features and edges, example consistency over nodes; tables, figures and claim rows under $(RESULTS)/cora_consistency.
CORA_SEEDS_paper ?= 1,2,3
CORA_SEEDS_quick ?= 1
CORA_SEEDS_smoke ?= 1
CORA_SEEDS ?= $(CORA_SEEDS_$(SCALE))
.PHONY: cora

cora:  ## the VGAE on Cora: feature (node features, edges) and example consistency (CORA_SEEDS)
	$(call sweep,cora_consistency,$(CORA_SEEDS),sweep)
	$(AGGREGATE) --study graph
